"""Who is spending, on what: the request context and ``tenant_scope`` (``@feature``: endpoints).

One ``ContextVar`` holds the current ``FenceContext`` (tenant, feature, request id, and the
reservations the request has left open). ``TokenFenceMiddleware`` sets it for each HTTP
request, ``@feature("chat")`` adds the feature for the duration of an endpoint, and
``tenant_scope("acme")`` does the same outside HTTP (jobs, workers, scripts). The LiteLLM
callback reads it with ``current_context()``.

Every change is made with a token and undone in ``finally``, so contexts nest and never leak
between requests, tasks or threads. The same fields are bound with ``structlog.contextvars``
(``tenant``, ``feature``, ``request_id``), so the app's own log lines carry them when its
structlog configuration includes ``structlog.contextvars.merge_contextvars``; or, with
``bind_to_structlog(False)``, the ``add_fence_context`` processor reads them when a line is
logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, TypeAlias, TypeVar

import structlog
from structlog.typing import EventDict

from tokenfence_asgi.errors import TenantRequired
from tokenfence_asgi.results import Reservation
from tokenfence_asgi.store.keys import validate_id

__all__ = [
    "ContextToken",
    "FenceContext",
    "TenantScope",
    "add_fence_context",
    "bind_to_structlog",
    "current_context",
    "pop_context",
    "push_context",
    "settle_context",
    "tenant_scope",
]

F = TypeVar("F", bound=Callable[..., Any])
log = structlog.get_logger("tokenfence_asgi")


class FenceContext:
    """The tenant, feature and request id that LLM calls made here are charged to.

    ``tenant_id`` is ``None`` only in an anonymous request (``allow_anonymous=True``): a fenced
    call made there must be refused with ``TenantRequired`` (see ``require_tenant``).
    ``open_reservations`` maps reservation id to ``Reservation`` for holds taken in this scope
    and not yet settled (made on first use; ``has_open_reservations`` asks without making it):
    the LiteLLM callback adds and removes them (``track`` / ``untrack``) so that whoever ends the
    scope can settle what is left. It is the only mutable part, and it is
    shared by the contexts ``@feature`` derives within one request or scope. The other fields
    are read-only by contract (a plain slotted class rather than a frozen dataclass: one is built
    per request, and this is three times cheaper). Contexts compare equal on tenant, feature and
    request id.
    """

    __slots__ = ("_reservations", "feature", "request_id", "settlers", "tenant_id")

    def __init__(
        self,
        tenant_id: str | None,
        feature: str | None = None,
        request_id: str | None = None,
        open_reservations: dict[str, Reservation] | None = None,
        settlers: list[Settler] | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.feature = feature
        self.request_id = request_id
        # Both made on first need (track, on_end, with_feature): most requests hold nothing,
        # and under load every object a waiting request keeps alive costs collector time.
        self._reservations = open_reservations
        self.settlers: list[Settler] | None = settlers

    @property
    def open_reservations(self) -> dict[str, Reservation]:
        """Reservation id to ``Reservation``, for the holds taken in this scope and not settled."""
        if self._reservations is None:
            self._reservations = {}
        return self._reservations

    @property
    def has_open_reservations(self) -> bool:
        """Whether a hold taken in this scope is not settled yet."""
        return bool(self._reservations)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FenceContext):
            return NotImplemented
        mine = (self.tenant_id, self.feature, self.request_id)
        return mine == (other.tenant_id, other.feature, other.request_id)

    def __hash__(self) -> int:
        return hash((self.tenant_id, self.feature, self.request_id))

    def __repr__(self) -> str:
        fields = f"tenant_id={self.tenant_id!r}, feature={self.feature!r}"
        return f"FenceContext({fields}, request_id={self.request_id!r})"

    def require_tenant(self) -> str:
        """The tenant id; raises ``TenantRequired`` in an anonymous request."""
        if self.tenant_id is None:
            raise TenantRequired("this request has no tenant, so it cannot make a fenced call")
        return self.tenant_id

    def track(self, reservation: Reservation) -> None:
        """Record a hold taken in this scope until it is committed or released."""
        self.open_reservations[reservation.id] = reservation

    def untrack(self, reservation_id: str) -> None:
        """Forget a hold that was committed or released (no error if it is unknown)."""
        self.open_reservations.pop(reservation_id, None)

    def on_end(self, settler: Settler) -> None:
        """Have ``await settler(ctx)`` run when the request or scope ends (once per settler).

        The LiteLLM callback registers itself here, to settle the calls no LiteLLM event will
        (a stream the client abandoned, a cancelled call).
        """
        if self.settlers is None:
            self.settlers = [settler]
        elif settler not in self.settlers:
            self.settlers.append(settler)

    def with_feature(self, name: str | None) -> FenceContext:
        """The same tenant, request id, open reservations and settlers, with ``feature``."""
        if self.settlers is None:  # shared from now on, whichever of the two registers one
            self.settlers = []
        return FenceContext(
            self.tenant_id, name, self.request_id, self.open_reservations, self.settlers
        )


_CONTEXT: ContextVar[FenceContext | None] = ContextVar("tokenfence_asgi_context", default=None)
_SETTLING: set[asyncio.Task[None]] = set()  # settlements a sync scope exit started

Settler: TypeAlias = Callable[[FenceContext], Awaitable[None]]
"""Settles what a scope left open; registered with ``FenceContext.on_end``."""


async def settle_context(ctx: FenceContext) -> None:
    """Run the settlers registered on ``ctx`` (the end of a request or scope).

    A failing settler is logged and the others still run; the holds it left are reclaimed when
    their leases run out.
    """
    for settler in list(ctx.settlers or ()):
        try:
            await settler(ctx)
        except Exception as exc:
            log.error("settle_failed", settler=repr(settler), error=repr(exc))


def current_context() -> FenceContext | None:
    """The ``FenceContext`` of the running request, feature or ``tenant_scope``, else ``None``."""
    return _CONTEXT.get()


def _structlog_vars() -> tuple[ContextVar[Any], ContextVar[Any], ContextVar[Any]]:
    # structlog keeps each bound key in its own ContextVar and hands it out in the tokens of
    # bind_contextvars. Setting and resetting those vars is exactly what bind_contextvars and
    # reset_contextvars do, without their per-call name building and dicts: this runs on every
    # request, where the whole middleware has a budget of a few microseconds.
    tokens = structlog.contextvars.bind_contextvars(tenant=..., feature=..., request_id=...)
    structlog.contextvars.reset_contextvars(**tokens)
    return tokens["tenant"].var, tokens["feature"].var, tokens["request_id"].var


_LOG_TENANT, _LOG_FEATURE, _LOG_REQUEST_ID = _structlog_vars()

ContextToken: TypeAlias = tuple[
    Token[FenceContext | None], Token[Any] | None, Token[Any] | None, Token[Any] | None
]
"""What ``push_context`` changed: the context, then structlog's ``tenant``, ``feature`` and
``request_id`` (``None`` where it was left alone)."""


_binding = True  # see bind_to_structlog


def bind_to_structlog(enabled: bool = True) -> None:
    """Whether contexts are bound in ``structlog.contextvars`` (the default: yes).

    Bound, the ``tenant``, ``feature`` and ``request_id`` of the current context are on every
    log line of a structlog configuration that has ``structlog.contextvars.merge_contextvars``
    (structlog's default has it), at the cost of three more context variables set and reset per
    request. ``bind_to_structlog(False)`` stops that: put ``add_fence_context`` among your
    structlog processors instead, which reads the context when a line is logged, so that a
    request sets one context variable only. Process-wide; call it at start-up.
    """
    global _binding
    _binding = bool(enabled)


def add_fence_context(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """A structlog processor: the current context's ``tenant``, ``feature`` and ``request_id``.

    Each is added when the context has it and the line does not set that key itself, as
    ``merge_contextvars`` adds the bound ones; a line outside any context gets none. Read when
    the line is logged, so it costs nothing per request (see ``bind_to_structlog``).
    """
    ctx = _CONTEXT.get()
    if ctx is not None:
        if ctx.tenant_id is not None:
            event_dict.setdefault("tenant", ctx.tenant_id)
        if ctx.feature is not None:
            event_dict.setdefault("feature", ctx.feature)
        if ctx.request_id is not None:
            event_dict.setdefault("request_id", ctx.request_id)
    return event_dict


def _unbind(var: ContextVar[Any]) -> Token[Any] | None:
    # structlog reads Ellipsis as "not bound": hide an outer binding of the key for the scope,
    # rather than print ``feature=None``; when there is none, there is nothing to do.
    return None if var.get() is ... else var.set(...)


def push_context(ctx: FenceContext) -> ContextToken:
    """Make ``ctx`` the current context and bind its fields for structlog.

    The structlog keys are ``tenant``, ``feature`` and ``request_id``; a ``None`` field is
    unbound for the duration (nothing is bound after ``bind_to_structlog(False)``). Always undo
    with ``pop_context`` in a ``finally`` of the same task or thread.
    """
    if not _binding:
        return (_CONTEXT.set(ctx), None, None, None)
    tenant, name, request_id = ctx.tenant_id, ctx.feature, ctx.request_id
    return (
        _CONTEXT.set(ctx),
        _LOG_TENANT.set(tenant) if tenant is not None else _unbind(_LOG_TENANT),
        _LOG_FEATURE.set(name) if name is not None else _unbind(_LOG_FEATURE),
        _LOG_REQUEST_ID.set(request_id) if request_id is not None else _unbind(_LOG_REQUEST_ID),
    )


def pop_context(token: ContextToken) -> None:
    """Restore the context and structlog bindings that ``push_context`` replaced."""
    context, tenant, feature_token, request_id = token
    if request_id is not None:
        _LOG_REQUEST_ID.reset(request_id)
    if feature_token is not None:
        _LOG_FEATURE.reset(feature_token)
    if tenant is not None:
        _LOG_TENANT.reset(tenant)
    _CONTEXT.reset(context)


def _push_feature(name: str) -> ContextToken:
    parent = _CONTEXT.get()
    ctx = FenceContext(None, name) if parent is None else parent.with_feature(name)
    return (_CONTEXT.set(ctx), None, _LOG_FEATURE.set(name) if _binding else None, None)


class TenantScope:
    """Charge the calls made inside it to a tenant: ``with`` and ``async with`` alike.

    Made by ``tenant_scope``. Entering returns the new ``FenceContext``; leaving restores the
    context that was current before (scopes nest). One scope object is entered once at a time.
    """

    __slots__ = ("_context", "_token")

    def __init__(self, context: FenceContext) -> None:
        self._context = context
        self._token: ContextToken | None = None

    @property
    def context(self) -> FenceContext:
        """The context this scope sets."""
        return self._context

    def __enter__(self) -> FenceContext:
        if self._token is not None:
            raise RuntimeError("this tenant_scope is already active; make a new one to nest")
        self._token = push_context(self._context)
        return self._context

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is not None:
            pop_context(token)
        self._settle_later()

    def _settle_later(self) -> None:
        """Settle what a sync exit left open, on the event loop of this thread when one runs
        (a plain ``with`` inside async code); without a loop, the holds' leases reclaim them."""
        ctx = self._context
        if not ctx.has_open_reservations:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            held = list(ctx.open_reservations)
            log.warning("scope_left_open", tenant=ctx.tenant_id, reservations=held)
            return
        task = loop.create_task(settle_context(ctx))
        _SETTLING.add(task)  # a strong reference until it is done
        task.add_done_callback(_SETTLING.discard)

    async def __aenter__(self) -> FenceContext:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._context.has_open_reservations:
                await settle_context(self._context)
        finally:
            token, self._token = self._token, None
            if token is not None:
                pop_context(token)


def tenant_scope(
    tenant_id: str, *, feature: str | None = None, request_id: str | None = None
) -> TenantScope:
    """A context manager (``with`` or ``async with``) charging calls inside it to ``tenant_id``.

    For work outside an HTTP request: jobs, queue workers, scripts. ``feature`` is not
    inherited from an outer context; ``request_id`` is, when not given (for log correlation).
    Ids are validated now: raises ``InvalidId`` for a bad tenant, feature or request id.
    """
    tenant = validate_id(tenant_id, what="tenant_id")
    feat = None if feature is None else validate_id(feature, what="feature")
    if request_id is None:
        outer = _CONTEXT.get()
        request_id = None if outer is None else outer.request_id
    else:
        validate_id(request_id, what="request_id")
    return TenantScope(FenceContext(tenant, feat, request_id))


def __getattr__(name: str) -> Any:
    """``feature`` and ``misplaced_feature``, at the path they were first documented at."""
    if name in ("feature", "misplaced_feature"):
        from tokenfence_asgi import endpoints

        return getattr(endpoints, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
