"""One guarded SDK call, from its reservation to its settlement (shared by both SDKs).

``Fenced`` is the state a guarded client carries: the fence, the tenant and feature it was
given, and the SDK's ``Adapter`` (what a path costs, how a body is bounded and rewritten, where
usage is). For each paid request it:

1. resolves the tenant (the guard's, else the request's or ``tenant_scope``'s; else
   ``TenantRequired``) and hands the call to the ``CallPlanner``: the plan's rules, the true
   upper bound, one reserve; the body is then rewritten to what was reserved (model, output
   limit, tools, ``include_usage`` for a chat stream);
2. after the SDK returns, commits the provider's usage at the price book's price, or releases
   the hold when the call failed before the provider answered; then checks the tools the
   answer calls against the policy (``PolicyDenied``, ``ApprovalRequired``);
3. for a stream, commits when its usage arrives or it ends; a stream abandoned midway (closed,
   or still open when its request or scope ends) is charged its input and the output it
   produced (never more than the hold).

A paid response whose usage cannot be read is charged the whole hold, never nothing.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal, Protocol

import anyio
import structlog

from tokenfence_asgi.calls.planner import CallPlanner, CallRequest, PlannedCall
from tokenfence_asgi.context import FenceContext, current_context
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import PolicyDenied, TenantRequired, TokenFenceError
from tokenfence_asgi.pricing.call import OUTPUT_KINDS, CallKind, Estimate
from tokenfence_asgi.pricing.variants import Tier
from tokenfence_asgi.results import Reservation

__all__ = ["Adapter", "CallNotFenced", "Fenced", "GuardedCall", "Route", "Usage"]

log = structlog.get_logger("tokenfence_asgi")

Route = CallKind | Literal["free", "refuse"]
"""What a request is: a paid call of a kind, a free one, or one the guard cannot fence."""

_FORGET_AFTER_S = 3600.0


class CallNotFenced(PolicyDenied):
    """A guarded client was asked for a paid call the guard cannot bound (a batch, an agent
    run, a realtime socket, an endpoint it does not know): refused before anything is sent."""

    def __init__(self, what: str, *, tenant_id: str | None = None) -> None:
        super().__init__(what, tenant_id=tenant_id)
        self.message = (
            f"{what} cannot be fenced (its cost is not known before it runs); it is refused "
            "on a guarded client: make it with the unguarded client, on purpose"
        )
        self.args = (self.message,)


@dataclass(slots=True)
class Usage:
    """Tokens a provider reported for a call. ``input_tokens`` are those billed at the plain
    input price; cached input the provider reports apart is in ``cache_read_tokens``,
    ``cache_write_tokens`` (five-minute writes) and ``cache_write_1h_tokens``. ``tier`` is the
    service tier the provider says it served (``None``: it does not say), ``hosted`` the
    hosted tool calls it reports, by tool (``{"web_search": 2}``)."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    tier: Tier | None = None
    hosted: dict[str, int] = field(default_factory=dict)

    @property
    def all_input_tokens(self) -> int:
        """Every input token, cached or not (what the ledger records)."""
        return (
            self.input_tokens
            + self.cache_read_tokens
            + self.cache_write_tokens
            + self.cache_write_1h_tokens
        )


class Adapter(Protocol):
    """What the guard needs to know of one SDK (see ``guard.openai`` and ``guard.anthropic``)."""

    sdk: str

    def route(self, method: str, path: str) -> Route: ...

    def pinned_model(self, client: Any, path: str) -> str | None: ...

    def describe(self, kind: CallKind, body: Mapping[str, Any]) -> CallRequest: ...

    def rewrite(
        self, kind: CallKind, body: dict[str, Any], planned: PlannedCall, stream: bool
    ) -> bool: ...

    def usage(self, kind: CallKind, body: Mapping[str, Any]) -> Usage | None: ...

    def tool_calls(self, body: Mapping[str, Any]) -> list[str]: ...

    def stream_tool_calls(self, data: Any) -> list[str]: ...

    def on_event(self, call: GuardedCall, event: str | None, data: Any) -> bool: ...

    def error(self, exc: TokenFenceError, method: str, url: str) -> Exception: ...


@dataclass(slots=True, eq=False)
class GuardedCall:
    """One reserved call and what was seen of its answer (internal, mutable)."""

    reservation: Reservation
    estimate: Estimate
    kind: CallKind
    ctx: FenceContext | None
    strip_usage: bool = False  # drop the usage-only chunk the caller did not ask for
    usage: Usage | None = None  # the provider's final usage
    input_seen: Usage | None = None  # input reported before the end (Anthropic)
    output_seen: int = 0  # output tokens reported so far (Anthropic, cumulative)
    model: str | None = None  # the model that answered
    text: list[str] = field(default_factory=list)  # output streamed so far
    tool_calls: list[str] = field(default_factory=list)  # tools a JSON answer calls
    hosted_seen: dict[str, int] = field(default_factory=dict)  # hosted tool calls streamed
    chunks: int = 0
    observed: bool = False  # a successful response reached the SDK's parser
    streaming: bool = False  # its body is read later: the tap settles it
    sse: bool = False  # an event stream: stopped early, it is charged what it produced
    created: float = field(default_factory=time.monotonic)
    state: Literal["open", "settling", "done"] = "open"


class Fenced:
    """The fence state a guarded client (and its copies) carries; see the module doc."""

    __slots__ = ("_calls", "adapter", "feature", "fence", "planner", "tenant")

    def __init__(
        self, fence: TokenFence, adapter: Adapter, tenant: str | None, feature: str | None
    ) -> None:
        self.fence = fence
        self.adapter = adapter
        self.tenant = tenant
        self.feature = feature
        self.planner = CallPlanner(fence, fence.prices)
        self._calls: dict[str, GuardedCall] = {}

    def who(self) -> tuple[str, str | None, FenceContext | None]:
        """The tenant and feature a call is charged to, and the context it is made in."""
        ctx = current_context()
        if self.tenant is not None:
            feature = self.feature
            if feature is None and ctx is not None and ctx.tenant_id == self.tenant:
                feature = ctx.feature
            return self.tenant, feature, ctx
        if ctx is None:
            raise TenantRequired(
                "a guarded client made a paid call outside any request or tenant_scope; "
                "use it inside one, or pass tenant= to guard()"
            )
        tenant = ctx.require_tenant()
        return tenant, self.feature if self.feature is not None else ctx.feature, ctx

    # -- before the call -------------------------------------------------------------------------

    async def begin(
        self,
        kind: CallKind,
        body: dict[str, Any],
        stream: bool,
        pinned: str | None = None,
        window: int | None = None,
    ) -> GuardedCall:
        """Reserve the call's worst case and rewrite ``body`` to what was reserved.

        ``pinned`` is the model the client itself fixes whatever the body says (an Azure
        client made for one deployment): the call is priced, allowed and held as that model,
        and never downgraded. ``window`` is a larger context window its headers ask for (a
        beta, ``calls.shapes.beta_window``).
        """
        tenant, feature, ctx = self.who()
        request = self.adapter.describe(kind, body)
        if window is not None:
            request = replace(request, shape=replace(request.shape, window=window))
        if pinned is not None:
            request = CallRequest(
                pinned, request.shape, fixed_model=True, tool_choice=request.tool_choice
            )
        planned = await self.planner.reserve(request, tenant=tenant, feature=feature)
        strip = self.adapter.rewrite(kind, body, planned, stream)
        call = GuardedCall(planned.reservation, planned.estimate, kind, ctx, strip)
        self._register(call)
        return call

    def refuse(self, what: str) -> CallNotFenced:
        """The refusal of a paid request the guard cannot bound."""
        tenant = self.tenant
        if tenant is None:
            ctx = current_context()
            tenant = None if ctx is None else ctx.tenant_id
        log.warning("guard_call_refused", sdk=self.adapter.sdk, call=what, tenant=tenant)
        return CallNotFenced(what, tenant_id=tenant)

    def _register(self, call: GuardedCall) -> None:
        while self._calls:  # oldest first; one whose lease ran out long ago is forgotten
            rid, old = next(iter(self._calls.items()))
            if call.created - old.created < _FORGET_AFTER_S:
                break
            del self._calls[rid]
        self._calls[call.reservation.id] = call
        if call.ctx is not None:
            call.ctx.track(call.reservation)
            call.ctx.on_end(self.settle_context)

    # -- after the call --------------------------------------------------------------------------

    async def finish(self, call: GuardedCall) -> None:
        """The SDK returned: settle now, unless the body is still to be read (a stream)."""
        if call.streaming:
            return
        if not call.observed:
            log.warning(
                "guard_response_unseen",
                reservation=call.reservation.id,
                charged=str(call.reservation.amount),
            )
        await self.end(call)

    async def check_tools(self, call: GuardedCall) -> None:
        """Check the tools a charged JSON answer calls against the policy (see the planner's
        ``check_tool_calls``): ``PolicyDenied`` or ``ApprovalRequired`` after it is charged."""
        if call.tool_calls:
            await self.planner.check_tool_calls(call.reservation, call.tool_calls)

    async def fail(self, call: GuardedCall) -> None:
        """The SDK raised: release the hold, unless a response was read (then charge it)."""
        if call.observed:
            await self.end(call)
        elif call.state == "open":
            call.state = "settling"
            await self._settle(call, None, 0, 0, release=True)

    async def end(self, call: GuardedCall) -> None:
        """Settle from what was seen: the usage, else what a stream produced, else the hold."""
        if call.state != "open":
            return
        call.state = "settling"
        estimate, hold = call.estimate, call.reservation.amount
        usage = call.usage
        if usage is not None:
            cost = self._price(estimate, usage)
            await self._settle(call, cost, usage.all_input_tokens, usage.output_tokens)
        elif call.kind not in OUTPUT_KINDS:  # no usage to read: its units and characters
            cost = min(estimate.cost_of(0), hold)
            await self._settle(call, cost, estimate.input_tokens, 0)
        elif call.sse:
            await self._settle_produced(call)
        else:  # an answer whose usage cannot be read: the whole hold, never nothing
            if call.observed:
                log.warning(
                    "guard_usage_unknown", reservation=call.reservation.id, charged=str(hold)
                )
            await self._settle(call, hold, estimate.input_tokens, estimate.output_tokens)

    async def _settle_produced(self, call: GuardedCall) -> None:
        """Charge a stream that stopped before its usage: its input and the output it produced.

        The output counted is the larger of the tokens of the text streamed (the price book's
        counter), the events seen, and the output the provider reported so far; never more
        than the hold.
        """
        estimate = call.estimate
        produced = max(
            self.fence.prices.text_tokens(estimate.model, "".join(call.text)),
            call.chunks,
            call.output_seen,
            1,
        )
        output_tokens = min(produced, estimate.output_tokens * estimate.choices)
        seen = call.input_seen or Usage(estimate.input_tokens, 0)
        produced_usage = replace(seen, output_tokens=output_tokens, hosted=call.hosted_seen)
        cost = min(self._price(estimate, produced_usage), call.reservation.amount)
        log.info(
            "stream_abandoned",
            reservation=call.reservation.id,
            charged=str(cost),
            output_tokens=output_tokens,
        )
        await self._settle(call, cost, produced_usage.all_input_tokens, output_tokens)

    def _price(self, estimate: Estimate, usage: Usage) -> Decimal:
        """The usage at the price the estimate used (the price book's for the model and tier
        held), or at the tier the provider says it served when that differs; plus the hosted
        tool calls it reports, at their fees."""
        price = self.planner.served_price(estimate, usage.tier)
        return estimate.hosted_cost(usage.hosted) + price.cost(
            usage.input_tokens,
            usage.output_tokens,
            units=estimate.units,
            characters=estimate.characters,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
        )

    async def _settle(
        self,
        call: GuardedCall,
        cost: Decimal | None,
        input_tokens: int,
        output_tokens: int,
        *,
        release: bool = False,
    ) -> None:
        """Commit ``cost`` or release, shielded from cancellation; then forget the call."""
        reservation = call.reservation
        try:
            with anyio.CancelScope(shield=True):
                if release or cost is None:
                    await self.fence.release(reservation)
                else:
                    await self.fence.commit_soon(
                        reservation,
                        cost,
                        input_tokens=input_tokens,
                        output_tokens=output_tokens,
                        model=call.model or call.estimate.model,
                        request_id=None if call.ctx is None else call.ctx.request_id,
                    )
        except Exception as exc:
            # The caller has its answer (or its provider error): the hold stays until its
            # lease runs out, and the failure is said here.
            log.error(
                "settle_failed",
                tenant=reservation.tenant_id,
                reservation=reservation.id,
                error=repr(exc),
            )
        finally:
            call.state = "done"
            self._calls.pop(reservation.id, None)
            if call.ctx is not None:
                call.ctx.untrack(reservation.id)

    async def settle_context(self, ctx: FenceContext) -> None:
        """At the end of a request or scope: settle the streams it left open (abandoned)."""
        for rid in list(ctx.open_reservations):
            call = self._calls.get(rid)
            if call is not None and call.state == "open" and call.streaming:
                await self.end(call)

    # -- sync callers ----------------------------------------------------------------------------

    def run(
        self, work: Callable[[], Awaitable[Any]], context: contextvars.Context | None = None
    ) -> Any:
        """Run fence work for a sync client, on the fence's portal (see ``TokenFence.portal``)."""
        return self.fence.portal.run(work, context)
