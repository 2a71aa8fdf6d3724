"""tokenfence_asgi.testing: what a user needs to test an app against its plans."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tokenfence_asgi import BudgetExceeded, Limit, Plan
from tokenfence_asgi.testing import START, FakeClock, embedded_fence, spend

PLANS = [Plan("free", [Limit("1d", max_cost="0.50")])]


async def test_the_readme_example_runs() -> None:
    clock = FakeClock()
    fence = embedded_fence(plans=PLANS, clock=clock)
    try:
        await spend(fence, "acme", "0.50")
        with pytest.raises(BudgetExceeded):
            await fence.reserve("acme", "0.01")
        clock.advance(days=1)
        await fence.reserve("acme", "0.01")
        assert (await fence.status("acme")).windows[0].used == 0
    finally:
        await fence.aclose()


async def test_each_embedded_fence_is_its_own_store() -> None:
    first, second = embedded_fence(plans=PLANS), embedded_fence(plans=PLANS)
    try:
        await spend(first, "acme", "0.30")
        assert (await second.status("acme")).windows[0].used == 0
        assert (await first.status("acme")).windows[0].used == Decimal("0.30")
    finally:
        await first.aclose()
        await second.aclose()


def test_the_clock_moves_only_forward_and_only_when_told() -> None:
    clock = FakeClock()
    assert clock() == START
    clock.advance(30, minutes=1, hours=1, days=1)
    assert clock() == START + 30 + 60 + 3600 + 86400
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-1)
    clock.set(datetime(2027, 1, 1, tzinfo=UTC))
    assert clock() == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    with pytest.raises(ValueError, match="aware datetime"):
        clock.set(datetime(2027, 1, 1))


def test_embedded_fence_refuses_a_server() -> None:
    with pytest.raises(ValueError, match="own in-process store"):
        embedded_fence(redis_url="redis://127.0.0.1:6379/0")
