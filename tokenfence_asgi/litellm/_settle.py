"""Settling fenced LiteLLM calls: commit the cost, release on failure, charge abandoned streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from decimal import Decimal

import structlog

from tokenfence_asgi.context import FenceContext, current_context
from tokenfence_asgi.litellm._book import CallBook
from tokenfence_asgi.litellm._state import SYNC_CALLS, Call, mapping, served_by, tokens
from tokenfence_asgi.pricing.variants import hosted_calls, is_standard, reported_tier

__all__ = ["Settling"]

log = structlog.get_logger("tokenfence_asgi")

_GRACE_YIELDS = 50  # a finished call's success event is scheduled a few loop steps later
_WAIT_S = 5.0
_POLL_S = 0.005
_FORGET_AFTER_S = 3600.0


class Settling(CallBook):
    """Commit, release and end-of-request settlement (a base of the callback)."""

    def _register(self, call: Call) -> None:
        while self._calls:  # oldest first; one whose lease ran out long ago is forgotten
            rid, old = next(iter(self._calls.items()))
            if call.created - old.created < _FORGET_AFTER_S:
                break
            del self._calls[rid]
            if old.call_id is not None:
                self._by_call_id.pop(old.call_id, None)
        self._calls[call.reservation.id] = call
        if call.call_id is not None:
            self._by_call_id[call.call_id] = call
        sync_calls = SYNC_CALLS.get()
        if sync_calls is not None:
            sync_calls.append(call)
        if call.ctx is not None:
            call.ctx.track(call.reservation)
            on_end = getattr(call.ctx, "on_end", None)  # the settle hook, where the context has one
            if on_end is not None:
                on_end(self.settle)

    async def _charge(self, call: Call) -> None:
        """Commit an answered call now (before its error reaches the caller)."""
        if call.state == "open":
            call.state = "settling"
            await self._charge_response(call)

    def _cost(
        self,
        call: Call,
        response_cost: object,
        input_tokens: int,
        output_tokens: int,
        response: object = None,
    ) -> Decimal | None:
        """The cost of an answered call: the price book's ``actual_cost``; for a call that
        asked for a costlier tier, was served at another, or offered hosted tools, at least the
        price book's price of the tier served (else asked) plus the hosted tool calls the
        response reports (LiteLLM's own cost may not count them; a configured price wins)."""
        estimate = call.estimate
        cost = self.prices.actual_cost(
            estimate.model,
            response_cost=response_cost,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            units=estimate.units,
            characters=estimate.characters,
            deployment=estimate.price,
        )
        served = served_by(response)
        tier = reported_tier(served) or estimate.tier
        if is_standard(tier) and estimate.tier is None and not estimate.tool_fees:
            return cost  # LiteLLM's cost of a standard (or cheaper) tier, as for any call
        price = self.planner.served_price(estimate, tier)
        priced = price.cost(
            input_tokens, output_tokens, units=estimate.units, characters=estimate.characters
        ) + estimate.hosted_cost(hosted_calls(served))
        if self.prices.override(estimate.model) is not None or cost is None:
            return priced
        return max(cost, priced)

    async def _fail(self, call: Call, kwargs: Mapping[str, object]) -> None:
        cost = kwargs.get("response_cost")
        if isinstance(cost, int | float) and not isinstance(cost, bool) and cost > 0:
            input_tokens, output_tokens = tokens(kwargs, None)
            await self._settle_with(call, Decimal(str(cost)), input_tokens, output_tokens)
        elif call.chunks > 0:  # a stream that broke after it produced: what it produced
            await self._settle_abandoned(call)
        else:
            await self._settle_with(call, None, 0, 0, release=True)

    async def _settle_with(
        self,
        call: Call,
        cost: Decimal | None,
        input_tokens: int,
        output_tokens: int,
        *,
        release: bool = False,
    ) -> None:
        """Commit ``cost`` (the hold when ``None``) or release; then forget the call."""
        reservation = call.reservation
        try:
            if release:
                await self.fence.release(reservation)
            else:
                if cost is None:
                    log.warning(
                        "cost_unknown",
                        reservation=reservation.id,
                        model=call.estimate.model,
                        charged=str(reservation.amount),
                    )
                    cost = reservation.amount
                answered = getattr(call.response, "model", None)
                await self.fence.commit_soon(
                    reservation,
                    cost,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    model=answered if isinstance(answered, str) else call.estimate.model,
                    request_id=None if call.ctx is None else call.ctx.request_id,
                )
        except asyncio.CancelledError:
            call.state = "open"  # let settle() try again
            raise
        except Exception as exc:
            # LiteLLM swallows what a callback raises, so say it here; the hold stays until
            # its lease runs out.
            log.error(
                "settle_failed",
                tenant=reservation.tenant_id,
                reservation=reservation.id,
                error=repr(exc),
            )
        call.state = "done"
        call.done.set()
        self._calls.pop(reservation.id, None)
        if call.call_id is not None:
            self._by_call_id.pop(call.call_id, None)
        if call.ctx is not None:
            call.ctx.untrack(reservation.id)

    async def settle(self, ctx: FenceContext | None = None) -> None:
        """Settle the calls this callback made in ``ctx`` (default: the current one) and left open.

        For the end of a request or ``tenant_scope``. A call answered but not yet charged is
        charged its LiteLLM cost; a stream abandoned after it produced output is charged its
        input and the output streamed so far; a call that produced nothing (cancelled, or
        abandoned before its first chunk) is released. A call still running in another task
        is left to its own events.
        """
        ctx = current_context() if ctx is None else ctx
        if ctx is None:
            return
        for rid in list(ctx.open_reservations):
            call = self._calls.get(rid)
            if call is not None:
                await self._settle(call)

    async def _settle(self, call: Call, produced_text: str | None = None) -> None:
        task = call.task
        if (
            call.state == "open"
            and not call.stream
            and call.response is None
            and task
            and not task.done()
            and task is not asyncio.current_task()
        ):
            return
        if call.state == "open" and produced_text is None and call.finished:
            # the stream reached its end: LiteLLM's success event, with the provider's usage,
            # is on its way (a task it scheduled); wait for it rather than count
            for _ in range(int(_WAIT_S / _POLL_S)):
                if call.state != "open":
                    break
                await asyncio.sleep(_POLL_S)
        elif call.state == "open" and produced_text is None and call.produced():
            for _ in range(_GRACE_YIELDS):  # its success event may be one step away
                await asyncio.sleep(0)
                if call.state != "open":
                    break
        if call.state != "open":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.done.wait(), _WAIT_S)
            return
        call.state = "settling"
        if produced_text is not None and len(produced_text) > len(call.streamed_text):
            call.streamed_text = produced_text
        if call.response is not None:
            await self._charge_response(call)
        elif call.produced() or produced_text:
            await self._settle_abandoned(call)
        else:
            log.info("call_abandoned", reservation=call.reservation.id)
            await self._settle_with(call, None, 0, 0, release=True)

    async def _settle_abandoned(self, call: Call) -> None:
        """Charge a stream that stopped early: its input, and the output it streamed.

        The output counted is the larger of the tokens of the text streamed so far (LiteLLM's
        tokenizer for the model) and the chunks seen (a chunk with no text, a tool call's
        arguments, counts as one token), times the choices asked for; never more than the hold.
        A stream LiteLLM gives no per-chunk view of (the Responses API) is charged its hold.
        """
        estimate = call.estimate
        if not call.observed:  # no view of what it streamed (the Responses API): its hold
            log.warning(
                "stream_abandoned",
                reservation=call.reservation.id,
                charged=str(call.reservation.amount),
                counted=False,
            )
            await self._settle_with(
                call,
                call.reservation.amount,
                estimate.input_tokens,
                estimate.output_tokens * estimate.choices,
            )
            return
        produced = max(self.prices.text_tokens(estimate.model, call.streamed_text), call.chunks)
        if produced == 0:  # started (the provider answered) but no chunk reached the caller
            produced = 1
        output_tokens = min(produced * estimate.choices, estimate.output_tokens * estimate.choices)
        cost = min(estimate.cost_of(output_tokens), call.reservation.amount)
        log.info(
            "stream_abandoned",
            reservation=call.reservation.id,
            charged=str(cost),
            output_tokens=output_tokens,
        )
        await self._settle_with(call, cost, estimate.input_tokens, output_tokens)

    async def _charge_response(self, call: Call) -> None:
        hidden = mapping(getattr(call.response, "_hidden_params", None))
        input_tokens, output_tokens = tokens({}, call.response)
        cost = self._cost(
            call, hidden.get("response_cost"), input_tokens, output_tokens, call.response
        )
        await self._settle_with(call, cost, input_tokens, output_tokens)
