"""Four OS processes share one budget on real Redis and never overspend it."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
from decimal import Decimal
from typing import Any

import pytest

from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import BudgetExceeded
from tokenfence_asgi.money import to_nanos

PLAN = Plan("shared", [Limit("1d", max_cost="3.00"), Limit("1mo", max_cost="100")])


async def _spend(url: str, prefix: str, seed: int, start: Any) -> tuple[int, int]:
    """Reserve and commit random amounts until refused 20 times; return (committed nanos, calls)."""
    rng = random.Random(seed)
    fence = TokenFence(
        redis_url=url, prefix=prefix, plans=[PLAN], default_plan="shared", timeout_s=5
    )
    committed = calls = refusals = 0
    try:
        await fence.ping()  # connected and scripts loaded before the race starts
        await asyncio.to_thread(start.wait, 60)
        while refusals < 20:
            estimate = Decimal(rng.randint(1, 50_000_000)) / 10**9  # up to $0.05
            try:
                r = await fence.reserve("shared-tenant", estimate, feature="chat")
            except BudgetExceeded:
                refusals += 1
                continue
            await asyncio.sleep(0)
            if rng.random() < 0.1:
                await fence.release(r)
                continue
            actual = estimate * Decimal(rng.randint(50, 100)) / 100
            settled = await fence.commit(r, actual)
            committed += to_nanos(settled.cost)
            calls += 1
    finally:
        await fence.aclose()
    return committed, calls


def _worker(
    url: str, prefix: str, seed: int, start: Any, queue: multiprocessing.Queue[tuple[int, int]]
) -> None:
    queue.put(asyncio.run(_spend(url, prefix, seed, start)))


@pytest.mark.slow
async def test_four_processes_never_overspend_one_budget(redis_url: str, prefix: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[tuple[int, int]] = ctx.Queue()
    start = ctx.Barrier(4)
    procs = [
        ctx.Process(target=_worker, args=(redis_url, prefix, seed, start, queue))
        for seed in range(4)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    fence = TokenFence(redis_url=redis_url, prefix=prefix, plans=[PLAN], default_plan="shared")
    try:
        status = await fence.status("shared-tenant")
    finally:
        client = fence._store.client
        async for key in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(key)
        await fence.aclose()
    day = status.windows[0]
    total = sum(committed for committed, _ in results)
    assert all(calls > 0 for _, calls in results), results
    assert day.held == 0
    assert to_nanos(day.used) == total  # every commit counted once, to the nano-dollar
    assert day.used <= Decimal("3.00")  # never overspent
    # and the budget was really used up: a refusal needs used + 4 open holds of at most
    # $0.05 each + the estimate > $3, so used > $2.75 by the first one
    assert day.used > Decimal("2.75")
