"""Every budget rule at once against a plain Python model: calendar and sliding windows,
rollover, feature shares or caps, a pool that tenants join and leave, threshold alerts and shadow
mode. Random steps; after each, the store's counters and the alerts delivered equal the model's.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import START
from tests.engine.test_stateful import STATEFUL, StoreMachine, period
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import BudgetExceeded, InvalidAmount, RequestLimitExceeded
from tokenfence_asgi.money import from_nanos, to_nanos
from tokenfence_asgi.results import Alert, Reservation

DAY = 1_000_000_000  # $1.00
WEIGHTS = {"chat": 500_000, "search": 250_000}  # ppm
TENANTS = ("a", "b")
POOL = "p"
HOLD_S = 90
FEATURES = (None, "chat", "search", "other")


def tenant_plan(mode: str, enforce: bool) -> Plan:
    return Plan(
        "t",
        [
            Limit("1d", max_cost="1.00", rollover=0.5),
            Limit("1m", max_cost="0.40", max_requests=6, kind="sliding"),
        ],
        features={"chat": 0.5, "search": 0.25},
        feature_mode=mode,  # type: ignore[arg-type]
        enforce=enforce,
    )


POOL_PLAN = Plan("pool", [Limit("1d", max_cost="1.50", max_requests=30)])


def share(amount: int, ppm: int) -> int:
    return amount * ppm // 1_000_000


def crossed(level: int, value: int, limit: int) -> list[int]:
    return [t for t in (50, 80, 100) if t > level and value * 100 >= t * limit]


def carried(q: int) -> int:
    """The day's rollover after a day that spent ``q`` (-1: the tenant's first day)."""
    return 0 if q < 0 else min(max(0, DAY - q), DAY // 2)


@dataclass
class Calendar:
    """A calendar window's counters: period start, cost, requests, previous cost, alert levels."""

    p: int = 0
    c: int = 0
    r: int = 0
    q: int = 0
    a: int = 0
    b: int = 0
    f: dict[str, tuple[int, int]] = field(default_factory=dict)

    def at(self, window: str, start: int) -> Calendar:
        """The counters as of period ``start`` (stale periods read as zero; a window never
        counted has no preceding period, q = -1)."""
        if self.p == start:
            return Calendar(self.p, self.c, self.r, self.q, self.a, self.b, dict(self.f))
        prev = self.c if self.p == period(window, start - 1)[0] else 0 if self.p else -1
        return Calendar(start, 0, 0, prev, 0, 0, {})

    def feature(self, name: str) -> int:
        start, cost = self.f.get(name, (0, 0))
        return cost if start == self.p else 0


@dataclass
class Sliding:
    """A rolling minute of 1-second buckets, and alert marks (level, bucket when raised)."""

    buckets: dict[int, tuple[int, int]] = field(default_factory=dict)
    a: tuple[int, int] = (0, 0)
    b: tuple[int, int] = (0, 0)

    def compact(self, idx: int) -> None:
        self.buckets = {k: v for k, v in self.buckets.items() if k >= idx - 59}

    def totals(self) -> tuple[int, int]:
        return sum(c for c, _ in self.buckets.values()), sum(r for _, r in self.buckets.values())

    def level(self, mark: tuple[int, int], idx: int) -> int:
        return mark[0] if mark[1] > idx - 60 else 0

    def resets(self, idx: int) -> int:
        return min(self.buckets) + 60 if self.buckets else idx + 1


@dataclass
class Tenant:
    day: Calendar = field(default_factory=Calendar)
    minute: Sliding = field(default_factory=Sliding)
    held: int = 0
    held_f: dict[str, int] = field(default_factory=dict)
    in_pool: bool = False


@dataclass
class Hold:
    tenant: str
    amount: int
    expires: int
    feature: str | None


@dataclass
class Model:
    mode: str
    enforce: bool
    tenants: dict[str, Tenant] = field(default_factory=lambda: {t: Tenant() for t in TENANTS})
    pool_day: Calendar = field(default_factory=Calendar)
    holds: dict[str, Hold] = field(default_factory=dict)
    records: dict[str, str] = field(default_factory=dict)
    commit_alerts: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)

    def pool_held(self) -> int:
        return sum(h.amount for h in self.holds.values() if self.tenants[h.tenant].in_pool)

    def reclaim(self, tenant: str, now_ms: int) -> None:
        pooled = self.tenants[tenant].in_pool
        for rid, h in list(self.holds.items()):
            same_tag = h.tenant == tenant or (pooled and self.tenants[h.tenant].in_pool)
            if same_tag and h.expires <= now_ms:
                self._drop(rid)
                self.records[rid] = "x"

    def _drop(self, rid: str) -> None:
        h = self.holds.pop(rid)
        t = self.tenants[h.tenant]
        t.held -= h.amount
        if h.feature in WEIGHTS:
            t.held_f[h.feature] -= h.amount

    def reserve(
        self, tenant: str, rid: str, amount: int, feature: str | None, now_ms: int
    ) -> tuple[Any, list[tuple[Any, ...]]]:
        if amount == 0:
            return ("invalid",), []  # refused before the store is asked
        self.reclaim(tenant, now_ms)
        if rid in self.records:
            return ("duplicate",), []
        t = self.tenants[tenant]
        now_s, idx = now_ms // 1000, now_ms // 1000
        start, day_end = period("1d", now_s)
        day = t.day.at("1d", start)
        t.minute.compact(idx)
        m_cost, m_req = t.minute.totals()
        pool = self.pool_day.at("1d", start) if t.in_pool else None
        pool_held = self.pool_held()
        alerts: list[tuple[Any, ...]] = []
        refusal: tuple[Any, ...] | None = None
        if day.r + 1 > 10**9:
            pass
        if m_req + 1 > 6:
            refusal = ("requests", "tenant", "1m", m_req, t.minute.resets(idx))
        elif pool is not None and pool.r + 1 > 30:
            refusal = ("requests", "pool", "1d", pool.r, day_end)
        limit = DAY + carried(day.q)
        if refusal is None:
            mine = t.held_f.get(feature, 0) if feature else 0
            reserved = sum(
                max(0, share(limit, ppm) - day.feature(g) - t.held_f.get(g, 0))
                for g, ppm in WEIGHTS.items()
                if g != feature
            )
            if day.c + t.held + amount > limit:
                refusal = ("budget", "tenant", "1d", "limit", day, limit)
            elif day.c + t.held + amount + reserved > limit:
                refusal = ("budget", "tenant", "1d", "share")
            elif self.mode == "cap" and (day.feature(feature) if feature else 0) + mine + amount > (
                share(limit, WEIGHTS[feature]) if feature in WEIGHTS else 0
            ):
                refusal = ("budget", "tenant", "1d", "cap")
            elif m_cost + t.held + amount > 400_000_000:
                refusal = ("budget", "tenant", "1m", "limit", None, 400_000_000)
            elif pool is not None and pool.c + pool_held + amount > 1_500_000_000:
                refusal = ("budget", "pool", "1d", "limit", pool, 1_500_000_000)
        if refusal and refusal[0] == "budget" and refusal[3] == "limit":
            scope, window = refusal[1], refusal[2]
            if window == "1m":
                if t.minute.level(t.minute.a, idx) < 100 and m_cost + t.held >= 400_000_000:
                    alerts.append((scope, "1m", "cost", 100))
                    t.minute.a = (100, idx)
            else:
                counters = day if scope == "tenant" else pool
                assert counters is not None
                filled = counters.c + (t.held if scope == "tenant" else pool_held)
                if counters.a < 100 and filled >= (limit if scope == "tenant" else 1_500_000_000):
                    alerts.append((scope, "1d", "cost", 100))
                    counters.a = 100
                    self._store_day(tenant, scope, counters)
        if refusal and self.enforce:
            return refusal, alerts
        # admit
        day.r += 1
        self._store_day(tenant, "tenant", day)
        c, r = t.minute.buckets.get(idx, (0, 0))
        t.minute.buckets[idx] = (c, r + 1)
        level = t.minute.level(t.minute.b, idx)
        for th in crossed(level, m_req + 1, 6):
            alerts.append(("tenant", "1m", "requests", th))
            t.minute.b = (th, idx)
        if pool is not None:
            pool.r += 1
            for th in crossed(pool.b, pool.r, 30):
                alerts.append(("pool", "1d", "requests", th))
                pool.b = th
            self._store_day(tenant, "pool", pool)
        t.held += amount
        if feature in WEIGHTS:
            t.held_f[feature] = t.held_f.get(feature, 0) + amount
        self.holds[rid] = Hold(tenant, amount, now_ms + HOLD_S * 1000, feature)
        self.records[rid] = "h"
        return ("ok", refusal), alerts

    def _store_day(self, tenant: str, scope: str, counters: Calendar) -> None:
        if scope == "tenant":
            self.tenants[tenant].day = counters
        else:
            self.pool_day = counters

    def commit(
        self, tenant: str, rid: str, cost: int, feature: str | None, now_ms: int
    ) -> tuple[Any, list[tuple[Any, ...]]]:
        state = self.records.get(rid)
        if state in ("c", "r"):  # a repeated commit reports the alerts of the first again
            return ("duplicate",), list(self.commit_alerts.get(rid, []))
        self.reclaim(tenant, now_ms)
        state = self.records.get(rid)
        if state == "h":
            feature = self.holds[rid].feature
            self._drop(rid)
        t = self.tenants[tenant]
        now_s = idx = now_ms // 1000
        start, _ = period("1d", now_s)
        alerts: list[tuple[Any, ...]] = []
        day = t.day.at("1d", start)
        day.c += cost
        for th in crossed(day.a, day.c, DAY + carried(day.q)):
            alerts.append(("tenant", "1d", "cost", th))
            day.a = th
        if feature in WEIGHTS:
            day.f[feature] = (start, day.feature(feature) + cost)
        t.day = day
        t.minute.compact(idx)
        m_cost, _ = t.minute.totals()
        level = t.minute.level(t.minute.a, idx)
        for th in crossed(level, m_cost + cost, 400_000_000):
            alerts.append(("tenant", "1m", "cost", th))
            t.minute.a = (th, idx)
        c, r = t.minute.buckets.get(idx, (0, 0))
        t.minute.buckets[idx] = (c + cost, r)
        if t.in_pool:
            pool = self.pool_day.at("1d", start)
            pool.c += cost
            for th in crossed(pool.a, pool.c, 1_500_000_000):
                alerts.append(("pool", "1d", "cost", th))
                pool.a = th
            self.pool_day = pool
        self.records[rid] = "c"
        self.commit_alerts[rid] = alerts
        return ("committed", state != "h"), alerts

    def release(self, tenant: str, rid: str, now_ms: int) -> str:
        if self.records.get(rid) in ("c", "r", "x"):
            return "noop"
        self.reclaim(tenant, now_ms)
        if self.records.get(rid) != "h":
            return "noop"
        self._drop(rid)
        self.records[rid] = "r"
        return "released"


class RulesMachine(StoreMachine):
    """Two tenants, a pool, one fence; the model follows every step."""

    def __init__(self, redis_url: str | None) -> None:
        super().__init__(redis_url)
        self.model: Model | None = None
        self.seen: list[Alert] = []
        self.ids: list[tuple[str, str]] = []
        self.reservations: dict[str, Reservation] = {}
        self.unknown: dict[str, Reservation] = {}

    @initialize(
        mode=st.sampled_from(["share", "cap"]),
        enforce=st.booleans(),
        offset=st.integers(0, 400 * 86400),
    )
    def configure(self, mode: str, enforce: bool, offset: int) -> None:
        self.now = START + offset
        self.model = Model(mode, enforce)
        self.fence = TokenFence(
            redis=self.client,
            prefix=self.prefix,
            plans=[tenant_plan(mode, enforce), POOL_PLAN],
            default_plan="t",
            clock=lambda: self.now,
            hold_ttl=HOLD_S,
            reclaim_batch=1000,
        )
        self.fence.on_alert(self.seen.append)

    def check_alerts(self, tenant: str, expected: list[tuple[Any, ...]]) -> None:
        assert self.fence is not None
        self.run(self.fence._alerts.drain())
        got = sorted((a.scope, a.window, a.metric, a.threshold) for a in self.seen)
        self.seen.clear()
        assert got == sorted(expected), (got, expected)

    @rule(seconds=st.one_of(st.integers(0, 30), st.integers(0, 2 * 86400)))
    def advance(self, seconds: int) -> None:
        self.now += seconds

    @rule(
        tenant=st.sampled_from(TENANTS),
        amount=st.integers(0, 300_000_000),
        feature=st.sampled_from(FEATURES),
    )
    def reserve(self, tenant: str, amount: int, feature: str | None) -> None:
        assert self.fence is not None
        assert self.model is not None
        rid = f"r{len(self.ids):04d}"
        self.ids.append((tenant, rid))
        expected, alerts = self.model.reserve(tenant, rid, amount, feature, self.now_ms)
        outcome: Reservation | Exception
        try:
            outcome = self.run(
                self.fence.reserve(tenant, from_nanos(amount), feature=feature, reservation_id=rid)
            )
        except (BudgetExceeded, RequestLimitExceeded, InvalidAmount) as exc:
            outcome = exc
        if isinstance(outcome, InvalidAmount):
            assert expected == ("invalid",), outcome
        elif isinstance(outcome, Reservation):
            assert expected[0] == "ok", (expected, outcome)
            would = outcome.shadow_refusal
            assert (would is None) == (expected[1] is None), (would, expected)
            if would is not None:
                assert expected[1][0] == (
                    "budget" if isinstance(would, BudgetExceeded) else "requests"
                )
            self.reservations[rid] = outcome
        else:
            assert expected[0] != "ok", (expected, outcome)
            self.check_refusal(outcome, expected)
        self.check_alerts(tenant, alerts)

    def check_refusal(self, error: Exception, expected: tuple[Any, ...]) -> None:
        if isinstance(error, RequestLimitExceeded):
            assert expected[0] == "requests", (error, expected)
            assert (error.scope, error.window, error.requests) == expected[1:4]
            assert int(error.resets_at.timestamp()) == expected[4]
            return
        assert isinstance(error, BudgetExceeded)
        assert expected[0] == "budget", (error, expected)
        reason = expected[3]
        if reason == "limit":  # the engine says more precisely why the limit refused
            if error.requested > error.max_cost:
                reason = "call_too_large"
            elif error.held > 0 and error.total_cost + error.requested <= error.max_cost:
                reason = "held"
        assert (error.scope, error.window, error.reason) == (*expected[1:3], reason), (
            error,
            expected,
        )
        if len(expected) > 5:
            assert to_nanos(error.max_cost) == expected[5]

    @precondition(lambda self: bool(self.ids))
    @rule(index=st.integers(0, 10**6), cost=st.integers(0, 300_000_000))
    def commit(self, index: int, cost: int) -> None:
        assert self.fence is not None
        assert self.model is not None
        tenant, rid = self.ids[index % len(self.ids)]
        if rid not in self.reservations:
            # an id the store never held (its reserve was refused): committed where the tenant
            # lives at the first commit, and repeated with the same reservation object
            pool = POOL if self.model.tenants[tenant].in_pool else None
            self.unknown.setdefault(
                rid, Reservation(rid, tenant, None, None, from_nanos(0), 0, "t", pool=pool)
            )
        r = self.reservations.get(rid) or self.unknown[rid]
        expected, alerts = self.model.commit(tenant, rid, cost, r.feature, self.now_ms)
        settled = self.run(self.fence.commit(r, from_nanos(cost)))
        if expected[0] == "duplicate":
            assert settled.duplicate
        else:
            assert (settled.duplicate, settled.late) == (False, expected[1])
        self.check_alerts(tenant, alerts)

    @precondition(lambda self: bool(self.reservations))
    @rule(index=st.integers(0, 10**6))
    def release(self, index: int) -> None:
        assert self.fence is not None
        assert self.model is not None
        rid = sorted(self.reservations)[index % len(self.reservations)]
        r = self.reservations[rid]
        expected = self.model.release(r.tenant_id, rid, self.now_ms)
        settled = self.run(self.fence.release(r))
        assert settled.duplicate == (expected == "noop")

    @rule(tenant=st.sampled_from(TENANTS), join=st.booleans())
    def move(self, tenant: str, join: bool) -> None:
        assert self.fence is not None
        assert self.model is not None
        pool = POOL if join else None
        self.run(self.fence.set_pool(tenant, pool, plan="pool" if join else None))
        self.model.tenants[tenant].in_pool = join

    @invariant()
    def counters_match(self) -> None:
        if self.fence is None or self.model is None:
            return
        for tenant in TENANTS:
            s = self.run(self.fence.status(tenant))
            self.model.reclaim(tenant, self.now_ms)
            t = self.model.tenants[tenant]
            start, _ = period("1d", self.now_ms // 1000)
            day = t.day.at("1d", start)
            t.minute.compact(self.now_ms // 1000)
            m_cost, m_req = t.minute.totals()
            w_day, w_min = s.windows
            assert (to_nanos(w_day.used), w_day.requests) == (day.c, day.r), tenant
            assert to_nanos(w_day.carried) == carried(day.q), tenant
            assert {k: to_nanos(v) for k, v in w_day.features.items()} == {
                g: day.feature(g) for g in WEIGHTS
            }
            assert (to_nanos(w_min.used), w_min.requests) == (m_cost, m_req), tenant
            assert to_nanos(s.held) == t.held
            assert s.open_holds == sum(1 for h in self.model.holds.values() if h.tenant == tenant)
            assert (s.pool == POOL) == t.in_pool
            if t.in_pool:
                pool = self.model.pool_day.at("1d", start)
                (p_day,) = s.pool_windows
                assert (to_nanos(p_day.used), p_day.requests) == (pool.c, pool.r)
                assert to_nanos(p_day.held) == self.model.pool_held()


RULES = settings(STATEFUL, max_examples=50)


def test_every_rule_matches_the_model_on_the_embedded_store() -> None:
    run_state_machine_as_test(lambda: RulesMachine(None), settings=RULES)


def test_every_rule_matches_the_model_on_redis(redis_url: str) -> None:
    run_state_machine_as_test(lambda: RulesMachine(redis_url), settings=RULES)


CALLS = st.lists(
    st.tuples(
        st.sampled_from(TENANTS),
        st.sampled_from(FEATURES),
        st.integers(20_000_000, 150_000_000),  # estimate, nanos
        st.integers(60, 100),  # actual cost, % of the estimate
        st.integers(0, 3),  # yields before settling
        st.sampled_from([False, False, False, True]),  # release instead of commit
    ),
    min_size=12,
    max_size=40,
)


def _never_overspend(redis_url: str | None, calls: list[Any], mode: str, pooled: bool) -> None:
    async def scenario() -> None:
        client: Any = (
            fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
            if redis_url is None
            else aioredis.Redis.from_url(redis_url)
        )
        prefix = f"tfo{uuid.uuid4().hex[:10]}"
        tenant = Plan(
            "t",
            [Limit("1d", max_cost="0.60"), Limit("1m", max_cost="0.70", kind="sliding")],
            features=None if mode == "none" else {"chat": 0.5, "search": 0.25},
            feature_mode="cap" if mode == "cap" else "share",
        )
        pool = Plan("pool", [Limit("1d", max_cost="0.40")])
        fence = TokenFence(
            redis=client, prefix=prefix, plans=[tenant, pool], default_plan="t", clock=lambda: START
        )
        if pooled:
            for tenant in TENANTS:
                await fence.set_pool(tenant, POOL, plan="pool")

        async def call(
            tenant: str, feature: str | None, est: int, pct: int, naps: int, release: bool
        ) -> None:
            try:
                r = await fence.reserve(tenant, from_nanos(est), feature=feature)
            except (BudgetExceeded, RequestLimitExceeded):
                return
            for _ in range(naps):
                await asyncio.sleep(0)
            if release:
                await fence.release(r)
            else:
                await fence.commit(r, from_nanos(est * pct // 100))

        try:
            await asyncio.gather(*(call(*c) for c in calls))
            pool_used = 0
            for tenant in TENANTS:
                s = await fence.status(tenant)
                for w in s.windows:
                    assert w.limit is not None
                    assert w.used <= w.limit, (tenant, w)
                    if mode == "cap":
                        for name, spent in w.features.items():
                            weight = {"chat": D_HALF, "search": D_QUARTER}[name]
                            assert spent <= w.limit * weight
                for w in s.pool_windows:
                    assert w.limit is not None
                    assert w.used <= w.limit
                    pool_used = to_nanos(w.used)
            assert pool_used <= 400_000_000
        finally:
            await fence.aclose()
            if redis_url is not None:
                async for key in client.scan_iter(match=f"{prefix}:*"):
                    await client.delete(key)
            await client.aclose()

    asyncio.run(scenario())


D_HALF, D_QUARTER = from_nanos(500_000_000), from_nanos(250_000_000)
OVERSPEND = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@OVERSPEND
@given(calls=CALLS, mode=st.sampled_from(["none", "share", "cap"]), pooled=st.booleans())
def test_no_interleaving_overspends_on_the_embedded_store(
    calls: list[Any], mode: str, pooled: bool
) -> None:
    """Committed spend never exceeds any effective limit when every cost <= its estimate."""
    _never_overspend(None, calls, mode, pooled)


@pytest.fixture(scope="module")
def module_redis_url(redis_url: str) -> str:
    return redis_url


@OVERSPEND
@given(calls=CALLS, mode=st.sampled_from(["none", "share", "cap"]), pooled=st.booleans())
def test_no_interleaving_overspends_on_redis(
    module_redis_url: str, calls: list[Any], mode: str, pooled: bool
) -> None:
    """Committed spend never exceeds any effective limit when every cost <= its estimate."""
    _never_overspend(module_redis_url, calls, mode, pooled)
