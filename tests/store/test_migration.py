"""A store written by the previous release keeps working: its state is converted on first use.

``tests/store/legacy/`` holds that release's scripts (the layout before running totals and
compiled plans: feature costs as "<period start>:<cost>", sliding alert marks as
"<level>@<bucket>", no period ends or share sums). ``Legacy`` calls them exactly as that
release's engine did. Each test writes state with them, then reads and charges it with
today's fence on the same store and clock, and checks it against what the previous release
itself reported and what the rules say.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Backend
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import BudgetExceeded, RequestLimitExceeded
from tokenfence_asgi.results import Alert, TenantStatus
from tokenfence_asgi.store import codecs
from tokenfence_asgi.store.keys import OWN, KeySpace, encode_id
from tokenfence_asgi.store.specs import NO_LIMITS, CompiledPlan, compile_plan
from tokenfence_asgi.testing import FakeClock

LEGACY = Path(__file__).parent / "legacy"
NANOS = 1_000_000_000

PLAN = Plan(
    "t",
    [
        Limit("1d", max_cost="1.00", max_requests=100, rollover=0.5),
        Limit("1mo", max_cost="20"),
        Limit("1m", max_cost="0.40", max_requests=30, kind="sliding"),
    ],
    features={"chat": 0.5, "search": 0.25},
)
POOL_PLAN = Plan("pool", [Limit("1d", max_cost="3.00")])


def _source(name: str) -> str:
    lib = (LEGACY / "_lib.lua").read_text()
    return f"{lib}\n-- ---- {name}.lua ----\n{(LEGACY / f'{name}.lua').read_text()}"


class Legacy:
    """The previous release's reserve, commit, release and status, with its engine's ARGV."""

    def __init__(self, client: Any, prefix: str, clock: FakeClock) -> None:
        self.client = client
        self.keys = KeySpace(prefix)
        self.clock = clock
        self.scripts = {
            name: client.register_script(_source(name))
            for name in ("reserve", "commit", "release", "status")
        }
        self.plan = compile_plan(PLAN)
        self.pool_plan = compile_plan(POOL_PLAN)

    def _now(self) -> str:
        return str(int(self.clock() * 1000))

    def _route(self, tenant: str, pool: str | None) -> tuple[Any, str, str, list[str]]:
        location = OWN if pool is None else encode_id(pool)
        keys = self.keys.tenant(encode_id(tenant), location)
        pool_plan: CompiledPlan = NO_LIMITS if pool is None else self.pool_plan
        specs = [*self.plan.feature_args, *self.plan.limit_args, *pool_plan.limit_args]
        return keys, "" if pool is None else location, "" if pool is None else "pool", specs

    async def _run(self, name: str, keys: list[str], args: list[str]) -> list[str]:
        reply = await self.scripts[name](keys=keys, args=args)
        return [x.decode() if isinstance(x, bytes) else str(x) for x in reply]

    async def reserve(
        self, tenant: str, rid: str, nanos: int, feature: str | None, pool: str | None = None
    ) -> list[str]:
        keys, location, pool_plan, specs = self._route(tenant, pool)
        args = [
            self._now(),
            "t",
            "t",
            encode_id(tenant),
            rid,
            encode_id(feature or "") if feature else "",
            "600000",
            "16",
            "86400",
            location,
            pool_plan,
            "1",
            self.plan.mode,
            "400",
            "1000",
            *specs,
            "1",
            str(nanos),
        ]
        reply = await self._run(
            "reserve", keys.with_pool([keys.state, keys.record(rid), keys.holds]), args
        )
        assert reply[0] == "ok", reply
        return reply

    async def commit(
        self, tenant: str, rid: str, nanos: int, feature: str | None, pool: str | None = None
    ) -> list[str]:
        keys, location, pool_plan, specs = self._route(tenant, pool)
        args = [
            self._now(),
            encode_id(tenant),
            rid,
            str(nanos),
            "86400",
            "16",
            encode_id(feature) if feature else "",
            "10",
            "20",
            location,
            "1",
            "t",
            "t",
            pool_plan,
            "gpt-4o",
            "",
            "",
            "100000",
            "604800000",
            "400",
            *specs,
        ]
        reply = await self._run(
            "commit", keys.with_pool([keys.state, keys.record(rid), keys.holds]), args
        )
        assert reply[0] == "committed", reply
        return reply

    async def status(self, tenant: str, pool: str | None = None) -> TenantStatus:
        keys, location, pool_plan, specs = self._route(tenant, pool)
        args = [self._now(), "t", "16", "86400", location, "t", pool_plan, *specs]
        reply = await self._run("status", keys.with_pool([keys.state, keys.holds]), args)
        return codecs.status_reply(
            reply,
            tenant=tenant,
            plan=self.plan,
            pool_plan=self.pool_plan if pool else NO_LIMITS,
            in_pool=pool is not None,
            pool=pool,
            killed_globally=False,
        )

    async def join_pool(self, tenant: str, pool: str) -> None:
        """A tenant in a pool as the previous release's move left it (no move needed here)."""
        tenant_enc, pool_enc = encode_id(tenant), encode_id(pool)
        await self.client.hset(self.keys.tenant(tenant_enc).state, "loc", pool_enc)
        await self.client.hset(self.keys.tenant(tenant_enc, pool_enc).state, "pool", pool_enc)
        await self.client.hset(self.keys.pool_state(pool_enc), "plan", "pool")


def _counters(status: TenantStatus) -> list[tuple[Any, ...]]:
    windows = [*status.windows, *status.pool_windows]
    return [(status.plan, status.held, status.open_holds, status.pool, status.pool_plan)] + [
        (w.scope, w.window, w.used, w.held, w.limit, w.carried, w.requests, w.resets_at, w.features)
        for w in windows
    ]


async def test_state_of_the_previous_release_is_read_and_charged(
    backend: Backend, make_fence: Callable[..., TokenFence], clock: FakeClock
) -> None:
    client = backend.client()
    legacy = Legacy(client, backend.prefix, clock)
    try:
        # A day of spend, so the next one carries over; then a day in progress with open holds
        # and a sliding alert already reported (50% of the minute).
        await legacy.reserve("a", "r1", 100_000_000, "chat")
        await legacy.commit("a", "r1", 80_000_000, "chat")
        await legacy.reserve("a", "r2", 50_000_000, "search")
        await legacy.commit("a", "r2", 50_000_000, "search")
        clock.advance(86400)
        await legacy.reserve("a", "r3", 300_000_000, "chat")
        alerts = await legacy.commit("a", "r3", 210_000_000, "chat")
        assert "tenant|1m|cost|50|210000000|400000000" in alerts
        await legacy.reserve("a", "r4", 150_000_000, "chat")  # open, counted in the feature
        await legacy.reserve("a", "r5", 30_000_000, "search")  # open, released below
        await legacy.join_pool("b", "p")
        await legacy.reserve("b", "r6", 300_000_000, "chat", pool="p")
        await legacy.commit("b", "r6", 250_000_000, "chat", pool="p")
        await legacy.reserve("b", "r7", 100_000_000, "chat", pool="p")  # open, in the pool
        before_a, before_b = await legacy.status("a"), await legacy.status("b", pool="p")

        fence = make_fence(plans=[PLAN, POOL_PLAN], default_plan="t")
        raised: list[Alert] = []
        fence.on_alert(raised.append)
        assert _counters(await fence.status("a")) == _counters(before_a)
        assert _counters(await fence.status("b")) == _counters(before_b)
        day = (await fence.status("a")).windows[0]
        assert (day.used, day.carried, day.features) == (
            Decimal("0.21"),
            Decimal("0.5"),
            {"chat": Decimal("0.21"), "search": Decimal(0)},
        )

        # The open holds settle where the previous release left them.
        r4 = legacy_reservation("a", "r4", "chat", 150_000_000)
        settled = await fence.commit(r4, "0.15")
        assert (settled.cost, settled.late) == (Decimal("0.15"), False)
        await fence._alerts.drain()
        # 0.36 of the minute's 0.40: 80% is new; 50% was reported by the previous release.
        assert [a.threshold for a in raised if a.window == "1m"] == [80]
        released = await fence.release(legacy_reservation("a", "r5", "search", 30_000_000))
        assert not released.duplicate
        r7 = legacy_reservation("b", "r7", "chat", 100_000_000, pool="p")
        assert (await fence.commit(r7, "0.10")).late is False
        status_b = await fence.status("b")
        assert (status_b.held, status_b.pool_windows[0].used) == (0, Decimal("0.35"))

        # Shares from the converted feature costs: the day's limit is 1.50 (0.50 carried),
        # chat spent 0.36, search's unused 0.375 stays free for it.
        status = await fence.status("a")
        assert (status.held, status.windows[0].features["chat"]) == (0, Decimal("0.36"))
        clock.advance(120)  # the sliding minute is free again
        with pytest.raises(BudgetExceeded) as refused:
            await fence.reserve("a", "0.7651", feature="chat")
        assert refused.value.reason == "share"
        held = await fence.reserve("a", "0.35", feature="chat")
        await fence.commit(held, "0.35")

        # The next day carries over from the converted counters: 1.00 - 0.71 spent = 0.29.
        clock.advance(86400)
        assert (await fence.status("a")).windows[0].carried == Decimal("0.29")
        for _ in range(30):  # 30 requests a minute
            await fence.commit(await fence.reserve("a", "0.001", feature="search"), "0.001")
        with pytest.raises(RequestLimitExceeded) as limited:
            await fence.reserve("a", "0.001", feature="search")
        assert limited.value.window == "1m"
    finally:
        await client.aclose()


def legacy_reservation(
    tenant: str, rid: str, feature: str | None, nanos: int, pool: str | None = None
) -> Any:
    """A ``Reservation`` as the previous release returned it for a hold it made."""
    from tokenfence_asgi.results import Reservation

    return Reservation(
        id=rid,
        tenant_id=tenant,
        feature=feature,
        model=None,
        amount=Decimal(nanos) / NANOS,
        amount_nanos=nanos,
        plan="t",
        pool=pool,
    )
