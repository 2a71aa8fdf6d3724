"""Reading the tenant from request headers, plain or signed by a gateway.

A plain header (``X-Tenant-ID``) is only as trustworthy as the hop that sets it. When the hop
between a gateway and the app is not trusted, the gateway signs the tenant with a secret it
shares with the app: ``sign_tenant`` makes the signature header's value,
``signed_tenant_header`` the ``tenant=`` resolver for ``TokenFenceMiddleware`` that checks it.
A signature covers the tenant id, its issue time and an optional nonce, so a captured one is
replayable only until it expires (``max_age_s``), and is single use when the app checks nonces.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable

from starlette.types import Scope

from tokenfence_asgi.errors import ConfigError, InvalidId, TenantRequired
from tokenfence_asgi.store.keys import MAX_ID_LENGTH, validate_id

__all__ = [
    "SignedTenantHeader",
    "decode_tenant",
    "header_name",
    "sign_tenant",
    "signed_tenant_header",
]

_PRINTABLE_ID = re.compile(rb"[ -~]{1,%d}" % MAX_ID_LENGTH)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_MIN_SECRET_BYTES = 16


def header_name(name: object, option: str) -> bytes:
    """``name`` lower-cased as ASGI gives header names; ``ConfigError`` naming ``option`` if bad."""
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        raise ConfigError(f"{option} must be an HTTP header name, got {name!r}")
    return name.lower().encode("ascii")


def _single_header(scope: Scope, name: bytes) -> bytes | None:
    """The value of header ``name``; raises ``InvalidId`` when it is sent more than once."""
    found = None
    for key, value in scope["headers"]:
        if key == name:
            if found is not None:
                raise InvalidId(f"the {name.decode()} header was sent more than once")
            found = value
    return found


def decode_tenant(raw: bytes | None, header: bytes) -> str | None:
    """The tenant id in a header's raw value; ``None`` when empty, ``InvalidId`` when not valid."""
    if not raw:
        return None
    if _PRINTABLE_ID.fullmatch(raw):  # the common case, accepted by validate_id, checked faster
        return raw.decode("ascii")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidId(f"the {header.decode()} header is not valid UTF-8") from None
    return validate_id(text, what="tenant_id")


# t=<issued at, epoch seconds>[,n=<nonce>],s=<HMAC-SHA256, lower-case hex>: one spelling only.
_SIGNATURE = re.compile(rb"t=(0|[1-9][0-9]{0,10})(?:,n=([A-Za-z0-9_-]{16,128}))?,s=([0-9a-f]{64})")
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_SIGNING_CONTEXT = b"tokenfence-tenant-v1\n"


def _signed_message(tenant_id: str, issued_at: bytes, nonce: bytes) -> bytes:
    # The tenant id holds no control character (validate_id), so newlines separate unambiguously;
    # the context string keeps these MACs apart from anything else signed with the same secret.
    return b"%s%s\n%s\n%s" % (_SIGNING_CONTEXT, tenant_id.encode("utf-8"), issued_at, nonce)


def sign_tenant(
    secret: str | bytes,
    tenant_id: str,
    *,
    issued_at: int | None = None,
    nonce: str | None = None,
) -> str:
    """The value a gateway puts in the signature header for ``tenant_id``.

    ``t=<issued_at>,s=<hex>`` or, with a nonce, ``t=<issued_at>,n=<nonce>,s=<hex>``: ``s`` is
    HMAC-SHA256 (lower-case hex) over the tenant id, the issue time and the nonce. ``issued_at``
    is whole epoch seconds (default: now, from the gateway's clock). ``nonce`` is 16-128
    characters of ``[A-Za-z0-9_-]`` (``secrets.token_urlsafe(16)`` gives 22), for apps that make
    each signature single use. ``secret`` is shared by the gateway and the app (at least 16
    bytes, from a secret store). Raises ``InvalidId`` for a tenant id the app would refuse and
    ``ConfigError`` for a bad secret, time or nonce.
    """
    key = _secret(secret)
    tenant = validate_id(tenant_id, what="tenant_id")
    if issued_at is None:
        issued_at = int(time.time())
    elif (
        isinstance(issued_at, bool) or not isinstance(issued_at, int) or not 0 <= issued_at < 10**11
    ):
        raise ConfigError(f"issued_at must be whole epoch seconds, got {issued_at!r}")
    if nonce is not None and (not isinstance(nonce, str) or not _NONCE.fullmatch(nonce)):
        raise ConfigError(f"nonce must be 16-128 characters of [A-Za-z0-9_-], got {nonce!r}")
    stamp = str(issued_at).encode("ascii")
    used = b"" if nonce is None else nonce.encode("ascii")
    mac = hmac.new(key, _signed_message(tenant, stamp, used), hashlib.sha256).hexdigest()
    return f"t={issued_at},{'' if nonce is None else f'n={nonce},'}s={mac}"


def _secret(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not isinstance(key, bytes) or len(key) < _MIN_SECRET_BYTES:
        raise ConfigError(f"secret must be at least {_MIN_SECRET_BYTES} bytes")
    return key


def _seconds(name: str, value: object, *, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be in [{low:g}, {high:g}] seconds, got {value!r}")
    return float(value)


class SignedTenantHeader:
    """A ``tenant=`` resolver that trusts the tenant header only with a fresh, valid signature.

    Made by ``signed_tenant_header``. Called with a request's scope: the tenant id, ``None``
    when the tenant header is absent, or ``TenantRequired`` (401) for a bad signature.
    ``header`` is the tenant header's name (the 401 body names it).
    """

    __slots__ = (
        "_clock",
        "_key",
        "_max_age_s",
        "_require_nonce",
        "_signature",
        "_skew_s",
        "_tenant",
        "header",
        "signature_header",
    )

    def __init__(
        self,
        secret: str | bytes,
        *,
        header: str,
        signature_header: str,
        max_age_s: float,
        clock_skew_s: float,
        require_nonce: bool,
        clock: Callable[[], float],
    ) -> None:
        self._key = _secret(secret)
        self._tenant = header_name(header, "header")
        self._signature = header_name(signature_header, "signature_header")
        if self._signature == self._tenant:
            raise ConfigError("header and signature_header must be different headers")
        self._max_age_s = _seconds("max_age_s", max_age_s, low=1, high=86400)
        self._skew_s = _seconds("clock_skew_s", clock_skew_s, low=0, high=300)
        if not isinstance(require_nonce, bool):
            raise ConfigError(f"require_nonce must be True or False, got {require_nonce!r}")
        if not callable(clock):
            raise ConfigError("clock must be a callable returning epoch seconds")
        self._require_nonce = require_nonce
        self._clock = clock
        self.header = header
        self.signature_header = signature_header

    def __call__(self, scope: Scope) -> str | None:
        tenant = decode_tenant(_single_header(scope, self._tenant), self._tenant)
        if tenant is None:
            return None
        found = _SIGNATURE.fullmatch(_single_header(scope, self._signature) or b"")
        if found is None:
            raise TenantRequired(
                f"the {self.header} header has a missing or invalid signature"
                f" ({self.signature_header}: t=<issued at>[,n=<nonce>],s=<hex>)",
                header=self.signature_header,
            )
        stamp, nonce, mac = found.groups()
        message = _signed_message(tenant, stamp, nonce or b"")
        expected = hmac.new(self._key, message, hashlib.sha256).hexdigest().encode("ascii")
        if not hmac.compare_digest(expected, mac):
            raise TenantRequired(
                f"the {self.header} header has a missing or invalid signature",
                header=self.signature_header,
            )
        age_s = self._clock() - int(stamp)
        if not -self._skew_s <= age_s <= self._max_age_s + self._skew_s:
            raise TenantRequired(
                f"the {self.header} header's signature has expired or is not yet valid"
                f" (issued {int(stamp)}, accepted for {self._max_age_s:g} s)",
                header=self.signature_header,
            )
        if nonce is None:
            if self._require_nonce:
                raise TenantRequired(
                    f"the {self.signature_header} header must carry a nonce",
                    header=self.signature_header,
                )
        else:
            scope.setdefault("state", {})["tenant_nonce"] = nonce.decode("ascii")
        return tenant


def signed_tenant_header(
    secret: str | bytes,
    *,
    header: str = "X-Tenant-ID",
    signature_header: str = "X-Tenant-Signature",
    max_age_s: float = 60,
    clock_skew_s: float = 5,
    require_nonce: bool = False,
    clock: Callable[[], float] = time.time,
) -> SignedTenantHeader:
    """A ``tenant=`` resolver that trusts the tenant header only with a fresh, valid signature.

    The gateway sends ``header: <tenant id>`` and ``signature_header: sign_tenant(secret, id)``
    (``t=<issued at>[,n=<nonce>],s=<HMAC-SHA256 hex>``). The app accepts it when the MAC over
    tenant, time and nonce matches (compared in constant time), the value is spelt exactly as
    ``sign_tenant`` spells it (anything else is refused, never normalised), and it was issued
    at most ``max_age_s`` seconds ago by ``clock`` (the app's wall clock by default), allowing
    ``clock_skew_s`` either way between gateway and app clocks. So a captured pair can be
    replayed only until it expires.

    Single use is the app's to enforce: a verified nonce is put in ``scope["state"]``
    (``request.state.tenant_nonce``), and an app that wants each signature once records it as
    seen for ``max_age_s + 2 * clock_skew_s`` (e.g. Redis ``SET key 1 NX EX ...``) and refuses a
    repeat; ``require_nonce=True`` refuses signatures without one.

    No tenant header: ``None`` (401, or anonymous if allowed). A missing, malformed, wrong or
    expired signature raises ``TenantRequired`` (401) even when anonymous requests are allowed;
    a header sent twice is 400. Raises ``ConfigError`` for a secret under 16 bytes, a bad header
    name, or ``max_age_s`` outside 1 s - 1 day, ``clock_skew_s`` outside 0-300 s.
    """
    return SignedTenantHeader(
        secret,
        header=header,
        signature_header=signature_header,
        max_age_s=max_age_s,
        clock_skew_s=clock_skew_s,
        require_nonce=require_nonce,
        clock=clock,
    )
