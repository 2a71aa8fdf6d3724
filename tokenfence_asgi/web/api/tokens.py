"""Reservation tokens: a reservation signed with HMAC-SHA256 into the opaque ``id`` of the API.

A token carries what ``/commit`` and ``/release`` need (tenant, reservation id, feature, pool,
model, amount, plan) and the time it was issued, so the API keeps no state of its own: any
instance with the same signing key settles any reservation. A token that is not the exact
unpadded base64 this module writes, under this key, is refused; so is one older than ``ttl``
seconds (the store no longer remembers how its reservation was settled).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time

from tokenfence_asgi.errors import ConfigError
from tokenfence_asgi.money import from_nanos
from tokenfence_asgi.results import Reservation
from tokenfence_asgi.store.keys import validate_id

__all__ = ["MAX_TOKEN_LENGTH", "ReservationTokens", "TokenRefused", "signing_key_bytes"]

MAX_TOKEN_LENGTH = 8192
_TOKEN_PREFIX = "tfr1"
_TOKEN_PART = re.compile(r"[A-Za-z0-9_-]+")
_MAC_LABEL = b"tokenfence-asgi reservation token v1"


def _wall() -> float:
    """Wall-clock seconds, when tokens are issued and checked (key expiry in Redis is real time)."""
    return time.time()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Decode what ``_b64`` encodes, and only that: a text with other (ignored) padding bits,
    or padding, would be a second spelling of the same bytes, so a token could be altered and
    still accepted. Raises ``ValueError``."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical unpadded urlsafe base64")
    return data


def signing_key_bytes(key: str | bytes, what: str) -> bytes:
    """``key`` as bytes; ``ConfigError`` naming ``what`` when it is shorter than 16 bytes."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    if not isinstance(raw, bytes) or len(raw) < 16:
        raise ConfigError(f"{what} must be at least 16 bytes")
    return raw


class TokenRefused(Exception):
    """A token that cannot be settled: ``status`` and ``error`` of the answer, and why."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


def _foreign() -> TokenRefused:
    return TokenRefused(
        422,
        "invalid_reservation",
        "not a reservation token issued by this service (malformed, altered, or signed "
        "with another key)",
    )


class ReservationTokens:
    """Signs reservations into opaque tokens and checks them back."""

    __slots__ = ("_key", "ttl")

    def __init__(self, signing_key: bytes, ttl: float) -> None:
        # A key of its own for this use, so a secret shared with another purpose cannot be
        # turned into valid reservation tokens.
        self._key = hmac.new(signing_key, _MAC_LABEL, hashlib.sha256).digest()
        self.ttl = ttl

    def _mac(self, signed: bytes) -> bytes:
        return hmac.new(self._key, signed, hashlib.sha256).digest()

    def issue(self, r: Reservation) -> str:
        """The token of ``r``, issued now."""
        payload = {
            "t": r.tenant_id,
            "r": r.id,
            "f": r.feature,
            "p": r.pool,
            "m": r.model,
            "a": r.amount_nanos,
            "pl": r.plan,
            "d": 1 if r.degraded else 0,
            "i": int(_wall()),
        }
        body = _b64(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
        signed = f"{_TOKEN_PREFIX}.{body}"
        return f"{signed}.{_b64(self._mac(signed.encode('ascii')))}"

    def open(self, token: str) -> Reservation:
        """The reservation ``token`` carries; ``TokenRefused`` (422 ``invalid_reservation``) for
        a token this key did not sign as it is, 410 ``reservation_expired`` after ``ttl``."""
        parts = token.split(".")
        if (
            len(token) > MAX_TOKEN_LENGTH
            or len(parts) != 3
            or parts[0] != _TOKEN_PREFIX
            or not all(_TOKEN_PART.fullmatch(p) for p in parts[1:])
        ):
            raise _foreign()
        try:
            mac = _unb64(parts[2])
            expected = self._mac(f"{parts[0]}.{parts[1]}".encode("ascii"))
            if not hmac.compare_digest(mac, expected):
                raise _foreign()
            data = json.loads(_unb64(parts[1]))
            reservation = Reservation(
                id=validate_id(data["r"], what="reservation_id"),
                tenant_id=validate_id(data["t"], what="tenant_id"),
                feature=None if data["f"] is None else validate_id(data["f"], what="feature"),
                model=None if data["m"] is None else str(data["m"]),
                amount=from_nanos(int(data["a"])),
                amount_nanos=int(data["a"]),
                plan=str(data["pl"]),
                pool=None if data["p"] is None else validate_id(data["p"], what="pool"),
                degraded=data["d"] == 1,
            )
            issued = float(data["i"])
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):  # signed, yet unreadable
            raise _foreign() from None
        age = _wall() - issued
        if age > self.ttl:
            raise TokenRefused(
                410,
                "reservation_expired",
                f"the reservation token was issued {int(age)} s ago, more than the "
                f"{int(self.ttl)} s the store remembers settlements; it can no longer be "
                "settled safely (its hold has long been reclaimed)",
            )
        return reservation
