"""Helpers for testing your own app against your plans, as ``structlog.testing`` does for logs.

::

    from tokenfence_asgi.testing import FakeClock, embedded_fence, spend

    async def test_a_free_tenant_is_refused_after_its_daily_budget():
        clock = FakeClock()                       # 2026-03-15 12:00 UTC unless told otherwise
        fence = embedded_fence(plans=my_plans, clock=clock)
        await spend(fence, "acme", "0.50")        # the day's budget, as if calls had spent it
        with pytest.raises(BudgetExceeded):
            await fence.reserve("acme", "0.01")
        clock.advance(days=1)                     # a new day: the budget is back
        await fence.reserve("acme", "0.01")
        await fence.aclose()

``embedded_fence`` runs the same Lua scripts as Redis on an in-process store of its own, so
every test gets a fresh, isolated fence with no server; the ``FakeClock`` moves only when told
to, so windows, rollover and hold leases are tested without sleeping. The in-process store is
the ``embedded`` extra (``pip install 'tokenfence-asgi[embedded]'``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.money import MoneyInput
from tokenfence_asgi.results import Settlement

__all__ = ["START", "FakeClock", "embedded_fence", "spend"]

START = datetime(2026, 3, 15, 12, 0, tzinfo=UTC).timestamp()
"""2026-03-15 12:00:00 UTC, a Sunday: mid-day, mid-month, at the end of an ISO week."""


class FakeClock:
    """An injectable clock (epoch seconds) that only moves when told to.

    Pass it as ``TokenFence(clock=...)`` (and ``TokenFenceMiddleware(clock=...)`` so that
    ``Retry-After`` counts from the same time).
    """

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(
        self, seconds: float = 0, *, minutes: float = 0, hours: float = 0, days: float = 0
    ) -> None:
        """Move the clock forward (never back: budgets and leases assume time does not rewind)."""
        step = seconds + 60 * minutes + 3600 * hours + 86400 * days
        if step < 0:
            raise ValueError(f"a FakeClock only moves forward, got {step} seconds")
        self.now += step

    def set(self, when: datetime) -> None:
        """Set the clock to an aware datetime."""
        if when.tzinfo is None:
            raise ValueError("FakeClock.set needs an aware datetime (e.g. tzinfo=UTC)")
        self.now = when.timestamp()


def embedded_fence(*, clock: FakeClock | None = None, **options: Any) -> TokenFence:
    """A ``TokenFence`` on an in-process store of its own (no Redis), on ``clock``.

    ``options`` are ``TokenFence``'s (``plans``, ``default_plan``, ``prices``, ...); a new
    ``FakeClock`` is used when none is given. Close it with ``await fence.aclose()``.
    """
    if "redis_url" in options or "redis" in options:
        raise ValueError("embedded_fence runs on its own in-process store: no redis_url/redis")
    return TokenFence(clock=FakeClock() if clock is None else clock, **options)


async def spend(
    fence: TokenFence,
    tenant_id: str,
    cost: MoneyInput,
    *,
    feature: str | None = None,
    model: str | None = None,
) -> Settlement:
    """Charge ``cost`` dollars to a tenant as a finished call would (reserve, then commit).

    The reserve is checked like any call's, so it raises ``BudgetExceeded`` when ``cost`` does
    not fit: use it to bring a tenant to the state a test needs.
    """
    reservation = await fence.reserve(tenant_id, cost, feature=feature, model=model)
    return await fence.commit(reservation, cost)
