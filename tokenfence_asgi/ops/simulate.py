"""The noisy-neighbour simulation behind ``tokenfence simulate``: ``run_simulation``.

N tenants on mixed plans use AI for D simulated days on one ``TokenFence`` whose clock is
injected, so a month takes seconds. Each tenant's day is a few tasks (a chat session, a document
batch, an agent run), each reserved at its worst case with ``reserve_first`` on the plan's
downgrade chain and committed at its actual cost, as ``TokenFenceCallback`` does for an LLM call.
Their size comes from the tenant's usual share of its plan, varied day to day. One tenant, the
power user, sets an agent on "analysing everything" for a weekend: 100k-token gpt-4o calls, 480
an hour; after a refusal the agent backs off for the rest of the hour (its budget cannot come
back before the day resets), so its remaining calls that hour are counted as refused.

The result compares what every task would have cost without the fence with what was charged,
per plan, and counts the requests the other tenants lost. Everything is drawn from ``seed``, so
a run is reproducible on the embedded store and on Redis alike.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tokenfence_asgi.config import BUILTIN_PLANS, Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import ConfigError, UnknownPlan
from tokenfence_asgi.ops._simulation import (
    POWER_CALLS_PER_HOUR,
    PRICES,
    PlanOutcome,
    SimulatedClock,
    Simulation,
    Tenant,
)
from tokenfence_asgi.store.client import STORE_ERRORS

__all__ = [
    "POWER_CALLS_PER_HOUR",
    "PRICES",
    "SIMULATION_START",
    "PlanOutcome",
    "SimulatedClock",
    "SimulationResult",
    "delete_prefix",
    "run_simulation",
    "simulation_plans",
]

SIMULATION_START = datetime(2026, 3, 1, tzinfo=UTC)
"""Default first simulated day: a Sunday, at the start of a 31-day month."""


@dataclass(slots=True)
class SimulationResult:
    """The outcome of ``run_simulation``.

    ``plans`` has one row per plan for every tenant but the power user, whose row is
    ``power_user``; its agent ran ``spree_hours`` from ``spree_start``. ``fence`` and ``clock``
    are the simulation's own, open only when it was run with ``keep=True`` (then close the
    fence when done); ``prefix`` is the key prefix its data lives under. ``tenant_plans`` maps
    every tenant id to its plan. ``end`` is the midnight after the last simulated day.
    """

    tenants: int
    days: int
    seed: int
    start: datetime
    end: datetime
    store: str
    prefix: str
    plans: tuple[PlanOutcome, ...]
    power_user: PlanOutcome
    power_user_id: str
    tenant_plans: dict[str, str]
    spree_start: datetime
    spree_hours: int
    elapsed_s: float
    clock: SimulatedClock
    fence: TokenFence | None = None
    kept: bool = False

    @property
    def total(self) -> PlanOutcome:
        """Every tenant together."""
        total = PlanOutcome("total")
        for row in (*self.plans, self.power_user):
            total.add(row)
        return total

    @property
    def unfenced_bill(self) -> Decimal:
        """What every task of every tenant would have cost without the fence."""
        return self.total.unfenced

    @property
    def fenced_bill(self) -> Decimal:
        """What the fence let be spent."""
        return self.total.spend

    @property
    def others_lost(self) -> int:
        """Requests of tenants other than the power user that were refused."""
        return sum(row.refused for row in self.plans)


def simulation_plans(rollover: float = 0.5) -> tuple[Plan, ...]:
    """The built-in plans, with ``rollover`` of an unused day carried to the next."""
    return tuple(
        replace(plan, limits=tuple(_with_rollover(limit, rollover) for limit in plan.limits))
        for plan in BUILTIN_PLANS
    )


def _with_rollover(limit: Limit, rollover: float) -> Limit:
    if limit.window != "1d" or limit.kind != "calendar" or limit.max_cost is None:
        return limit
    return replace(limit, rollover=rollover)


def _assign_plans(count: int, plans: Sequence[Plan]) -> list[Plan]:
    """``count`` plans, cheapest (first) most common: weights n, n-1, ..., 1."""
    weights = list(range(len(plans), 0, -1))
    exact = [count * w / sum(weights) for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(plans)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: count - sum(counts)]:
        counts[i] += 1
    return [plan for plan, n in zip(plans, counts, strict=True) for _ in range(n)]


async def delete_prefix(redis_url: str, prefix: str) -> int:
    """Delete every key under ``prefix:`` on the Redis at ``redis_url``; returns how many."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await client.delete(*batch)
                batch = []
        if batch:
            deleted += await client.delete(*batch)
    finally:
        await client.aclose()
    return deleted


async def run_simulation(
    *,
    tenants: int = 50,
    days: int = 30,
    seed: int = 1,
    plans: Sequence[Plan] | None = None,
    power_plan: str | None = None,
    redis_url: str | None = None,
    prefix: str | None = None,
    start: datetime = SIMULATION_START,
    keep: bool = False,
    on_day: Callable[[int], None] | None = None,
) -> SimulationResult:
    """Run the noisy-neighbour scenario; the same ``seed`` gives the same result.

    ``plans`` default to ``simulation_plans()`` (the built-in plans with half of an unused day
    rolling over); tenants are spread over them cheapest-first (weights 4:3:2:1 for four
    plans), and the power user is on ``power_plan`` (default ``"pro"`` when configured, else
    the second most expensive plan). ``redis_url`` runs it on Redis under ``prefix`` (default:
    a new ``tfsim-...`` prefix), whose keys are deleted at the end unless ``keep``; on the
    embedded store ``keep`` keeps the fence open in the result. ``on_day(n)`` is called after
    each simulated day. Raises ``ConfigError`` for bad arguments, ``StoreUnavailable`` when
    Redis cannot be reached.
    """
    if not 1 <= tenants <= 10_000:
        raise ConfigError(f"tenants must be from 1 to 10000, got {tenants}")
    if not 1 <= days <= 366:
        raise ConfigError(f"days must be from 1 to 366, got {days}")
    plan_list = tuple(simulation_plans() if plans is None else plans)
    if not plan_list:
        raise ConfigError("the simulation needs at least one plan")
    names = [p.name for p in plan_list]
    if power_plan is None:
        power_plan = "pro" if "pro" in names else names[max(0, len(names) - 2)]
    elif power_plan not in names:
        raise UnknownPlan(power_plan, names)
    start = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    prefix = prefix or f"tfsim-{uuid.uuid4().hex[:8]}"
    clock = SimulatedClock(start)
    fence = TokenFence(
        redis_url=redis_url,
        plans=plan_list,
        default_plan=names[0],
        prefix=prefix,
        clock=clock,
        timeout_s=2.0,
    )
    started = time.perf_counter()
    done = False
    try:
        rng = random.Random(f"tokenfence-simulate:{seed}")
        assigned = _assign_plans(tenants, plan_list)
        rng.shuffle(assigned)
        if power_plan not in {p.name for p in assigned}:  # too few tenants to have one there
            assigned[0] = plan_list[names.index(power_plan)]
        outcomes = {name: PlanOutcome(name) for name in names}
        power_outcome = PlanOutcome(power_plan, tenants=1)
        people: list[Tenant] = []
        power: Tenant | None = None
        width = len(str(tenants))
        for number, plan in enumerate(assigned, 1):
            tenant_id = f"tenant-{number:0{width}d}"
            tenant_rng = random.Random(f"tokenfence-simulate:{seed}:{tenant_id}")
            share = tenant_rng.uniform(0.10, 0.45)
            if power is None and plan.name == power_plan:
                power = Tenant(tenant_id, plan, power_outcome, share, tenant_rng)
                people.append(power)
            else:
                outcomes[plan.name].tenants += 1
                people.append(Tenant(tenant_id, plan, outcomes[plan.name], share, tenant_rng))
            await fence.set_plan(tenant_id, plan.name)
        assert power is not None  # one tenant is always on power_plan (see above)
        others = [t for t in people if t is not power]
        simulation = Simulation(fence, clock, [*others, power], power, start=start, days=days)
        await simulation.run(on_day)
        done = True
    finally:
        if not (done and keep):
            await fence.aclose()
            if redis_url is not None:
                try:
                    await delete_prefix(redis_url, prefix)
                except STORE_ERRORS:
                    if done:  # else the error that stopped the run is the one to see
                        raise
    return SimulationResult(
        tenants=tenants,
        days=days,
        seed=seed,
        start=start,
        end=start + timedelta(days=days),
        store="embedded" if redis_url is None else redis_url,
        prefix=prefix,
        plans=tuple(outcomes[name] for name in names if outcomes[name].tenants),
        power_user=power_outcome,
        power_user_id=power.id,
        tenant_plans={t.id: t.plan.name for t in people},
        spree_start=start + timedelta(hours=simulation.spree.start),
        spree_hours=len(simulation.spree),
        elapsed_s=time.perf_counter() - started,
        clock=clock,
        fence=fence if keep else None,
        kept=keep,
    )
