"""Per-call time of ``litellm.acompletion(mock_response=...)`` with and without TokenFenceCallback.

Against real Redis: each fenced call is one reserve (awaited) and one commit (queued, sent in
the background, pipelined with others) plus the estimate (LiteLLM's token counter). The two
variants run in alternating batches (without, with; with, without; ...) after a warm-up, so
drift on the machine hits both alike; a batch is timed until its last commit landed (the
commits run on the same loop, so they are counted). ``litellm_callback_ratio`` is the median
of the per-round ratios; the target is at most 1.10. A third variant registers a callback that
does nothing: ``litellm_noop_callback_ratio`` is what LiteLLM's callback machinery costs by
itself.

``python -m benchmarks.bench_litellm [--quick] [--redis-url URL]`` prints a table, then one JSON
line. ``run`` is a coroutine function.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
import redis.asyncio as aioredis
from litellm.integrations.custom_logger import CustomLogger

from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.context import tenant_scope
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.litellm import TokenFenceCallback

PLAN = Plan("bench", [Limit("1d", max_cost="1000000", max_requests=10**9)])
MSGS = [{"role": "user", "content": "Summarise this support ticket in one sentence, please."}]


class NoopCallback(CustomLogger):
    """A callback that does nothing: what LiteLLM's callback machinery costs by itself."""

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        return None


async def _batch(calls: int, callback: CustomLogger | None) -> float:
    """Seconds per call for ``calls`` sequential mocked calls (with ``callback``, if any)."""
    if callback is None:
        litellm.callbacks = []
    else:
        litellm.callbacks = [callback]
    start = time.perf_counter()
    async with tenant_scope("bench-tenant", feature="chat") as ctx:
        for _ in range(calls):
            await litellm.acompletion(
                model="gpt-4o-mini", messages=MSGS, mock_response="A short answer.", max_tokens=64
            )
        if isinstance(callback, TokenFenceCallback):
            await callback.settle(ctx)
            await callback.fence.commits.flush()  # the last commit is in
    elapsed = time.perf_counter() - start
    if callback is not None:
        litellm.logging_callback_manager.remove_callback_from_all_lists(callback)
    return elapsed / calls


async def run(redis_url: str, *, quick: bool) -> dict[str, float]:
    """Time both variants in alternating rounds; return ms per call and the ratio."""
    rounds, calls = (8, 25) if quick else (30, 50)
    prefix = f"tfbench{uuid.uuid4().hex[:8]}"
    fence = TokenFence(redis_url=redis_url, plans=[PLAN], default_plan="bench", prefix=prefix)
    callback = TokenFenceCallback(fence)
    noop = NoopCallback()
    saved = list(litellm.callbacks)
    plain: list[float] = []
    fenced: list[float] = []
    ratios: list[float] = []
    noop_ratios: list[float] = []
    try:
        await _batch(calls, None)  # warm up: imports, connections, script cache, tokenizer
        await _batch(calls, callback)
        await _batch(calls, noop)
        for i in range(rounds):
            variants: dict[str, CustomLogger | None] = {
                "plain": None,
                "fenced": callback,
                "noop": noop,
            }
            order = list(variants) if i % 2 == 0 else list(variants)[::-1]
            times = {name: await _batch(calls, variants[name]) for name in order}
            plain.append(times["plain"])
            fenced.append(times["fenced"])
            ratios.append(times["fenced"] / times["plain"])
            noop_ratios.append(times["noop"] / times["plain"])
        status = await fence.status("bench-tenant")
        if status.held != 0:
            raise RuntimeError(f"holds left open after the benchmark: {status.held}")
    finally:
        litellm.callbacks = saved
        await fence.aclose()
        client = aioredis.Redis.from_url(redis_url)
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            await client.delete(key)
        await client.aclose()
    return {
        "litellm_plain_ms": round(statistics.median(plain) * 1000, 3),
        "litellm_fenced_ms": round(statistics.median(fenced) * 1000, 3),
        "litellm_callback_ratio": round(statistics.median(ratios), 3),
        "litellm_noop_callback_ratio": round(statistics.median(noop_ratios), 3),
    }


def main() -> None:
    from benchmarks.__main__ import run_alone

    run_alone("python -m benchmarks.bench_litellm", lambda url, quick: run(url, quick=quick))


if __name__ == "__main__":
    main()
