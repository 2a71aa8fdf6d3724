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

import asyncio
import math
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tokenfence_asgi.config import BUILTIN_PLANS, Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import ConfigError, Refused, UnknownPlan
from tokenfence_asgi.money import from_nanos, to_nanos
from tokenfence_asgi.pricing.book import ModelPrice
from tokenfence_asgi.store.client import STORE_ERRORS

__all__ = [
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

PRICES: dict[str, ModelPrice] = {
    "gpt-4o": ModelPrice.per_million("2.50", "10"),
    "gpt-4o-mini": ModelPrice.per_million("0.15", "0.60"),
    "claude-3-5-sonnet-20241022": ModelPrice.per_million("3", "15"),
}
"""List prices of the simulated models (dollars per token); other models cost what gpt-4o does."""

_PREFERRED = ("gpt-4o", "claude-3-5-sonnet-20241022", "gpt-4o-mini")
_FEATURES = (("chat", 0.5), ("document_analysis", 0.3), ("search", 0.2))
# Tasks start at business hours more often than at night (UTC hour weights).
_HOURS = (1, 1, 1, 1, 1, 2, 3, 5, 8, 9, 9, 8, 7, 8, 9, 9, 8, 6, 5, 4, 3, 2, 2, 1)
_WINDOW_DAYS = {"1m": 1 / 1440, "1h": 1 / 24, "1d": 1, "7d": 7, "1mo": 30}

# The power user's agent: 100k-token prompts to gpt-4o, up to 8k tokens out, 480 calls an hour
# (8 workers, one call a minute each), from a Friday evening to Monday morning.
POWER_INPUT_TOKENS = 100_000
POWER_MAX_TOKENS = 8_192
POWER_CALLS_PER_HOUR = 480
POWER_SPREE_HOURS = 54


class SimulatedClock:
    """An injectable clock (epoch seconds) that moves only when the simulation moves it."""

    def __init__(self, start: datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    @property
    def datetime(self) -> datetime:
        """The current simulated time, as an aware UTC datetime."""
        return datetime.fromtimestamp(self.now, UTC)


@dataclass(slots=True)
class PlanOutcome:
    """What one group of tenants asked for and got: a plan's tenants, or the power user.

    ``requests`` counts tasks asked for, ``served`` those reserved and committed, ``refused``
    those the fence refused (or the power user's agent held back after a refusal),
    ``downgraded`` those served on a cheaper model than asked. Money is integer nano-dollars:
    ``spend_nanos`` charged, ``unfenced_nanos`` what every task would have cost on the model
    asked for, ``rollover_nanos`` spend above a limit's own amount, paid by budget carried over
    from the previous period.
    """

    plan: str
    tenants: int = 0
    requests: int = 0
    served: int = 0
    refused: int = 0
    downgraded: int = 0
    spend_nanos: int = 0
    unfenced_nanos: int = 0
    rollover_nanos: int = 0

    @property
    def spend(self) -> Decimal:
        """Dollars charged."""
        return from_nanos(self.spend_nanos)

    @property
    def unfenced(self) -> Decimal:
        """Dollars every task would have cost without the fence."""
        return from_nanos(self.unfenced_nanos)

    @property
    def rollover_used(self) -> Decimal:
        """Dollars of carried-over budget spent."""
        return from_nanos(self.rollover_nanos)

    def add(self, other: PlanOutcome) -> None:
        """Add ``other``'s counts and money to this one."""
        self.tenants += other.tenants
        self.requests += other.requests
        self.served += other.served
        self.refused += other.refused
        self.downgraded += other.downgraded
        self.spend_nanos += other.spend_nanos
        self.unfenced_nanos += other.unfenced_nanos
        self.rollover_nanos += other.rollover_nanos


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


def _price(model: str) -> ModelPrice:
    return PRICES.get(model, PRICES["gpt-4o"])


def _daily_budget(plan: Plan) -> Decimal:
    """The binding calendar cost limit of ``plan``, as dollars per day ($1 if it has none)."""
    per_day = [
        limit.max_cost / Decimal(str(_WINDOW_DAYS[limit.window]))
        for limit in plan.limits
        if limit.max_cost is not None and limit.kind == "calendar"
    ]
    return min(per_day) if per_day else Decimal(1)


def _preferred_model(plan: Plan) -> str:
    for model in _PREFERRED:
        if plan.model_allowed(model):
            return model
    return _PREFERRED[0]  # the plan's downgrade chain, or a refusal, decides


def _period(window: str, at: datetime) -> tuple[int, ...]:
    """Which calendar period of ``window`` the time ``at`` falls in (UTC, weeks from Monday)."""
    if window == "1mo":
        return (at.year, at.month)
    if window == "7d":
        iso = at.isocalendar()
        return (iso.year, iso.week)
    if window == "1d":
        return (at.toordinal(),)
    if window == "1h":
        return (at.toordinal(), at.hour)
    return (at.toordinal(), at.hour, at.minute)


@dataclass(frozen=True, slots=True)
class _Task:
    """One reserved piece of AI work: the model asked for, its tokens and output allowance."""

    tenant: str
    at_s: int  # seconds after the simulation start
    feature: str
    model: str
    input_tokens: int
    max_tokens: int  # the output allowance: the worst case reserved
    output_tokens: int  # what the model produces

    def estimate_nanos(self, model: str) -> int:
        cost = _price(model).cost(self.input_tokens, self.max_tokens)
        return to_nanos(cost, rounding="up", field="estimate")

    def cost_nanos(self, model: str) -> int:
        return to_nanos(_price(model).cost(self.input_tokens, self.output_tokens))


@dataclass(slots=True)
class _Tenant:
    """A simulated tenant: its plan, its usual demand, and where its spend stands."""

    id: str
    plan: Plan
    outcome: PlanOutcome
    share: float  # of its plan's daily budget, on an ordinary day
    rng: random.Random
    periods: dict[Limit, tuple[tuple[int, ...], int]] = field(default_factory=dict)

    def spent(self, at: datetime, nanos: int) -> None:
        """Book ``nanos`` charged at ``at`` against every rollover limit's current period."""
        for limit in self.plan.limits:
            if not limit.rollover or limit.max_cost_nanos is None:
                continue
            period = _period(limit.window, at)
            current, spent = self.periods.get(limit, (period, 0))
            if current != period:
                self.close(limit)
                spent = 0
            self.periods[limit] = (period, spent + nanos)

    def close(self, limit: Limit | None = None) -> None:
        """End the open periods (of one limit): spend above the limit came from rollover."""
        for each in [limit] if limit is not None else list(self.periods):
            _, spent = self.periods.pop(each, ((), 0))
            self.outcome.rollover_nanos += max(0, spent - (each.max_cost_nanos or 0))


class _Simulation:
    def __init__(
        self,
        fence: TokenFence,
        clock: SimulatedClock,
        tenants: list[_Tenant],
        power: _Tenant,
        *,
        start: datetime,
        days: int,
    ) -> None:
        self.fence = fence
        self.clock = clock
        self.tenants = tenants
        self.power = power
        self.start = start
        self.days = days
        spree_day = days * 2 // 5
        self.spree = range(
            spree_day * 24 + 18, min(days * 24, spree_day * 24 + 18 + POWER_SPREE_HOURS)
        )

    def day_tasks(self, day: int) -> dict[int, list[_Task]]:
        """Every ordinary task of simulated day ``day``, by hour of the simulation."""
        weekday = (self.start + timedelta(days=day)).weekday()
        by_hour: dict[int, list[_Task]] = {}
        for tenant in self.tenants:
            rng = tenant.rng
            if rng.random() >= (0.85 if weekday < 5 else 0.35):
                continue  # not using AI today
            budget = float(_daily_budget(tenant.plan))
            demand = budget * tenant.share * rng.lognormvariate(0, 0.45)
            count = 1 + (rng.random() < 0.25) + (rng.random() < 0.1)
            weights = [rng.random() + 0.2 for _ in range(count)]
            model = _preferred_model(tenant.plan)
            price = _price(model)
            for weight in weights:
                cost = demand * weight / sum(weights)
                output = max(1, int(cost * 0.5 / float(price.output_per_token)))
                task = _Task(
                    tenant=tenant.id,
                    at_s=(day * 24 + rng.choices(range(24), _HOURS)[0]) * 3600,
                    feature=rng.choices([f for f, _ in _FEATURES], [w for _, w in _FEATURES])[0],
                    model=model,
                    input_tokens=int(cost * 0.5 / float(price.input_per_token)),
                    max_tokens=math.ceil(output / rng.uniform(0.55, 0.9)),
                    output_tokens=output,
                )
                by_hour.setdefault(task.at_s // 3600, []).append(task)
        return by_hour

    def power_tasks(self, hour: int) -> list[_Task]:
        """The power user's agent in one hour of its spree: the same call, again and again."""
        rng = self.power.rng
        return [
            _Task(self.power.id, hour * 3600, "document_analysis", "gpt-4o", POWER_INPUT_TOKENS,
                  POWER_MAX_TOKENS, rng.randint(POWER_MAX_TOKENS // 2, POWER_MAX_TOKENS))
            for _ in range(POWER_CALLS_PER_HOUR)
        ]  # fmt: skip

    async def run(self, on_day: Callable[[int], None] | None) -> None:
        by_id = {t.id: t for t in (*self.tenants, self.power)}
        for day in range(self.days):
            tasks = self.day_tasks(day)
            for hour in range(day * 24, day * 24 + 24):
                self.clock.now = self.start.timestamp() + hour * 3600 + 1800
                batches: dict[str, list[_Task]] = {}
                for task in tasks.get(hour, ()):
                    batches.setdefault(task.tenant, []).append(task)
                if hour in self.spree:
                    batches.setdefault(self.power.id, []).extend(self.power_tasks(hour))
                # Tenants are independent: on Redis their calls of one hour overlap.
                await asyncio.gather(
                    *(self.run_tenant(by_id[t], batch) for t, batch in batches.items())
                )
            if on_day is not None:
                on_day(day + 1)
        for tenant in by_id.values():
            tenant.close()

    async def run_tenant(self, tenant: _Tenant, tasks: list[_Task]) -> None:
        outcome = tenant.outcome
        for index, task in enumerate(tasks):
            outcome.requests += 1
            outcome.unfenced_nanos += task.cost_nanos(task.model)
            plan = tenant.plan
            chain = [m for m in plan.downgrade_chain(task.model) if plan.model_allowed(m)]
            if not chain:
                outcome.refused += 1
                continue
            try:
                reservation = await self.fence.reserve_first(
                    tenant.id, [(m, task.estimate_nanos(m)) for m in chain], feature=task.feature
                )
            except Refused:
                outcome.refused += 1
                if tenant is self.power:  # the agent backs off until the next hour
                    for rest in tasks[index + 1 :]:
                        outcome.requests += 1
                        outcome.refused += 1
                        outcome.unfenced_nanos += rest.cost_nanos(rest.model)
                    return
                continue
            model = reservation.model or task.model
            cost = task.cost_nanos(model)
            await self.fence.commit(reservation, from_nanos(cost), input_tokens=task.input_tokens,
                                    output_tokens=task.output_tokens)  # fmt: skip
            outcome.served += 1
            outcome.downgraded += model != task.model
            outcome.spend_nanos += cost
            tenant.spent(self.clock.datetime, cost)


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
    fence = TokenFence(redis_url=redis_url, plans=plan_list, default_plan=names[0],
                       prefix=prefix, clock=clock, timeout_s=2.0)  # fmt: skip
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
        people: list[_Tenant] = []
        power: _Tenant | None = None
        width = len(str(tenants))
        for number, plan in enumerate(assigned, 1):
            tenant_id = f"tenant-{number:0{width}d}"
            tenant_rng = random.Random(f"tokenfence-simulate:{seed}:{tenant_id}")
            share = tenant_rng.uniform(0.10, 0.45)
            if power is None and plan.name == power_plan:
                power = _Tenant(tenant_id, plan, power_outcome, share, tenant_rng)
                people.append(power)
            else:
                outcomes[plan.name].tenants += 1
                people.append(_Tenant(tenant_id, plan, outcomes[plan.name], share, tenant_rng))
            await fence.set_plan(tenant_id, plan.name)
        assert power is not None  # one tenant is always on power_plan (see above)
        others = [t for t in people if t is not power]
        simulation = _Simulation(fence, clock, [*others, power], power, start=start, days=days)
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
