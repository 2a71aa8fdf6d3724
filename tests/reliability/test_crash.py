"""A worker process SIGKILLed while it holds 50 reservations (and while it is committing).

Its holds stay on the budget until their lease (``hold_ttl``) runs out; then every cent is
available again, to the nano-dollar, and nothing it committed is counted twice: the ledger has
each charged reservation once and the counters equal the ledger.
"""

from __future__ import annotations

import asyncio
import math
import time
from decimal import Decimal
from typing import Any

import pytest

from tests.reliability.conftest import Workers
from tests.reliability.figures import record
from tests.reliability.servers import drop_prefix
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import BudgetExceeded, InvalidId
from tokenfence_asgi.money import from_nanos, to_nanos
from tokenfence_asgi.results import Reservation

pytestmark = pytest.mark.slow

PLAN = Plan("crash", [Limit("1d", max_cost="10")])
TENANT = "crash-tenant"
HOLD_S = 2.0
HOLDS = 50


async def _hold_then_spin(url: str, prefix: str, conn: Any) -> None:
    fence = TokenFence(
        redis_url=url,
        prefix=prefix,
        plans=[PLAN],
        default_plan="crash",
        hold_ttl=HOLD_S,
        timeout_s=5,
    )
    committed = []
    for n in range(10):
        r = await fence.reserve(TENANT, "0.05", reservation_id=f"c{n}")
        cost = 10_000_000 + n  # nanos
        await fence.commit(r, from_nanos(cost))
        assert (await fence.commit(r, from_nanos(cost))).duplicate  # a retry charges nothing
        committed.append((r.id, cost))
    holds = [
        await fence.reserve(TENANT, from_nanos(20_000_000 + n), reservation_id=f"h{n}")
        for n in range(HOLDS)
    ]
    conn.send({"committed": committed, "holds": [(h.id, h.amount_nanos) for h in holds]})
    n = 0
    while True:  # reserve and commit until killed: the kill lands in the middle of calls
        r = await fence.reserve(TENANT, "0.001", reservation_id=f"s{n}")
        await fence.commit(r, "0.0005")
        n += 1


def _worker(url: str, prefix: str, conn: Any) -> None:
    asyncio.run(_hold_then_spin(url, prefix, conn))


async def test_sigkilled_worker_holds_come_back_after_the_lease(
    redis_url: str, prefix: str, workers: Workers
) -> None:
    parent, child = workers.ctx.Pipe()
    proc = workers.start(_worker, redis_url, prefix, child)
    fence = TokenFence(
        redis_url=redis_url,
        prefix=prefix,
        plans=[PLAN],
        default_plan="crash",
        hold_ttl=HOLD_S,
        timeout_s=5,
    )
    try:
        ready = await asyncio.to_thread(parent.poll, 120)
        assert ready, "the worker did not report"
        report = parent.recv()
        held_nanos = sum(amount for _, amount in report["holds"])
        await asyncio.sleep(0.2)  # let it commit a few more
        proc.kill()  # SIGKILL: no cleanup of any kind runs in the worker
        killed_at = time.monotonic()
        await asyncio.to_thread(proc.join, 10)

        status = await fence.status(TENANT)
        assert to_nanos(status.held) >= held_nanos  # the dead worker's holds still count
        limit = to_nanos(status.windows[0].limit or 0)
        with pytest.raises(BudgetExceeded):  # so the whole budget is not available yet
            await fence.reserve(TENANT, from_nanos(limit - to_nanos(status.windows[0].used)))

        await asyncio.sleep(HOLD_S + 0.2)  # the lease runs out
        calls = 0
        while True:  # each call reclaims at most reclaim_batch (16) expired holds
            calls += 1
            status = await fence.status(TENANT)
            if status.held == 0:
                break
            assert calls <= math.ceil((HOLDS + 1) / 16)
        available_at = time.monotonic()
        (window,) = status.windows
        assert (window.held, status.open_holds) == (0, 0)
        rest = limit - to_nanos(window.used)
        with pytest.raises(BudgetExceeded):
            await fence.reserve(TENANT, from_nanos(rest + 1))
        everything = await fence.reserve(TENANT, from_nanos(rest))  # every nano-dollar is back
        await fence.release(everything)

        records = [r async for r in fence.usage_records(tenant_id=TENANT)]
        ids = [r.id for r in records]
        assert len(ids) == len(set(ids)), "a reservation was charged twice"
        assert sum(r.cost_nanos for r in records) == to_nanos(window.used)
        for rid, cost in report["committed"]:
            assert [r.cost_nanos for r in records if r.id == rid] == [cost]
        assert not {rid for rid, _ in report["holds"]} & set(ids)  # expired, never charged

        # A reconciler that learns one of the dead worker's calls did cost something: the late
        # commit charges once, its repeat nothing; the expired id cannot be held again.
        rid, amount = report["holds"][0]
        dead = Reservation(rid, TENANT, None, None, from_nanos(amount), amount, "crash")
        late = await fence.commit(dead, "0.01")
        assert (late.late, late.duplicate) == (True, False)
        assert (await fence.commit(dead, "0.01")).duplicate
        with pytest.raises(InvalidId, match="already used"):
            await fence.reserve(TENANT, "0.01", reservation_id=rid)
        assert (await fence.status(TENANT)).windows[0].used == window.used + Decimal("0.01")

        record(
            "crash_sigkill",
            holds=HOLDS,
            held_usd=str(from_nanos(held_nanos)),
            hold_ttl_s=HOLD_S,
            budget_back_after_kill_s=round(available_at - killed_at, 3),
            reclaiming_calls=calls,
            commits_before_kill=len(ids),
            charged_twice=0,
        )
    finally:
        await fence.aclose()
        await asyncio.to_thread(drop_prefix, redis_url, prefix)
