"""``TokenFenceMiddleware``: the tenant, request id and error responses of each HTTP request.

A pure ASGI middleware (no ``BaseHTTPMiddleware``), in the style of Starlette's own: it resolves
the tenant, takes or makes a request id, sets the ``FenceContext`` for the request, echoes the
request id on the response, and turns a ``TokenFenceError`` raised inside into its JSON error
response. It makes no call to the store: budgets are checked when an LLM call is made.

``signed_tenant_header`` and ``sign_tenant`` (for a tenant header that a gateway signs) live in
``tenant_header`` and are importable from here too.
"""

from __future__ import annotations

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
from tokenfence_asgi.endpoints import misplaced_feature
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import ConfigError, InvalidId, TenantRequired, TokenFenceError
from tokenfence_asgi.store.keys import validate_id
from tokenfence_asgi.web.problem import FenceErrorResponse, http_status
from tokenfence_asgi.web.tenant_header import (
    SignedTenantHeader,
    decode_tenant,
    header_name,
    sign_tenant,
    signed_tenant_header,
)

__all__ = [
    "SignedTenantHeader",
    "TenantResolver",
    "TokenFenceMiddleware",
    "sign_tenant",
    "signed_tenant_header",
]

log = structlog.get_logger("tokenfence_asgi")

TenantResolver: TypeAlias = Callable[[Scope], str | Awaitable[str | None] | None]
"""Finds the tenant of a request from its ASGI scope; sync or async; ``None`` when there is none."""

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def _with_header(
    headers: Iterable[tuple[bytes, bytes]], name: bytes, value: bytes
) -> list[tuple[bytes, bytes]]:
    """``headers`` plus ``name: value``, unless the app already set ``name``."""
    result = list(headers)
    size = len(name)
    for key, _ in result:
        if len(key) == size and key.lower() == name:
            return result
    result.append((name, value))
    return result


class _Sender:
    """The ``send`` the app is given: notes whether the response started and ended, and adds
    the request id header to the response start (``echo``: its name, or None).

    One small object per request rather than a closure with its cells, and a plain callable
    returning ``send``'s awaitable, so no coroutine of its own per message: under load, every
    object a request keeps alive while it waits costs garbage-collector time.
    """

    __slots__ = ("complete", "echo", "request_id", "send", "started")

    def __init__(self, send: Send, echo: bytes | None, request_id: str) -> None:
        self.send = send
        self.echo = echo
        self.request_id = request_id
        self.started = False
        self.complete = False

    def __call__(self, message: Message) -> Awaitable[None]:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            echo = self.echo
            if echo is not None:
                value = self.request_id.encode("ascii")
                message["headers"] = _with_header(message.get("headers", ()), echo, value)
        elif kind == "http.response.body" and not message.get("more_body"):
            self.complete = True
        return self.send(message)


def _exclude_prefixes(paths: Iterable[str]) -> tuple[str, ...]:
    if isinstance(paths, str) or not isinstance(paths, Iterable):
        raise ConfigError(f"exclude_paths must be a list of paths, got {paths!r}")
    prefixes = []
    for path in paths:
        if not isinstance(path, str) or not path.startswith("/") or path.rstrip("/") == "":
            raise ConfigError(
                f"exclude_paths: each must be a path below the root such as '/admin', got {path!r}"
            )
        prefixes.append(path.rstrip("/"))
    return tuple(prefixes)


def _route_path(scope: Scope) -> str:
    # The path the app's router matches (as Starlette's get_route_path): without the root_path
    # a proxy or a parent app mounted this one under.
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :]
    return path


def _fence_error(exc: Exception) -> TokenFenceError | None:
    """The fence error to answer ``exc`` with, or ``None`` when it must propagate.

    A ``TokenFenceError`` other than a bug (status 500) is answered. So is an ``ExceptionGroup``
    (an anyio or asyncio task group in the app) whose leaves are all such errors: the first
    leaf, depth first, in the group's order. A group holding anything else (a ``KeyError`` or a
    ``ConfigError`` beside a refusal) propagates whole: it is a bug to surface, not a refusal.
    """
    if isinstance(exc, TokenFenceError):
        return None if http_status(exc) == 500 else exc
    if not isinstance(exc, BaseExceptionGroup):
        return None
    first: TokenFenceError | None = None
    stack: list[BaseException] = [exc]
    while stack:
        item = stack.pop()
        if isinstance(item, BaseExceptionGroup):
            stack.extend(reversed(item.exceptions))
        elif isinstance(item, TokenFenceError) and http_status(item) != 500:
            first = first or item
        else:
            return None
    return first


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
      requests make no LLM call; a fenced call there still raises ``TenantRequired``). The body
      names the header it wanted when the tenant comes from one: the ``tenant`` header, or a
      resolver's ``header`` attribute (``signed_tenant_header`` has one). An invalid tenant id
      (control characters, too long, sent twice): 400 ``invalid_tenant``. A resolver that raises
      ``TenantRequired`` gives its 401; one that raises anything else is a bug in it: logged as
      ``tenant_resolver_failed`` with the traceback, answered 500 ``tenant_resolver_failed``
      (JSON, no detail in the body).
    - ``exclude_paths`` (e.g. ``["/admin", "/docs", "/openapi.json", "/health"]``): requests
      whose path is one of these or below it, segment-wise (``"/admin"`` covers ``/admin`` and
      ``/admin/x``, not ``/administrator``), are not asked for a tenant and the resolver is not
      called. They run as anonymous requests (``current_context().tenant_id is None``), so a
      fenced call made there is still refused with ``TenantRequired``.
    - The request id is the ``request_id_header`` value (default ``X-Request-ID``) when it is
      1-128 characters of ``[A-Za-z0-9._:-]``, else 32 new random hex digits (like
      ``uuid4().hex``); it is echoed on every response, error responses included, unless the
      app set that header itself. ``request_id_header=None`` neither reads nor echoes one.
    - ``current_context()`` returns the request's ``FenceContext``; ``tenant``, ``feature`` and
      ``request_id`` are bound in ``structlog.contextvars`` for the request, unless
      ``bind_to_structlog(False)`` (then the ``add_fence_context`` processor adds them to log
      lines; see ``context``).
    - A ``TokenFenceError`` raised inside becomes its JSON response (see ``responses``) when no
      response has started; so does an ``ExceptionGroup`` made only of them (a task group in the
      endpoint), answered as its first. Once a response has started (streaming), the error is
      logged as ``fence_error_after_response_start`` and the body is ended cleanly; there is
      never a second response start. A 503's body says only that the budget service is
      unavailable; the store's address and error are logged (``fence_error_response``).
      ``ConfigError`` (a bug, status 500), every other exception, and a group that holds one
      propagate unchanged.
    - An endpoint that ``@feature`` was applied to after the route decorator had registered it
      (``@feature`` above ``@app.get``: the route keeps the undecorated function) is logged
      once as ``feature_decorator_misplaced``.

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
        exclude_paths: Iterable[str] = (),
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
            self._tenant_header = header_name(tenant, "tenant")
            self._wanted_header: str | None = tenant
        elif callable(tenant):
            self._resolver = tenant
            wanted = getattr(tenant, "header", None)  # e.g. a SignedTenantHeader
            self._wanted_header = wanted if isinstance(wanted, str) else None
        else:
            raise ConfigError(f"tenant must be a header name or a callable, got {tenant!r}")
        self._allow_anonymous = allow_anonymous
        self._excluded = _exclude_prefixes(exclude_paths)
        self._request_id_header = (
            None if request_id_header is None else header_name(request_id_header, "request_id")
        )
        if self._request_id_header is not None and self._request_id_header == self._tenant_header:
            raise ConfigError("tenant and request_id_header must be different headers")
        self._websocket = websocket
        self._clock = clock
        self._endpoints_seen: set[object] = set()

    def _read_headers(self, scope: Scope) -> tuple[str, bytes | None, bool]:
        # One pass over the headers: the request id and, in header mode, the tenant's value and
        # whether it was sent more than once.
        rid_name, tenant_name = self._request_id_header, self._tenant_header
        request_id: str | None = None
        tenant: bytes | None = None
        repeated = False
        value: bytes
        for key, value in scope["headers"]:
            if key == tenant_name:
                repeated = tenant is not None
                tenant = value
            elif key == rid_name and request_id is None:
                request_id = value.decode("ascii") if _REQUEST_ID.fullmatch(value) else ""
        # None or not sane: 128 random bits as 32 hex digits, like uuid4().hex but cheaper (an id
        # to correlate logs, not a secret; the random module reseeds in forked workers)
        return request_id or getrandbits(128).to_bytes(16, "big").hex(), tenant, repeated

    async def _resolved(self, resolver: TenantResolver, scope: Scope) -> str | None:
        found = resolver(scope)
        if inspect.isawaitable(found):
            found = await found
        tenant = None if found is None else validate_id(found, what="tenant_id")
        if tenant is None and not self._allow_anonymous:
            raise TenantRequired(header=self._wanted_header)
        return tenant

    def _from_header(self, raw: bytes | None, repeated: bool) -> str | None:
        header = self._tenant_header or b""
        if repeated:  # e.g. a gateway that appends its value to the client's
            raise InvalidId(f"the {header.decode()} header was sent more than once")
        tenant = decode_tenant(raw, header)
        if tenant is None and not self._allow_anonymous:
            raise TenantRequired(header=self._wanted_header)
        return tenant

    def _is_excluded(self, scope: Scope) -> bool:
        path = _route_path(scope)
        for prefix in self._excluded:
            if path.startswith(prefix) and path[len(prefix) : len(prefix) + 1] in ("", "/"):
                return True
        return False

    def _now(self) -> datetime | None:
        return None if self._clock is None else datetime.fromtimestamp(self._clock(), UTC)

    def _check_endpoint(self, endpoint: object) -> None:
        """Log an endpoint whose ``@feature`` is above its route decorator (first sight only)."""
        try:
            if endpoint in self._endpoints_seen:
                return
            if len(self._endpoints_seen) < 10_000:  # endpoints are few; never grow unbounded
                self._endpoints_seen.add(endpoint)
            name = misplaced_feature(endpoint)
        except Exception:  # an odd endpoint object (unhashable, a raising __getattr__)
            return
        if name is not None:
            log.warning(
                "feature_decorator_misplaced",
                endpoint=getattr(endpoint, "__qualname__", repr(endpoint)),
                feature=name,
                detail="@feature is above the route decorator, so the route calls the "
                "undecorated function and its calls get no feature; put @feature below it",
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket" and self._websocket:
                await self._ws(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return

        request_id, raw_tenant, repeated = self._read_headers(scope)
        echo = self._request_id_header
        try:
            if self._excluded and self._is_excluded(scope):
                tenant = None  # no tenant asked for, none taken: an anonymous request
            elif self._resolver is None:  # header mode: no coroutine to create and await
                tenant = self._from_header(raw_tenant, repeated)
            else:
                tenant = await self._resolved(self._resolver, scope)
        except InvalidId as exc:
            log.info("tenant_invalid", request_id=request_id, detail=exc.message)
            response = FenceErrorResponse(exc, status_code=400, error_code="invalid_tenant")
            await self._reply(response, request_id, scope, receive, send)
            return
        except TokenFenceError as exc:
            if http_status(exc) == 500:
                raise
            log.info("tenant_refused", request_id=request_id, error=exc.error_code)
            response = FenceErrorResponse(exc, now=self._now())
            await self._reply(response, request_id, scope, receive, send)
            return
        except Exception:
            log.exception("tenant_resolver_failed", request_id=request_id)
            failed = TokenFenceError("the tenant of this request could not be resolved")
            response = FenceErrorResponse(
                failed, status_code=500, error_code="tenant_resolver_failed"
            )
            await self._reply(response, request_id, scope, receive, send)
            return

        sender = _Sender(send, echo, request_id)
        ctx = FenceContext(tenant, None, request_id)
        token = push_context(ctx)
        try:
            await self.app(scope, receive, sender)
        except Exception as raised:
            error = _fence_error(raised)
            if error is None:
                raise
            if not sender.started:
                status = http_status(error)
                if status >= 500:  # the detail (a store's address) is for the log only
                    log.warning(
                        "fence_error_response",
                        status=status,
                        error=error.error_code,
                        detail=error.message,
                    )
                else:
                    log.info("fence_error_response", status=status, error=error.error_code)
                response = FenceErrorResponse(error, now=self._now())
                await self._reply(response, request_id, scope, receive, send)
            else:
                log.warning(
                    "fence_error_after_response_start", error=error.error_code, detail=error.message
                )
                if not sender.complete:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            try:
                if ctx.has_open_reservations:
                    # Also after a disconnect or cancellation: shielded, so the settlers run.
                    with anyio.CancelScope(shield=True):
                        await settle_context(ctx)
                if ctx.has_open_reservations:  # the holds' leases reclaim these
                    log.warning(
                        "reservations_left_open", reservation_ids=sorted(ctx.open_reservations)
                    )
            finally:
                pop_context(token)
                # Starlette's router puts the endpoint it matched in the request's scope.
                endpoint = scope.get("endpoint")
                if endpoint is not None:
                    self._check_endpoint(endpoint)

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
        request_id, raw_tenant, repeated = self._read_headers(scope)
        try:
            if self._excluded and self._is_excluded(scope):
                tenant = None
            elif self._resolver is None:
                tenant = self._from_header(raw_tenant, repeated)
            else:
                tenant = await self._resolved(self._resolver, scope)
        except (InvalidId, TenantRequired) as exc:
            log.info("websocket_tenant_refused", request_id=request_id, detail=exc.message)
            await send({"type": "websocket.close", "code": 1008, "reason": exc.error_code})
            return
        token = push_context(FenceContext(tenant, None, request_id))
        try:
            await self.app(scope, receive, send)
        finally:
            pop_context(token)
