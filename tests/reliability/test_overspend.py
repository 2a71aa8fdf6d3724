"""Overspend under load: 4 processes x 100 concurrent callers through the full stack (uvicorn +
TokenFenceMiddleware + the LiteLLM callback + a fake provider over HTTP) on one tenant's budget,
on the shared Redis under a prefix of this test's own.

- **actual <= estimate** (the provider bills less than the hold): the total committed never
  exceeds the limit, to the nano-dollar.
- **actual > estimate** (the provider bills 1000 prompt tokens where ~10 were counted): the
  overrun is bounded. Stated bound: if the last reservation admitted was admitted at time s,
  then ``used <= limit + sum(max(0, actual_i - estimate_i))`` over the calls still open at s
  (at s, ``used + held + estimate <= limit``; only those calls charge after it). The test
  over-approximates "open at s" by "settled after the latest moment any admitted reserve
  script was sent", so the bound it checks is sound, and also checks the cruder
  ``overrun <= concurrent callers x the largest per-call overrun``.

Either way every call is charged exactly once (ledger ids unique, counters == ledger) and a
refused call never reaches the provider.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import pytest

from tests.reliability.conftest import Workers
from tests.reliability.figures import record
from tests.reliability.llm_load import PHASES, llm_worker
from tests.reliability.servers import drop_prefix
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.money import from_nanos, to_nanos

pytestmark = pytest.mark.slow

PROCESSES = 4
CALLERS = 100
LIMIT = Decimal("0.005")
PLAN = Plan("load", [Limit("1d", max_cost=LIMIT)])


async def _store_view(url: str, prefix: str, tenant: str) -> tuple[int, int, list[Any]]:
    fence = TokenFence(redis_url=url, prefix=prefix, plans=[PLAN], default_plan="load", timeout_s=5)
    try:
        status = await fence.status(tenant)
        records = [r async for r in fence.usage_records(tenant_id=tenant)]
        return to_nanos(status.windows[0].used), to_nanos(status.held), records
    finally:
        await fence.aclose()


def test_four_processes_of_100_callers_through_the_full_stack(
    redis_url: str, prefix: str, workers: Workers
) -> None:
    tenants = {phase: f"load-{phase}" for phase in PHASES}
    queue, ready = workers.ctx.Queue(), workers.ctx.Queue()
    go = {phase: workers.ctx.Event() for phase in PHASES}
    for _ in range(PROCESSES):
        workers.start(llm_worker, redis_url, prefix, PLAN, tenants, CALLERS, ready, go, queue)
    took: dict[str, float] = {}
    try:
        for phase in PHASES:  # every worker is ready (LiteLLM imported, servers up): go
            assert workers.results(ready, PROCESSES, timeout=600) == [phase] * PROCESSES
            took[phase] = time.monotonic()
            go[phase].set()
        results = workers.results(queue, PROCESSES, timeout=600)
        took["end"] = time.monotonic()
        limit = to_nanos(LIMIT)
        figures: dict[str, Any] = {}
        for phase in PHASES:
            reserved: dict[str, tuple[int, float, float]] = {}
            settled: dict[str, tuple[int, float, bool, bool]] = {}
            statuses: dict[str, int] = {}
            provider_calls = 0
            for result in results:
                reserved.update(result["reserved"][phase])
                settled.update(result["settled"][phase])
                provider_calls += result["provider_calls"][phase]
                for key, n in result["statuses"][phase].items():
                    statuses[key] = statuses.get(key, 0) + n
                assert result["store_errors"] == 0
            assert set(statuses) <= {"200", "402:ai_budget_exceeded"}, statuses
            assert provider_calls == len(reserved)  # a refused call never reached the provider
            assert set(settled) == set(reserved)
            used, held, records = asyncio.run(_store_view(redis_url, prefix, tenants[phase]))
            ids = [r.id for r in records]
            assert len(ids) == len(set(ids)), "a call was charged twice"
            assert held == 0
            charged = {rid: cost for rid, (cost, _, _, _) in settled.items() if cost}
            assert {r.id: r.cost_nanos for r in records} == charged
            assert used == sum(charged.values())
            overruns = {rid: cost - reserved[rid][0] for rid, cost in charged.items()}
            if phase == "under":
                assert max(overruns.values()) <= 0  # the phase's premise: actual <= estimate
                assert used <= limit  # never overspent, to the nano-dollar
                bound = 0
            else:
                assert min(overruns.values()) > 0  # the phase's premise: actual > estimate
                last_admission = max(sent for _, sent, _ in reserved.values())
                open_then = [rid for rid, (_, at, _, _) in settled.items() if at > last_admission]
                bound = sum(max(0, overruns.get(rid, 0)) for rid in open_then)
                assert used - limit <= bound
                assert used - limit <= PROCESSES * CALLERS * max(overruns.values())
            figures[phase] = {
                "calls": sum(statuses.values()),
                "admitted": len(reserved),
                "refused_402": statuses.get("402:ai_budget_exceeded", 0),
                "used_usd": str(from_nanos(used)),
                "overspend_usd": str(from_nanos(max(0, used - limit))),
                "bound_usd": str(from_nanos(bound)),
                "per_call_overrun_usd": str(from_nanos(max(overruns.values()))),
                "utilisation": round(used / limit, 3),
            }
        record(
            "overspend_full_stack",
            processes=PROCESSES,
            callers=PROCESSES * CALLERS,
            limit_usd=str(LIMIT),
            under=figures["under"],
            over=figures["over"],
            seconds_under=round(took["over"] - took["under"], 1),
            seconds_over=round(took["end"] - took["over"], 1),
        )
    finally:
        drop_prefix(redis_url, prefix)
