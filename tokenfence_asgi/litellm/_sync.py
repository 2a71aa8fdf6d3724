"""Sync LiteLLM calls: fenced through ``completion``, or charged after the fact.

No hook of LiteLLM 1.110.2 can refuse a sync ``litellm.completion`` (measured: the deployment
hook is async-only; ``log_pre_api_call`` and ``input_callback`` run on the caller's thread but
LiteLLM logs and swallows what they raise). So ``TokenFenceCallback.completion`` runs
``acompletion`` through the same hooks on an event loop, and a plain sync call made for a tenant
is noted on the caller's thread (``log_pre_api_call``) and charged once it is answered
(``log_success_event``, on LiteLLM's logging thread), on the loop that owns the fence's
connections, and counted in ``counters.charged_unfenced``.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import litellm
import structlog

from tokenfence_asgi.engine.portal import caller_loop
from tokenfence_asgi.errors import TokenFenceError
from tokenfence_asgi.litellm._settle import Settling
from tokenfence_asgi.litellm._state import SYNC_CALLS, Call, mapping, reservation_id, tokens

__all__ = ["SyncCalls"]

log = structlog.get_logger("tokenfence_asgi")

T = TypeVar("T")

_MAX_SYNC_OWNERS = 10_000
_WAIT_S = 5.0


class SyncCalls(Settling):
    """The sync entry points of the callback (a base of it)."""

    _sync_owners: dict[str, tuple[str, str | None, str | None, asyncio.AbstractEventLoop | None]]

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: dict[str, Any]) -> None:
        """Note who a sync call made for a tenant is for (its caller's thread): no LiteLLM hook
        can refuse it, so it is charged after the fact (see the class)."""
        call_type = kwargs.get("call_type")
        if not isinstance(call_type, str) or call_type.startswith("a") or reservation_id(kwargs):
            return
        call_id = kwargs.get("litellm_call_id")
        metadata = mapping(mapping(kwargs.get("litellm_params")).get("metadata"))
        try:
            tenant, feature, ctx = self._who(metadata)
        except TokenFenceError:
            tenant, feature, ctx = None, None, None
        if tenant is None or not isinstance(call_id, str):
            return
        if len(self._sync_owners) >= _MAX_SYNC_OWNERS:
            self._sync_owners.pop(next(iter(self._sync_owners)))
        request_id = None if ctx is None else ctx.request_id
        self._sync_owners[call_id] = (tenant, feature, request_id, caller_loop())
        log.warning(
            "sync_call_not_fenced",
            tenant=tenant,
            model=model,
            call_type=call_type,
            hint="use TokenFenceCallback.completion for a fenced sync call",
        )

    def log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Charge a sync call made for a tenant after the fact (LiteLLM's sync event)."""
        call_id = kwargs.get("litellm_call_id")
        owner = self._sync_owners.pop(call_id, None) if isinstance(call_id, str) else None
        if owner is None:
            return
        tenant, feature, request_id, loop = owner
        model = kwargs.get("model")
        model = model if isinstance(model, str) else ""
        input_tokens, output_tokens = tokens(kwargs, response_obj)
        priced_by_call = any("cost_per" in key for key in mapping(kwargs.get("litellm_params")))
        cost = self.prices.actual_cost(
            model,
            response_cost=None if priced_by_call else kwargs.get("response_cost"),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )
        if cost is None:
            log.error("sync_call_not_charged", tenant=tenant, model=model, reason="no price")
            return

        async def charge() -> None:
            await self.fence.charge(
                tenant,
                cost,
                feature=feature,
                model=model,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                request_id=request_id,
            )

        try:
            if loop is not None and loop.is_running():  # the loop the fence's connections use
                asyncio.run_coroutine_threadsafe(charge(), loop).result(timeout=_WAIT_S)
            else:
                self._portal.run(charge, None)
        except Exception as exc:
            log.error("sync_call_not_charged", tenant=tenant, model=model, error=repr(exc))

    def log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Forget a failed sync call (LiteLLM's sync event)."""
        call_id = kwargs.get("litellm_call_id")
        if isinstance(call_id, str):
            self._sync_owners.pop(call_id, None)

    def completion(self, *args: Any, router: Any = None, **kwargs: Any) -> Any:
        """``litellm.completion`` (or ``router.completion``), fenced: for sync code.

        Sync ``completion`` runs no LiteLLM hook that can both refuse and change a call (the
        deployment hook is async-only; ``log_pre_api_call`` swallows exceptions), so this runs
        ``acompletion`` instead, through the same hooks, on an event loop: the app's own from
        a worker thread of a sync FastAPI/Starlette endpoint, else the loop of the last fenced
        async call, else a private loop thread. Returns when the call is charged; a stream is
        a sync iterator, charged when exhausted or, when closed early, for what it produced.
        Raises ``RuntimeError`` on a thread running an event loop (await ``acompletion``).
        """
        acompletion = litellm.acompletion if router is None else router.acompletion
        context = contextvars.copy_context()
        response, calls = self._portal.run(lambda: self._acall(acompletion, args, kwargs), context)
        if not kwargs.get("stream"):
            return response
        return self._iterate(response, calls)

    def run_sync(self, function: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``await function(*args, **kwargs)`` from sync code, where ``completion`` would.

        For the fence itself in a sync program: ``callback.run_sync(fence.status, "acme")``.
        """
        return self._portal.run(lambda: function(*args, **kwargs), contextvars.copy_context())

    async def _acall(
        self, acompletion: Callable[..., Awaitable[Any]], args: Sequence[Any], kwargs: Any
    ) -> tuple[Any, list[Call]]:
        calls: list[Call] = []
        token = SYNC_CALLS.set(calls)
        try:
            response = await acompletion(*args, **kwargs)
        finally:
            SYNC_CALLS.reset(token)
        if not kwargs.get("stream"):
            for call in calls:
                await self._settle(call)
        return response, calls

    def _iterate(self, stream: Any, calls: list[Call]) -> Iterator[Any]:
        text: list[str] = []
        finished = False
        try:
            while True:
                try:
                    chunk = self._portal.run(stream.__anext__, None)
                except StopAsyncIteration:
                    finished = True
                    return
                for choice in getattr(chunk, "choices", None) or ():
                    content = getattr(getattr(choice, "delta", None), "content", None)
                    if isinstance(content, str):
                        text.append(content)
                yield chunk
        finally:
            produced = None if finished else "".join(text)

            async def end() -> None:
                if not finished:
                    await stream.aclose()
                for call in calls:
                    await self._settle(call, produced)

            try:
                self._portal.run(end, None)
            except RuntimeError:  # closed by the garbage collector on a loop's thread
                log.warning("stream_not_settled", reservations=[c.reservation.id for c in calls])

    def close(self) -> None:
        """Stop the private loop thread of sync calls, if one was started."""
        self._portal.close()
