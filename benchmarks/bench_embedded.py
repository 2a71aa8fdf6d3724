"""The embedded store (in-process fakeredis with real Lua) beside real Redis, in one run.

The same plan and the same load on both: 64 concurrent tasks in one process, each making
reserve + commit pairs on its own tenant. The two stores are measured in turns (Redis,
embedded, Redis, ...), so drift on the machine hits both alike, and
``embedded_pairs_per_s_over_redis_pairs_per_s`` is the median of the per-turn ratios. With real
Redis, most of a pair's time is the client's own Python; with the embedded store the scripts
also run in this process, through fakeredis's Python commands.

``python -m benchmarks.bench_embedded [--quick] [--redis-url URL]`` prints a table, then one
JSON line. ``run`` is a coroutine function.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from typing import Any

from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence

PLAN = Plan(
    "bench",
    [Limit("1d", max_cost="1000000", max_requests=10**9), Limit("1mo", max_cost="4000000")],
)
TASKS = 64


async def _pairs_per_s(fence: TokenFence, per_task: int, turn: int) -> float:
    async def worker(w: int) -> None:
        for _ in range(per_task):
            r = await fence.reserve(f"tenant-{turn}-{w}", "0.0123", feature="chat")
            await fence.commit(r, "0.0101")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(TASKS)))
    return TASKS * per_task / (time.perf_counter() - t0)


async def run(redis_url: str, *, quick: bool) -> dict[str, Any]:
    turns, per_task = (2, 16) if quick else (4, 48)
    prefix = f"tfbench{uuid.uuid4().hex[:8]}"
    redis = TokenFence(redis_url=redis_url, plans=[PLAN], default_plan="bench", prefix=prefix)
    embedded = TokenFence(plans=[PLAN], default_plan="bench")
    rates: dict[str, list[float]] = {"redis": [], "embedded": []}
    try:
        for fence in (redis, embedded):  # warm up: connections, script caches
            await _pairs_per_s(fence, 2, -1)
        for turn in range(turns):
            rates["redis"].append(await _pairs_per_s(redis, per_task, turn))
            rates["embedded"].append(await _pairs_per_s(embedded, per_task, turn))
    finally:
        client = redis._store.client
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            await client.delete(key)
        await redis.aclose()
        await embedded.aclose()
    ratios = [e / r for e, r in zip(rates["embedded"], rates["redis"], strict=True)]
    return {
        "embedded_pairs_per_s_64_tasks": round(statistics.median(rates["embedded"])),
        "redis_pairs_per_s_64_tasks": round(statistics.median(rates["redis"])),
        "embedded_pairs_per_s_over_redis_pairs_per_s": round(statistics.median(ratios), 3),
    }


def main() -> None:
    from benchmarks.__main__ import run_alone

    run_alone("python -m benchmarks.bench_embedded", lambda url, quick: run(url, quick=quick))


if __name__ == "__main__":
    main()
