"""Random reserve / commit / release / clock sequences against a plain Python model of the rules.

The model is written independently of the Lua (calendar periods come from ``datetime``), and the
store's counters must equal it to the nano-dollar after every step, on both backends.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import START
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import BudgetExceeded, InvalidAmount, RequestLimitExceeded
from tokenfence_asgi.money import from_nanos, to_nanos
from tokenfence_asgi.results import Reservation

PLAN = Plan(
    "model",
    [
        Limit("1h", max_cost="0.90", max_requests=8),
        Limit("1d", max_cost="1.00", rollover=0.5),
        Limit("7d", max_requests=40),
        Limit("1mo", max_cost="3"),
    ],
)
HOLD_S = 120
RECLAIM = 3
TENANT = "tenant:{x}"


def period(window: str, s: int) -> tuple[int, int]:
    """The UTC calendar period holding second ``s``, from ``datetime`` arithmetic."""
    size = {"1m": 60, "1h": 3600, "1d": 86400}.get(window)
    if size:
        return s // size * size, s // size * size + size
    day = datetime.fromtimestamp(s, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if window == "7d":
        start = day - timedelta(days=day.weekday())
        return int(start.timestamp()), int((start + timedelta(days=7)).timestamp())
    start = day.replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1)
    return int(start.timestamp()), int(end.timestamp())


def carry(limit: Limit, q: int) -> int:
    """Rollover carried into a period whose preceding one spent ``q`` (-1: the first period)."""
    if not limit.rollover or limit.max_cost_nanos is None or q < 0:
        return 0
    return min(max(0, limit.max_cost_nanos - q), int(limit.max_cost_nanos * limit.rollover))


@dataclass
class Model:
    """The budget rules in plain Python: windows, holds with leases, idempotent settlement."""

    windows: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    held: int = 0
    holds: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (amount, expires ms)
    records: dict[str, str] = field(default_factory=dict)  # id -> h | c | r | x

    def counters(self, window: str, start: int) -> tuple[int, int, int]:
        """Cost, requests and the preceding period's cost (-1: never counted before)."""
        if window not in self.windows:
            return 0, 0, -1
        p, c, r, q = self.windows[window]
        if p == start:
            return c, r, q
        if p == period(window, start - 1)[0]:
            return 0, 0, c
        return 0, 0, 0

    def reclaim(self, now_ms: int) -> None:
        expired = sorted((exp, rid) for rid, (_, exp) in self.holds.items() if exp <= now_ms)
        for _, rid in expired[:RECLAIM]:
            amount, _ = self.holds.pop(rid)
            self.held -= amount
            self.records[rid] = "x"

    def reserve(self, now_ms: int, rid: str, amount: int) -> tuple[Any, ...]:
        if amount == 0:
            return ("invalid",)  # refused before the store is asked
        self.reclaim(now_ms)
        if rid in self.records:
            return ("existing",) if self.records[rid] == "h" else ("duplicate",)
        now_s = now_ms // 1000
        state = []
        for limit in PLAN.limits:
            start, end = period(limit.window, now_s)
            c, r, q = self.counters(limit.window, start)
            state.append((limit, start, end, c, r, q))
        for limit, _, end, _, r, _ in state:
            if limit.max_requests is not None and r + 1 > limit.max_requests:
                return ("requests", limit.window, r, end)
        for limit, _, end, c, _, q in state:
            if limit.max_cost_nanos is None:
                continue
            carried = carry(limit, q)
            if c + self.held + amount > limit.max_cost_nanos + carried:
                return ("budget", limit.window, c, self.held, limit.max_cost_nanos + carried, end)
        for limit, start, _, c, r, q in state:
            self.windows[limit.window] = (start, c, r + 1, q)
        self.held += amount
        self.holds[rid] = (amount, now_ms + HOLD_S * 1000)
        self.records[rid] = "h"
        return ("ok",)

    def commit(self, now_ms: int, rid: str, cost: int) -> tuple[Any, ...]:
        self.reclaim(now_ms)
        state = self.records.get(rid)
        if state in ("c", "r"):
            return ("duplicate",)
        if state == "h":
            amount, _ = self.holds.pop(rid)
            self.held -= amount
        for limit in PLAN.limits:
            start, _ = period(limit.window, now_ms // 1000)
            c, r, q = self.counters(limit.window, start)
            self.windows[limit.window] = (start, c + cost, r, q)
        self.records[rid] = "c"
        return ("committed", state != "h")

    def release(self, now_ms: int, rid: str) -> tuple[Any, ...]:
        self.reclaim(now_ms)
        if self.records.get(rid) != "h":
            return ("noop",)
        amount, _ = self.holds.pop(rid)
        self.held -= amount
        self.records[rid] = "r"
        return ("released",)


class StoreMachine(RuleBasedStateMachine):
    """A state machine with its own event loop and store (embedded, or real Redis under a
    prefix of its own that teardown deletes), and a fake clock at ``now``."""

    fence: TokenFence | None = None

    def __init__(self, redis_url: str | None) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.now = START
        self.prefix = f"tfs{uuid.uuid4().hex[:10]}"
        self.url = redis_url
        if redis_url is None:
            self.client: Any = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        else:
            self.client = aioredis.Redis.from_url(redis_url)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @property
    def now_ms(self) -> int:
        return int(self.now * 1000)

    def teardown(self) -> None:
        async def close() -> None:
            if self.fence is not None:
                await self.fence.aclose()
            if self.url is not None:
                async for key in self.client.scan_iter(match=f"{self.prefix}:*"):
                    await self.client.delete(key)
            await self.client.aclose()

        self.run(close())
        self.loop.close()


class BudgetMachine(StoreMachine):
    """Drives one fence and the model with the same random steps."""

    def __init__(self, redis_url: str | None) -> None:
        super().__init__(redis_url)
        self.model = Model()
        self.ids: list[str] = []
        self.reservations: dict[str, Reservation] = {}
        self.fence = TokenFence(
            redis=self.client,
            prefix=self.prefix,
            plans=[PLAN],
            default_plan="model",
            clock=lambda: self.now,
            hold_ttl=HOLD_S,
            reclaim_batch=RECLAIM,
        )

    @initialize(offset_days=st.integers(0, 800), offset_s=st.integers(0, 86399))
    def start_somewhere(self, offset_days: int, offset_s: int) -> None:
        self.now = START + offset_days * 86400 + offset_s

    @rule(seconds=st.one_of(st.integers(0, 200), st.integers(0, 3 * 86400)))
    def advance(self, seconds: int) -> None:
        self.now += seconds

    @rule(amount=st.integers(0, 400_000_000), reuse=st.booleans(), index=st.integers(0, 10**6))
    def reserve(self, amount: int, reuse: bool, index: int) -> None:
        if reuse and self.ids:
            rid = self.ids[index % len(self.ids)]
        else:
            rid = f"r{len(self.ids):05d}"
            self.ids.append(rid)
        expected = self.model.reserve(self.now_ms, rid, amount)
        outcome: Reservation | Exception
        try:
            outcome = self.run(self.fence.reserve(TENANT, from_nanos(amount), reservation_id=rid))
        except (BudgetExceeded, RequestLimitExceeded, ValueError) as exc:
            outcome = exc
        if isinstance(outcome, InvalidAmount):
            assert expected == ("invalid",), outcome
        elif isinstance(outcome, BudgetExceeded):
            assert expected[0] == "budget", expected
            _, window, used, held, limit, end = expected
            e = outcome
            assert (e.window, to_nanos(e.total_cost), to_nanos(e.held)) == (window, used, held)
            assert (to_nanos(e.max_cost), int(e.resets_at.timestamp())) == (limit, end)
        elif isinstance(outcome, RequestLimitExceeded):
            assert expected[0] == "requests", expected
            assert (outcome.window, outcome.requests) == expected[1:3]
            assert int(outcome.resets_at.timestamp()) == expected[3]
        elif isinstance(outcome, Exception):
            assert expected == ("duplicate",), outcome
        else:
            assert expected[0] in ("ok", "existing"), expected
            self.reservations.setdefault(rid, outcome)

    @rule(over=st.sampled_from([0, 1]))
    def reserve_exactly_the_rest(self, over: int) -> None:
        """Probe the boundary: what remains fits to the nano-dollar, one nano more does not."""
        now_s = self.now_ms // 1000
        after = copy.deepcopy(self.model)
        after.reclaim(self.now_ms)  # the reserve will see these holds reclaimed
        rest = 10**15
        for limit in PLAN.limits:
            if limit.max_cost_nanos is None:
                continue
            c, _, q = after.counters(limit.window, period(limit.window, now_s)[0])
            rest = min(rest, limit.max_cost_nanos + carry(limit, q) - c - after.held)
        self.reserve(max(0, min(rest + over, 10**9)), reuse=False, index=0)

    @precondition(lambda self: bool(self.ids))
    @rule(index=st.integers(0, 10**6), cost=st.integers(0, 500_000_000))
    def commit(self, index: int, cost: int) -> None:
        rid = self.ids[index % len(self.ids)]
        r = self.reservations.get(rid) or Reservation(
            rid, TENANT, None, None, from_nanos(0), 0, "m"
        )
        expected = self.model.commit(self.now_ms, rid, cost)
        settled = self.run(self.fence.commit(r, from_nanos(cost)))
        if expected[0] == "duplicate":
            assert settled.duplicate
        else:
            assert (settled.duplicate, settled.late, to_nanos(settled.cost)) == (
                False,
                expected[1],
                cost,
            )

    @precondition(lambda self: bool(self.reservations))
    @rule(index=st.integers(0, 10**6))
    def release(self, index: int) -> None:
        rid = sorted(self.reservations)[index % len(self.reservations)]
        expected = self.model.release(self.now_ms, rid)
        settled = self.run(self.fence.release(self.reservations[rid]))
        assert settled.duplicate == (expected[0] == "noop")

    @invariant()
    def counters_match_to_the_nano_dollar(self) -> None:
        status = self.run(self.fence.status(TENANT))
        self.model.reclaim(self.now_ms)  # status reclaims too, with the same bound
        assert (to_nanos(status.held), status.open_holds) == (
            self.model.held,
            len(self.model.holds),
        )
        for limit, w in zip(PLAN.limits, status.windows, strict=True):
            start, end = period(limit.window, self.now_ms // 1000)
            c, r, q = self.model.counters(limit.window, start)
            assert (to_nanos(w.used), w.requests) == (c, r), limit.window
            assert int(w.resets_at.timestamp()) == end
            assert to_nanos(w.carried) == carry(limit, q), limit.window


STATEFUL = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_engine_matches_the_model_on_the_embedded_store() -> None:
    run_state_machine_as_test(lambda: BudgetMachine(None), settings=STATEFUL)


def test_engine_matches_the_model_on_redis(redis_url: str) -> None:
    run_state_machine_as_test(lambda: BudgetMachine(redis_url), settings=STATEFUL)
