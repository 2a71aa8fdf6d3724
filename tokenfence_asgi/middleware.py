"""``TokenFenceMiddleware``: the tenant, request id and error responses of each HTTP request.

A pure ASGI middleware (no ``BaseHTTPMiddleware``), in the style of Starlette's own: it resolves
the tenant, takes or makes a request id, sets the ``FenceContext`` for the request, echoes the
request id on the response, and turns a ``TokenFenceError`` raised inside into its JSON error
response. It makes no call to the store: budgets are checked when an LLM call is made.

Also here: ``signed_tenant_header`` and ``sign_tenant``, for a tenant header that a gateway signs.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from random import getrandbits
from typing import TypeAlias

import anyio
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenfence_asgi.context import FenceContext, pop_context, push_context, settle_context
from tokenfence_asgi.engine import TokenFence
from tokenfence_asgi.errors import ConfigError, InvalidId, TenantRequired, TokenFenceError
from tokenfence_asgi.keys import MAX_ID_LENGTH, validate_id
from tokenfence_asgi.responses import FenceErrorResponse

__all__ = ["TenantResolver", "TokenFenceMiddleware", "sign_tenant", "signed_tenant_header"]

log = structlog.get_logger("tokenfence_asgi")

TenantResolver: TypeAlias = Callable[[Scope], str | Awaitable[str | None] | None]
"""Finds the tenant of a request from its ASGI scope; sync or async; ``None`` when there is none."""

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_PRINTABLE_ID = re.compile(rb"[ -~]{1,%d}" % MAX_ID_LENGTH)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_MIN_SECRET_BYTES = 16


def _header_name(name: object, option: str) -> bytes:
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


def _decode_tenant(raw: bytes | None, header: bytes) -> str | None:
    if not raw:
        return None
    if _PRINTABLE_ID.fullmatch(raw):  # the common case, accepted by validate_id, checked faster
        return raw.decode("ascii")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidId(f"the {header.decode()} header is not valid UTF-8") from None
    return validate_id(text, what="tenant_id")


def _with_header(
    headers: Iterable[tuple[bytes, bytes]], name: bytes, value: bytes
) -> list[tuple[bytes, bytes]]:
    """``headers`` plus ``name: value``, unless the app already set ``name``."""
    result = list(headers)
    for key, _ in result:
        if key.lower() == name:
            return result
    result.append((name, value))
    return result


class TokenFenceMiddleware:
    """Sets the tenant context of every HTTP request and answers fence errors as JSON.

    ``app.add_middleware(TokenFenceMiddleware, fence=fence)``: added this way it sits inside
    Starlette's (and FastAPI's) error middleware, which must not see fence errors first (it would
    answer them with a 500). Per request:

    - The tenant comes from ``tenant``: a header name (default ``X-Tenant-ID``) or a callable
      ``(scope) -> str | None`` (sync or async), e.g. reading a verified JWT or the
      ``scope["state"]`` your own auth middleware set. **A raw client header is only safe
      behind a gateway that sets it** (and drops any value the client sent): anyone who can
      reach the app directly can otherwise spend any tenant's budget. Use
      ``signed_tenant_header`` when the hop between gateway and app is not trusted.
    - No tenant: 401 ``tenant_required``, unless ``allow_anonymous`` (for apps whose anonymous
      requests make no LLM call; a fenced call there still raises ``TenantRequired``). An
      invalid tenant id (control characters, too long, sent twice): 400 ``invalid_tenant``.
    - The request id is the ``request_id_header`` value (default ``X-Request-ID``) when it is
      1-128 characters of ``[A-Za-z0-9._:-]``, else 32 new random hex digits (like
      ``uuid4().hex``); it is echoed on every response, error responses included, unless the
      app set that header itself. ``request_id_header=None`` neither reads nor echoes one.
    - ``current_context()`` returns the request's ``FenceContext``; ``tenant``, ``feature`` and
      ``request_id`` are bound in ``structlog.contextvars`` for the request.
    - A ``TokenFenceError`` raised inside becomes its JSON response (see ``responses``) when no
      response has started. Once one has (streaming), the error is logged as
      ``fence_error_after_response_start`` and the body is ended cleanly; there is never a
      second response start. ``ConfigError`` (a bug, status 500) and every other exception
      propagate unchanged.

    Lifespan scopes pass through untouched; so do websockets unless ``websocket=True``, which
    resolves their tenant too (a missing or invalid one closes the socket with code 1008).
    ``clock`` (epoch seconds) is what ``Retry-After`` counts from; give it the fence's clock
    when the fence has one. ``fence`` is the engine the app's LLM calls are charged to.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        fence: TokenFence,
        tenant: str | TenantResolver = "X-Tenant-ID",
        allow_anonymous: bool = False,
        request_id_header: str | None = "X-Request-ID",
        websocket: bool = False,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(fence, TokenFence):
            raise ConfigError(f"fence must be a TokenFence, got {type(fence).__name__}")
        self.app = app
        self.fence = fence
        self._tenant_header: bytes | None = None
        self._resolver: TenantResolver | None = None
        if isinstance(tenant, str):
            self._tenant_header = _header_name(tenant, "tenant")
        elif callable(tenant):
            self._resolver = tenant
        else:
            raise ConfigError(f"tenant must be a header name or a callable, got {tenant!r}")
        self._allow_anonymous = allow_anonymous
        self._request_id_header = (
            None if request_id_header is None else _header_name(request_id_header, "request_id")
        )
        if self._request_id_header is not None and self._request_id_header == self._tenant_header:
            raise ConfigError("tenant and request_id_header must be different headers")
        self._websocket = websocket
        self._clock = clock

    def _read_headers(self, scope: Scope) -> tuple[str, list[bytes]]:
        # One pass over the headers: the request id and, in header mode, the tenant's values.
        rid_name, tenant_name = self._request_id_header, self._tenant_header
        request_id: str | None = None
        tenant: list[bytes] = []
        value: bytes
        for key, value in scope["headers"]:
            if key == tenant_name:
                tenant.append(value)
            elif key == rid_name and request_id is None:
                request_id = value.decode("ascii") if _REQUEST_ID.fullmatch(value) else ""
        # None or not sane: 128 random bits as 32 hex digits, like uuid4().hex but cheaper (an id
        # to correlate logs, not a secret; the random module reseeds in forked workers)
        return request_id or f"{getrandbits(128):032x}", tenant

    def _header_tenant(self, values: list[bytes]) -> str | None:
        header = self._tenant_header or b""
        if len(values) > 1:  # e.g. a gateway that appends its value to the client's
            raise InvalidId(f"the {header.decode()} header was sent more than once")
        return _decode_tenant(values[0] if values else None, header)

    async def _tenant(self, scope: Scope, values: list[bytes]) -> str | None:
        if self._resolver is None:
            return self._header_tenant(values)
        found = self._resolver(scope)
        if inspect.isawaitable(found):
            found = await found
        return None if found is None else validate_id(found, what="tenant_id")

    def _now(self) -> datetime | None:
        return None if self._clock is None else datetime.fromtimestamp(self._clock(), UTC)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket" and self._websocket:
                await self._ws(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return

        request_id, tenant_values = self._read_headers(scope)
        echo = self._request_id_header
        try:
            if self._resolver is None:  # header mode: no coroutine to create and await
                tenant = self._header_tenant(tenant_values)
            else:
                tenant = await self._tenant(scope, tenant_values)
            if tenant is None and not self._allow_anonymous:
                raise TenantRequired()
        except InvalidId as exc:
            log.info("tenant_invalid", request_id=request_id, detail=exc.message)
            response = FenceErrorResponse(exc, status_code=400, error_code="invalid_tenant")
            await self._reply(response, request_id, scope, receive, send)
            return
        except TokenFenceError as exc:
            if exc.http_status == 500:
                raise
            log.info("tenant_refused", request_id=request_id, error=exc.error_code)
            response = FenceErrorResponse(exc, now=self._now())
            await self._reply(response, request_id, scope, receive, send)
            return

        echo_value = request_id.encode("ascii")
        response_started = False
        response_complete = False

        async def send_wrapper(message: Message) -> None:
            nonlocal response_started, response_complete
            kind = message["type"]
            if kind == "http.response.start":
                response_started = True
                if echo is not None:
                    message["headers"] = _with_header(message.get("headers", ()), echo, echo_value)
            elif kind == "http.response.body" and not message.get("more_body", False):
                response_complete = True
            await send(message)

        ctx = FenceContext(tenant, None, request_id)
        token = push_context(ctx)
        try:
            await self.app(scope, receive, send_wrapper)
        except TokenFenceError as exc:
            if exc.http_status == 500:
                raise
            if not response_started:
                log.info("fence_error_response", status=exc.http_status, error=exc.error_code)
                response = FenceErrorResponse(exc, now=self._now())
                await self._reply(response, request_id, scope, receive, send)
            else:
                log.warning(
                    "fence_error_after_response_start", error=exc.error_code, detail=exc.message
                )
                if not response_complete:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            try:
                if ctx.open_reservations:
                    # Also after a disconnect or cancellation: shielded, so the settlers run.
                    with anyio.CancelScope(shield=True):
                        await settle_context(ctx)
                if ctx.open_reservations:  # the holds' leases reclaim these
                    log.warning(
                        "reservations_left_open", reservation_ids=sorted(ctx.open_reservations)
                    )
            finally:
                pop_context(token)

    async def _reply(
        self,
        response: FenceErrorResponse,
        request_id: str,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if self._request_id_header is not None:
            response.headers[self._request_id_header.decode("ascii")] = request_id
        await response(scope, receive, send)

    async def _ws(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id, tenant_values = self._read_headers(scope)
        try:
            tenant = await self._tenant(scope, tenant_values)
            if tenant is None and not self._allow_anonymous:
                raise TenantRequired()
        except (InvalidId, TenantRequired) as exc:
            log.info("websocket_tenant_refused", request_id=request_id, detail=exc.message)
            await send({"type": "websocket.close", "code": 1008, "reason": exc.error_code})
            return
        token = push_context(FenceContext(tenant, None, request_id))
        try:
            await self.app(scope, receive, send)
        finally:
            pop_context(token)


def sign_tenant(secret: str | bytes, tenant_id: str) -> str:
    """The signature a gateway puts in the signature header: HMAC-SHA256 hex of the tenant id.

    ``secret`` is shared by the gateway and the app (at least 16 bytes, from a secret store).
    """
    return hmac.new(_secret(secret), tenant_id.encode("utf-8"), hashlib.sha256).hexdigest()


def _secret(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not isinstance(key, bytes) or len(key) < _MIN_SECRET_BYTES:
        raise ConfigError(f"secret must be at least {_MIN_SECRET_BYTES} bytes")
    return key


def signed_tenant_header(
    secret: str | bytes,
    *,
    header: str = "X-Tenant-ID",
    signature_header: str = "X-Tenant-Signature",
) -> Callable[[Scope], str | None]:
    """A ``tenant=`` resolver that trusts the tenant header only with a valid signature.

    The gateway sends ``header: <tenant id>`` and ``signature_header: sign_tenant(secret, id)``;
    the signature is compared in constant time. No tenant header: ``None`` (401, or anonymous
    if allowed). A missing or wrong signature raises ``TenantRequired`` (401) even when
    anonymous requests are allowed. The signature never expires, so a captured pair can be
    replayed: keep it between gateway and app, never in front of clients.
    """
    key = _secret(secret)
    tenant_name = _header_name(header, "header")
    signature_name = _header_name(signature_header, "signature_header")

    def resolve(scope: Scope) -> str | None:
        tenant = _decode_tenant(_single_header(scope, tenant_name), tenant_name)
        if tenant is None:
            return None
        signature = _single_header(scope, signature_name) or b""
        expected = hmac.new(key, tenant.encode("utf-8"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode("ascii"), signature):
            raise TenantRequired(f"the {header} header has a missing or invalid signature")
        return tenant

    return resolve
