"""The simulated workload of ``tokenfence simulate``: tenants, their tasks, the hour loop.

Each ``Tenant`` has a plan and a usual share of it; ``Simulation.day_tasks`` draws its tasks for
a day (sized from that share, varied day to day, at business hours more often than at night),
and ``Simulation.run`` reserves each at its worst case on the plan's downgrade chain and commits
its actual cost, hour by hour, moving the injected clock. The power user's agent sends the same
100k-token gpt-4o call ``POWER_CALLS_PER_HOUR`` times an hour during its spree and backs off for
the rest of an hour after a refusal. Money is integer nano-dollars throughout.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import Refused
from tokenfence_asgi.money import from_nanos, to_nanos
from tokenfence_asgi.pricing.book import ModelPrice

__all__ = [
    "POWER_CALLS_PER_HOUR",
    "POWER_INPUT_TOKENS",
    "POWER_MAX_TOKENS",
    "POWER_SPREE_HOURS",
    "PRICES",
    "PlanOutcome",
    "SimulatedClock",
    "Simulation",
    "Tenant",
]

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
class Task:
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
class Tenant:
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


class Simulation:
    """The tenants' days on ``fence``, hour by hour, with ``power``'s spree from day 2/5 on."""

    def __init__(
        self,
        fence: TokenFence,
        clock: SimulatedClock,
        tenants: list[Tenant],
        power: Tenant,
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

    def day_tasks(self, day: int) -> dict[int, list[Task]]:
        """Every ordinary task of simulated day ``day``, by hour of the simulation."""
        weekday = (self.start + timedelta(days=day)).weekday()
        by_hour: dict[int, list[Task]] = {}
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
                task = Task(
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

    def power_tasks(self, hour: int) -> list[Task]:
        """The power user's agent in one hour of its spree: the same call, again and again."""
        rng = self.power.rng
        return [
            Task(
                tenant=self.power.id,
                at_s=hour * 3600,
                feature="document_analysis",
                model="gpt-4o",
                input_tokens=POWER_INPUT_TOKENS,
                max_tokens=POWER_MAX_TOKENS,
                output_tokens=rng.randint(POWER_MAX_TOKENS // 2, POWER_MAX_TOKENS),
            )
            for _ in range(POWER_CALLS_PER_HOUR)
        ]

    async def run(self, on_day: Callable[[int], None] | None) -> None:
        by_id = {t.id: t for t in (*self.tenants, self.power)}
        for day in range(self.days):
            tasks = self.day_tasks(day)
            for hour in range(day * 24, day * 24 + 24):
                self.clock.now = self.start.timestamp() + hour * 3600 + 1800
                batches: dict[str, list[Task]] = {}
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

    async def run_tenant(self, tenant: Tenant, tasks: list[Task]) -> None:
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
            await self.fence.commit(
                reservation,
                from_nanos(cost),
                input_tokens=task.input_tokens,
                output_tokens=task.output_tokens,
            )
            outcome.served += 1
            outcome.downgraded += model != task.model
            outcome.spend_nanos += cost
            tenant.spent(self.clock.datetime, cost)
