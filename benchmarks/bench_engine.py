"""Engine round trips against real Redis, beside PING on the same client in the same run.

Per call, sequential in one process, interleaved with a PING each: the caller-visible engine
time of an LLM call (a reserve awaited, its commit queued with ``commit_soon``), then, after the
queue has sent it (``commits.flush()``, untimed: the commit lands while a real caller waits for
its provider), a reserve + commit both awaited. ``reserve_p50_over_ping_p50`` is the first over
PING; ``reserve_commit_p50_over_ping_p50`` the second. With 64 concurrent tasks: pairs/s (a
reserve, its commit queued; timed until every commit has landed) vs PINGs/s
(``engine_pairs_per_s_over_ping_per_s``), and the same with each commit awaited
(``engine_awaited_pairs_per_s_over_ping_per_s``). The ratios are what to compare between
machines.

``python -m benchmarks.bench_engine [--quick] [--redis-url URL]`` prints a table, then one JSON
line. ``run`` is a coroutine function.
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


def _pct(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


async def run(redis_url: str, *, quick: bool) -> dict[str, Any]:
    n = 2_000 if quick else 20_000
    prefix = f"tfbench{uuid.uuid4().hex[:8]}"
    fence = TokenFence(redis_url=redis_url, plans=[PLAN], default_plan="bench", prefix=prefix)
    client = fence._store.client  # the same client and pool for PING
    try:
        for _ in range(200):  # warm up: connections, script cache
            await client.ping()
            await fence.commit(await fence.reserve("warm", "0.01"), "0.005")

        pings: list[float] = []
        calls: list[float] = []
        pairs: list[float] = []
        for i in range(n):  # interleaved, so drift on the machine hits all alike
            tenant = f"tenant-{i % 100}"
            t0 = time.perf_counter()
            await client.ping()
            t1 = time.perf_counter()
            r = await fence.reserve(tenant, "0.0123", feature="chat")
            await fence.commit_soon(r, "0.0101", input_tokens=1000, output_tokens=200)
            t2 = time.perf_counter()
            await fence.commits.flush()  # lands while a real caller waits for its provider
            t3 = time.perf_counter()
            r = await fence.reserve(tenant, "0.0123", feature="chat")
            await fence.commit(r, "0.0101", input_tokens=1000, output_tokens=200)
            t4 = time.perf_counter()
            pings.append(t1 - t0)
            calls.append(t2 - t1)
            pairs.append(t4 - t3)

        async def ping_worker(count: int) -> None:
            for _ in range(count):
                await client.ping()

        async def pair_worker(w: int, count: int, queued: bool) -> None:
            for _ in range(count):
                r = await fence.reserve(f"tenant-{w}", "0.0123", feature="chat")
                if queued:
                    await fence.commit_soon(r, "0.0101")
                else:
                    await fence.commit(r, "0.0101")

        per_task = max(1, n // 64)
        t0 = time.perf_counter()
        await asyncio.gather(*(ping_worker(per_task) for _ in range(64)))
        ping_rate = 64 * per_task / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        await asyncio.gather(*(pair_worker(w, per_task, True) for w in range(64)))
        await fence.commits.flush()  # counted until the last commit has landed
        pair_rate = 64 * per_task / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        await asyncio.gather(*(pair_worker(w, per_task, False) for w in range(64)))
        awaited_rate = 64 * per_task / (time.perf_counter() - t0)
    finally:
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            await client.delete(key)
        await fence.aclose()

    return {
        "ping_p50_us": round(_pct(pings, 50) * 1e6, 1),
        "ping_p99_us": round(_pct(pings, 99) * 1e6, 1),
        "reserve_p50_us": round(_pct(calls, 50) * 1e6, 1),
        "reserve_p50_over_ping_p50": round(_pct(calls, 50) / _pct(pings, 50), 3),
        "reserve_commit_p50_us": round(_pct(pairs, 50) * 1e6, 1),
        "reserve_commit_p99_us": round(_pct(pairs, 99) * 1e6, 1),
        "reserve_commit_p50_over_ping_p50": round(_pct(pairs, 50) / _pct(pings, 50), 3),
        "reserve_commit_p99_over_ping_p99": round(_pct(pairs, 99) / _pct(pings, 99), 3),
        "pings_per_s_64_tasks": round(ping_rate),
        "pairs_per_s_64_tasks": round(pair_rate),
        "engine_pairs_per_s_over_ping_per_s": round(pair_rate / ping_rate, 3),
        "awaited_pairs_per_s_64_tasks": round(awaited_rate),
        "engine_awaited_pairs_per_s_over_ping_per_s": round(awaited_rate / ping_rate, 3),
    }


def main() -> None:
    from benchmarks.__main__ import run_alone

    run_alone("python -m benchmarks.bench_engine", lambda url, quick: run(url, quick=quick))


if __name__ == "__main__":
    main()
