"""Signing of the alert webhooks: the ``TokenFence-Signature`` header and the delivery id.

``v1`` is the lowercase hex HMAC-SHA256, keyed with the shared secret, of ``f"{t}."`` (the Unix
time of the attempt in seconds, then a dot) followed by the raw request body; ``verify_signature``
checks one as a receiver should. Nothing here needs an extra: receivers import it without httpx.
The sender is ``tokenfence_asgi.ops.webhooks``, which re-exports these names.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Sequence

from tokenfence_asgi.errors import ConfigError
from tokenfence_asgi.results import Alert

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "delivery_id",
    "secret_bytes",
    "sign_payload",
    "verify_signature",
]

SIGNATURE_HEADER = "TokenFence-Signature"
DELIVERY_HEADER = "TokenFence-Delivery"
EVENT_HEADER = "TokenFence-Event"
_MIN_SECRET_BYTES = 16
_DELIVERY_LABEL = "tokenfence-asgi alert delivery v1"


def secret_bytes(secret: str | bytes, what: str = "secret") -> bytes:
    """A signing secret as bytes; ``ConfigError`` when it is shorter than 16 bytes."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, bytes) or len(secret) < _MIN_SECRET_BYTES:
        raise ConfigError(f"{what} must be at least {_MIN_SECRET_BYTES} bytes of str or bytes")
    return secret


def sign_payload(secret: str | bytes, body: bytes, timestamp: int) -> str:
    """The ``TokenFence-Signature`` value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    digest = hmac.new(secret_bytes(secret), b"%d." % timestamp + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify_signature(
    secret: str | bytes | Sequence[str | bytes],
    body: bytes,
    header: str | None,
    *,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """Whether ``header`` (the ``TokenFence-Signature`` value) signs ``body`` with ``secret``.

    ``body`` is the raw request body. ``secret`` may be a list (old and new while rotating).
    False for a missing or malformed header, a wrong signature, or a timestamp further than
    ``tolerance_s`` seconds from ``now`` (default: the wall clock). Comparisons are constant-time.
    """
    if not header or not isinstance(body, bytes):
        return False
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif key == "v1" and value:
            signatures.append(value.strip())
    if timestamp is None or not signatures:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    secrets = [secret] if isinstance(secret, str | bytes) else list(secret)
    message = b"%d." % timestamp + body
    matched = False
    for each in secrets:
        expected = hmac.new(secret_bytes(each), message, hashlib.sha256).hexdigest()
        for candidate in signatures:
            # no early exit: the time taken does not depend on which entry matched
            matched |= hmac.compare_digest(expected.encode(), candidate.encode("ascii", "replace"))
    return matched


def delivery_id(alert: Alert) -> str:
    """The ``TokenFence-Delivery`` id of ``alert``: 32 hex digits.

    With a ``reservation_id``, derived from the alert's identity (tenant, pool, reservation id,
    scope, window, metric, threshold), so every report of one alert, a ``repeated`` one from
    any instance included, has the same id; without one, random.
    """
    if alert.reservation_id is None:
        return uuid.uuid4().hex
    identity: list[object] = [_DELIVERY_LABEL, alert.tenant_id, alert.pool, alert.reservation_id]
    identity += [alert.scope, alert.window, alert.metric, alert.threshold]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]
