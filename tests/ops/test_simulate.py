"""The noisy-neighbour simulation: reproducible, consistent with the engine, on both stores."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tokenfence_asgi.config import BUILTIN_PLANS, Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import ConfigError, StoreUnavailable, UnknownPlan
from tokenfence_asgi.ops.simulate import (
    PlanOutcome,
    SimulationResult,
    delete_prefix,
    run_simulation,
    simulation_plans,
)


def rows(result: SimulationResult) -> list[tuple[Any, ...]]:
    """Everything a run decides, as comparable tuples."""
    return [
        (
            r.plan,
            r.tenants,
            r.requests,
            r.served,
            r.refused,
            r.downgraded,
            r.spend_nanos,
            r.unfenced_nanos,
            r.rollover_nanos,
        )
        for r in (*result.plans, result.power_user)
    ]


async def test_the_same_seed_gives_the_same_result() -> None:
    first = await run_simulation(tenants=12, days=5, seed=7)
    second = await run_simulation(tenants=12, days=5, seed=7)
    other = await run_simulation(tenants=12, days=5, seed=8)
    assert rows(first) == rows(second)
    assert first.tenant_plans == second.tenant_plans
    assert rows(first) != rows(other)
    assert first.fence is None  # closed: not kept


async def test_counts_add_up_and_the_fence_stops_the_power_user() -> None:
    result = await run_simulation(tenants=20, days=6, seed=1)
    total = result.total
    assert total.tenants == 20 == len(result.tenant_plans)
    for row in (*result.plans, result.power_user):
        assert row.requests == row.served + row.refused
        assert 0 <= row.downgraded <= row.served
        assert 0 <= row.spend_nanos <= row.unfenced_nanos
    power = result.power_user
    assert result.tenant_plans[result.power_user_id] == power.plan == "pro"
    assert result.spree_hours > 0
    assert power.refused > power.served > 0  # its agent was stopped, not starved
    assert result.unfenced_bill > 10 * result.fenced_bill
    assert result.others_lost == sum(row.refused for row in result.plans)
    assert result.fenced_bill == total.spend == sum(r.spend for r in (*result.plans, power))


async def test_accounting_matches_the_engine_to_the_nano_dollar() -> None:
    """What the simulation says was charged is what the fence's windows hold."""
    result = await run_simulation(tenants=15, days=4, seed=5, keep=True)
    fence = result.fence
    assert fence is not None
    try:
        month_used = Decimal(0)
        for tenant, plan in result.tenant_plans.items():
            status = await fence.status(tenant)
            assert status.plan == plan
            month = next(w for w in status.windows if w.window == "1mo")
            assert month.held == 0  # every hold was settled
            assert month.used <= (month.limit or 0)
            month_used += month.used
        assert month_used == result.fenced_bill
    finally:
        await fence.aclose()


async def test_no_tenant_ever_spends_past_its_limits() -> None:
    tight = Plan("tight", [Limit("1d", max_cost="2", rollover=0.5), Limit("1mo", max_cost="20")])
    loose = Plan("loose", [Limit("1d", max_cost="50")])
    result = await run_simulation(
        tenants=8, days=12, seed=2, plans=[loose, tight], power_plan="tight", keep=True
    )
    fence = result.fence
    assert fence is not None
    try:
        power = await fence.status(result.power_user_id)
        month = next(w for w in power.windows if w.window == "1mo")
        assert month.used <= Decimal(20)
        assert result.power_user.spend <= Decimal(20)
        assert result.power_user.rollover_used > 0  # unused days carried over, then spent
    finally:
        await fence.aclose()


async def test_downgrades_happen_on_a_plan_with_a_downgrade_chain() -> None:
    result = await run_simulation(tenants=50, days=30, seed=1)
    downgraded = {row.plan: row.downgraded for row in result.plans}
    assert downgraded["starter"] > 0  # gpt-4o -> gpt-4o-mini near the daily limit
    assert downgraded["pro"] == downgraded["enterprise"] == 0  # no chain there
    assert result.elapsed_s < 60


async def test_same_result_on_redis_and_the_embedded_store(redis_url: str, prefix: str) -> None:
    embedded = await run_simulation(tenants=10, days=3, seed=4)
    on_redis = await run_simulation(tenants=10, days=3, seed=4, redis_url=redis_url, prefix=prefix)
    assert rows(on_redis) == rows(embedded)
    assert on_redis.prefix == prefix
    assert await delete_prefix(redis_url, prefix) == 0  # its keys are gone


async def test_keep_on_redis_keeps_the_data_and_the_fence(redis_url: str, prefix: str) -> None:
    result = await run_simulation(
        tenants=4, days=2, seed=1, redis_url=redis_url, prefix=prefix, keep=True
    )
    try:
        assert result.kept
        assert result.fence is not None
        status = await result.fence.status(result.power_user_id)
        assert status.windows[0].used > 0 or status.windows[1].used > 0
        other = TokenFence(redis_url=redis_url, prefix=prefix, clock=result.clock)
        try:  # a second client (a report) sees the same data
            assert (await other.status(result.power_user_id)).plan == "pro"
        finally:
            await other.aclose()
    finally:
        if result.fence is not None:
            await result.fence.aclose()
        assert await delete_prefix(redis_url, prefix) > 0


async def test_a_new_prefix_by_default(redis_url: str) -> None:
    result = await run_simulation(tenants=2, days=1, seed=1, redis_url=redis_url)
    assert result.prefix.startswith("tfsim-")
    assert await delete_prefix(redis_url, result.prefix) == 0


async def test_unreachable_redis_raises_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable):
        await run_simulation(tenants=2, days=1, redis_url="redis://127.0.0.1:1/0")


async def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="tenants must be from 1 to 10000"):
        await run_simulation(tenants=0)
    with pytest.raises(ConfigError, match="days must be from 1 to 366"):
        await run_simulation(days=0)
    with pytest.raises(UnknownPlan):
        await run_simulation(days=1, power_plan="gold")
    with pytest.raises(ConfigError, match="at least one plan"):
        await run_simulation(days=1, plans=[])


async def test_one_tenant_is_the_power_user_alone() -> None:
    result = await run_simulation(tenants=1, days=2, seed=1)
    assert result.plans == ()
    assert result.others_lost == 0
    assert list(result.tenant_plans.values()) == ["pro"]


async def test_a_start_date_and_the_spree_window() -> None:
    start = datetime(2026, 6, 1, 9, 30, tzinfo=UTC)  # moved to midnight
    result = await run_simulation(tenants=3, days=10, seed=1, start=start)
    assert result.start == datetime(2026, 6, 1, tzinfo=UTC)
    assert result.end == datetime(2026, 6, 11, tzinfo=UTC)
    assert result.spree_start == datetime(2026, 6, 5, 18, tzinfo=UTC)
    assert result.spree_hours == 54


def test_simulation_plans_are_the_built_in_plans_with_daily_rollover() -> None:
    plans = simulation_plans()
    assert [p.name for p in plans] == [p.name for p in BUILTIN_PLANS]
    for plan, builtin in zip(plans, BUILTIN_PLANS, strict=True):
        day, month = plan.limits
        assert (day.window, day.rollover, day.max_cost) == ("1d", 0.5, builtin.limits[0].max_cost)
        assert month.rollover == 0
        assert plan.models == builtin.models


def test_plan_outcome_money() -> None:
    row = PlanOutcome("x", spend_nanos=1_500_000_000, unfenced_nanos=3, rollover_nanos=10)
    row.add(PlanOutcome("y", tenants=2, spend_nanos=1))
    assert (row.tenants, row.spend, row.unfenced) == (2, Decimal("1.500000001"), Decimal("3E-9"))
