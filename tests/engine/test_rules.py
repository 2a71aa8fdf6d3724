"""Budget rules on real Redis and the embedded store: sliding windows, rollover, feature shares,
pools, threshold alerts and shadow mode, driven by the injectable clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests.conftest import Backend, FakeClock
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import (
    BudgetExceeded,
    ConfigError,
    RequestLimitExceeded,
    StoreUnavailable,
)
from tokenfence_asgi.results import Alert

MakeFence = Callable[..., TokenFence]
D = Decimal


async def used(fence: TokenFence, tenant: str, window: str, scope: str = "tenant") -> Decimal:
    s = await fence.status(tenant)
    windows = s.windows if scope == "tenant" else s.pool_windows
    return next(w.used for w in windows if w.window == window)


# -- sliding windows ---------------------------------------------------------------------------

BURST = Plan(
    "burst",
    [Limit("1d", max_cost="5"), Limit("1m", max_cost="0.50", max_requests=10, kind="sliding")],
)


async def test_sliding_window_forgets_spend_after_one_window(
    make_fence: MakeFence, clock: FakeClock
) -> None:
    fence = make_fence(plans=[BURST], default_plan="burst")
    clock.now = 1_800_000_000.5  # inside bucket 0 of a minute
    await fence.commit(await fence.reserve("t", "0.50"), "0.50")
    clock.advance(30)
    with pytest.raises(BudgetExceeded) as info:
        await fence.reserve("t", "0.01")
    assert info.value.window == "1m"
    # the spend sits in the bucket [1_800_000_000, 1_800_000_001): it leaves 60 s later
    assert info.value.resets_at == datetime.fromtimestamp(1_800_000_060, UTC)
    clock.now = 1_800_000_059.99
    with pytest.raises(BudgetExceeded):
        await fence.reserve("t", "0.01")
    clock.now = 1_800_000_060.0  # at most one bucket (1 s) early: the documented error
    await fence.commit(await fence.reserve("t", "0.50"), "0.50")
    assert await used(fence, "t", "1d") == D(1)
    assert await used(fence, "t", "1m") == D("0.5")


async def test_sliding_requests_and_bounded_memory(
    make_fence: MakeFence, clock: FakeClock, backend: Backend
) -> None:
    fence = make_fence(plans=[BURST], default_plan="burst")
    for _ in range(10):
        await fence.release(await fence.reserve("t", "0.001"))
    with pytest.raises(RequestLimitExceeded) as info:
        await fence.reserve("t", "0.001")
    assert info.value.window == "1m"
    clock.advance(50)
    for _ in range(300):  # fifty minutes of a call every ten seconds
        clock.advance(10)
        await fence.commit(await fence.reserve("t", "0.001"), "0.001")
    s = await fence.status("t")
    minute = next(w for w in s.windows if w.window == "1m")
    assert (minute.used, minute.requests) == (D("0.006"), 6)
    raw = backend.client()
    keys = [k async for k in raw.scan_iter(match=f"{backend.prefix}:*w:1m")]
    assert len(keys) == 1
    assert await raw.hlen(keys[0]) <= 60 + 5  # buckets + totals and marks
    await raw.aclose()


async def test_sliding_window_after_a_long_idle_gap(
    make_fence: MakeFence, clock: FakeClock
) -> None:
    fence = make_fence(plans=[BURST], default_plan="burst")
    await fence.commit(await fence.reserve("t", "0.30"), "0.30")
    clock.advance(30)
    await fence.commit(await fence.reserve("t", "0.10"), "0.10")
    clock.advance(3600)
    assert await used(fence, "t", "1m") == 0
    await fence.reserve("t", "0.50")


# -- rollover ----------------------------------------------------------------------------------


async def test_rollover_is_reported_by_refusals(make_fence: MakeFence, clock: FakeClock) -> None:
    plan = Plan("r", [Limit("1mo", max_cost="10", rollover=0.25)])
    fence = make_fence(plans=[plan], default_plan="r")
    clock.set(datetime(2028, 1, 31, 23, 0, tzinfo=UTC))
    await fence.commit(await fence.reserve("t", "4"), "4")
    clock.set(datetime(2028, 2, 1, 0, 0, tzinfo=UTC))  # Jan 31 -> Feb 1 of a leap year
    with pytest.raises(BudgetExceeded) as info:
        await fence.reserve("t", "12.6")
    assert (info.value.max_cost, info.value.carried) == (D("12.5"), D("2.5"))
    assert info.value.resets_at == datetime(2028, 3, 1, tzinfo=UTC)
    (w,) = (await fence.status("t")).windows
    assert (w.limit, w.carried) == (D("12.5"), D("2.5"))


async def test_a_new_tenants_first_period_carries_nothing(
    make_fence: MakeFence, clock: FakeClock
) -> None:
    """The period before a tenant's first call was not its budget to leave unused."""
    limits = [Limit("1d", max_cost="10", rollover=0.5), Limit("1mo", max_cost="100", rollover=1)]
    fence = make_fence(plans=[Plan("r", limits)], default_plan="r")
    day, month = (await fence.status("new")).windows
    assert (day.limit, day.carried, month.limit, month.carried) == (D(10), D(0), D(100), D(0))
    with pytest.raises(BudgetExceeded) as info:
        await fence.reserve("new", "10.000000001")
    assert (info.value.max_cost, info.value.carried) == (D(10), D(0))
    await fence.commit(await fence.reserve("new", "2"), "2")
    clock.advance(3600)
    day, _ = (await fence.status("new")).windows
    assert (day.limit, day.carried, day.remaining) == (D(10), D(0), D(8))
    clock.advance(86400)  # its second day: what its first left unused carries, capped
    day, month = (await fence.status("new")).windows
    assert (day.limit, day.carried) == (D(15), D(5))
    assert (month.limit, month.carried) == (D(100), D(0))  # still its first month
    await fence.reserve("new", "15")


async def test_a_new_pools_first_period_carries_nothing(
    make_fence: MakeFence, clock: FakeClock
) -> None:
    pool_plan = Plan("org", [Limit("1d", max_cost="4", rollover=1)])
    big = Plan("big", [Limit("1d", max_cost="100")])
    fence = make_fence(plans=[big, pool_plan], default_plan="big")
    await fence.set_pool("a", "org", plan="org")
    with pytest.raises(BudgetExceeded) as info:
        await fence.reserve("a", "4.01")
    assert (info.value.scope, info.value.max_cost) == ("pool", D(4))
    await fence.commit(await fence.reserve("a", "1"), "1")
    clock.advance(86400)
    (w,) = (await fence.status("a")).pool_windows
    assert (w.limit, w.carried) == (D(7), D(3))


# -- feature shares ----------------------------------------------------------------------------

SHARED = Plan("shared", [Limit("1d", max_cost="1")], features={"chat": 0.5, "search": 0.25})
CAPPED = Plan(
    "capped",
    [Limit("1d", max_cost="1")],
    features={"chat": 0.5, "search": 0.25},
    feature_mode="cap",
)


async def test_share_mode_keeps_other_features_guarantees_free(make_fence: MakeFence) -> None:
    fence = make_fence(plans=[SHARED], default_plan="shared")
    # an unlisted feature may use only what no feature is guaranteed: $0.25
    await fence.commit(await fence.reserve("t", "0.25", feature="document_analysis"), "0.25")
    with pytest.raises(BudgetExceeded) as info:
        await fence.reserve("t", "0.01", feature="document_analysis")
    assert info.value.reason == "share"
    assert "other features" in info.value.message
    # search still has its whole guarantee; chat its own
    await fence.commit(await fence.reserve("t", "0.25", feature="search"), "0.25")
    await fence.commit(await fence.reserve("t", "0.5", feature="chat"), "0.5")
    s = await fence.status("t")
    assert s.windows[0].features == {"chat": D("0.5"), "search": D("0.25")}


async def test_share_mode_is_work_conserving(make_fence: MakeFence) -> None:
    fence = make_fence(plans=[SHARED], default_plan="shared")
    # search used its guarantee: chat may borrow everything else, beyond its own 50%
    await fence.commit(await fence.reserve("t", "0.25", feature="search"), "0.25")
    await fence.commit(await fence.reserve("t", "0.75", feature="chat"), "0.75")
    with pytest.raises(BudgetExceeded) as info:
        await fence.reserve("t", "0.000000001", feature="chat")
    assert info.value.reason == "limit"


async def test_open_holds_count_against_a_features_guarantee(make_fence: MakeFence) -> None:
    fence = make_fence(plans=[SHARED], default_plan="shared")
    hold = await fence.reserve("t", "0.25", feature="search")  # search's guarantee, in flight
    await fence.reserve("t", "0.75", feature="chat")  # chat may take the rest, not more
    with pytest.raises(BudgetExceeded):
        await fence.reserve("t", "0.01", feature="search")
    await fence.release(hold)
    await fence.reserve("t", "0.25", feature="search")


async def test_cap_mode_caps_each_feature(make_fence: MakeFence) -> None:
    fence = make_fence(plans=[CAPPED], default_plan="capped")
    await fence.commit(await fence.reserve("t", "0.5", feature="chat"), "0.5")
    with pytest.raises(BudgetExceeded) as info:
        await fence.reserve("t", "0.01", feature="chat")
    err = info.value
    assert (err.reason, err.total_cost, err.max_cost) == ("cap", D("0.5"), D("0.5"))
    assert "for feature 'chat'" in err.message
    with pytest.raises(BudgetExceeded):
        await fence.reserve("t", "0.01", feature="unlisted")  # weight 0: capped at $0
    await fence.reserve("t", "0.25", feature="search")


async def test_feature_usage_resets_with_the_period(
    make_fence: MakeFence, clock: FakeClock
) -> None:
    fence = make_fence(plans=[CAPPED], default_plan="capped")
    await fence.commit(await fence.reserve("t", "0.5", feature="chat"), "0.5")
    clock.advance(86400)
    assert (await fence.status("t")).windows[0].features == {"chat": D(0), "search": D(0)}
    await fence.reserve("t", "0.5", feature="chat")


# -- pools -------------------------------------------------------------------------------------

OWNED = Plan("own", [Limit("1d", max_cost="0.80")])
POOL = Plan("org", [Limit("1d", max_cost="1.00", max_requests=100)])


async def test_pool_limits_are_checked_with_the_tenants(make_fence: MakeFence) -> None:
    fence = make_fence(plans=[OWNED, POOL], default_plan="own")
    await fence.set_pool("a", "acme-org", plan="org")
    await fence.set_pool("b", "acme-org")
    await fence.commit(await fence.reserve("a", "0.6"), "0.6")
    with pytest.raises(BudgetExceeded) as info:
        await fence.reserve("b", "0.5")
    err = info.value
    assert (err.scope, err.pool, err.total_cost, err.max_cost) == (
        "pool",
        "acme-org",
        D("0.6"),
        D(1),
    )
    assert "pool 'acme-org'" in err.message
    await fence.commit(await fence.reserve("b", "0.4"), "0.4")
    s = await fence.status("b")
    assert (s.pool, s.pool_plan) == ("acme-org", "org")
    assert (s.windows[0].used, s.pool_windows[0].used) == (D("0.4"), D(1))
    assert s.pool_windows[0].requests == 2


async def test_a_second_instance_finds_the_pool(make_fence: MakeFence) -> None:
    a = make_fence(plans=[OWNED, POOL], default_plan="own")
    b = make_fence(plans=[OWNED, POOL], default_plan="own")
    await b.reserve("x", "0.1")  # b believes x is on its own
    await a.set_pool("x", "p", plan="org")
    await a.set_pool("y", "p")
    await a.commit(await a.reserve("y", "0.75"), "0.75")
    with pytest.raises(BudgetExceeded) as info:
        await b.reserve("x", "0.3")  # routed to the pool, checked against it
    assert info.value.scope == "pool"


async def test_moving_keeps_spend_and_open_holds_exactly(make_fence: MakeFence) -> None:
    fence = make_fence(plans=[OWNED, POOL], default_plan="own")
    await fence.commit(await fence.reserve("a", "0.3", feature="chat"), "0.3")
    hold = await fence.reserve("a", "0.2")
    await fence.set_pool("a", "p1", plan="org")
    s = await fence.status("a")
    assert (s.windows[0].used, s.held, s.open_holds, s.pool) == (D("0.3"), D("0.2"), 1, "p1")
    assert s.pool_windows[0].used == 0  # spend before joining stays out of the pool's limit
    await fence.set_pool("a", "p2", plan="org")
    assert (await fence.commit(hold, "0.15")).late is False  # settled where it lives now
    assert (await fence.commit(hold, "0.15")).duplicate is True
    s = await fence.status("a")
    assert (s.windows[0].used, s.held, s.open_holds) == (D("0.45"), D(0), 0)
    assert (s.pool, s.pool_windows[0].used) == ("p2", D("0.15"))
    await fence.set_pool("a", None)
    s = await fence.status("a")
    assert (s.pool, s.windows[0].used, s.held) == (None, D("0.45"), D(0))
    await fence.set_pool("b", "p1")
    assert (await fence.status("b")).held == 0  # p1 kept no trace of a's hold
    with pytest.raises(BudgetExceeded):
        await fence.reserve("a", "0.36")  # 0.45 + 0.36 > 0.80: nothing was lost in moves


async def test_plan_and_switches_follow_the_tenant(make_fence: MakeFence) -> None:
    fence = make_fence(plans=[OWNED, POOL], default_plan="own")
    await fence.set_plan("a", "org")
    await fence.kill("a", feature="search")
    await fence.set_pool("a", "p", plan="org")
    s = await fence.status("a")
    assert (s.plan, s.killed_features) == ("org", ("search",))
    await fence.revive("a", feature="search")
    await fence.set_plan("a", "own")
    assert (await fence.status("a")).plan == "own"


async def test_pool_needs_a_plan(make_fence: MakeFence) -> None:
    fence = make_fence(plans=[OWNED, POOL], default_plan="own")
    with pytest.raises(ConfigError, match="no plan"):
        await fence.set_pool("a", "fresh")


async def test_hostile_pool_ids_stay_apart(make_fence: MakeFence) -> None:
    fence = make_fence(plans=[OWNED, POOL], default_plan="own")
    await fence.set_pool("a", "p}x", plan="org")
    await fence.set_pool("b", "p", plan="org")
    await fence.commit(await fence.reserve("a", "0.7"), "0.7")
    await fence.reserve("b", "0.7")


# -- alerts ------------------------------------------------------------------------------------


async def test_thresholds_are_reported_once_per_window(
    make_fence: MakeFence, clock: FakeClock
) -> None:
    fence = make_fence(plans=[Plan("a", [Limit("1d", max_cost="1")])], default_plan="a")
    seen: list[Alert] = []
    fence.on_alert(seen.append)
    for cost in ("0.3", "0.3", "0.1", "0.15", "0.1"):  # 30% 60% 70% 85% 95%
        await fence.commit(await fence.reserve("t", cost), cost)
    with pytest.raises(BudgetExceeded):
        await fence.reserve("t", "0.1")  # too large, but the limit is not reached: no alert
    last = await fence.reserve("t", "0.05")  # spend and holds now fill the limit
    with pytest.raises(BudgetExceeded):
        await fence.reserve("t", "0.01")  # refused at 100%: reported at reserve
    with pytest.raises(BudgetExceeded):
        await fence.reserve("t", "0.01")
    await fence.commit(last, "0.05")
    await fence._alerts.drain()
    assert [(a.threshold, a.used) for a in seen] == [(50, D("0.6")), (80, D("0.85")), (100, D(1))]
    assert (seen[0].metric, seen[0].window, seen[0].tenant_id) == ("cost", "1d", "t")
    clock.advance(86400)
    await fence.commit(await fence.reserve("t", "0.9"), "0.9")
    await fence._alerts.drain()
    assert [a.threshold for a in seen[3:]] == [50, 80]


async def test_request_thresholds(make_fence: MakeFence) -> None:
    plan = Plan("a", [Limit("1h", max_requests=4)])
    fence = make_fence(plans=[plan], default_plan="a")
    seen: list[Alert] = []
    fence.on_alert(seen.append)
    for _ in range(4):
        await fence.release(await fence.reserve("t", "0.01"))
    await fence._alerts.drain()
    assert [(a.metric, a.threshold, a.used) for a in seen] == [
        ("requests", 50, 2),
        ("requests", 80, 4),
        ("requests", 100, 4),
    ]


async def test_slow_or_failing_hooks_never_delay_or_fail_a_call(make_fence: MakeFence) -> None:
    fence = make_fence(plans=[Plan("a", [Limit("1d", max_cost="1")])], default_plan="a")
    delivered: list[int] = []

    async def slow(alert: Alert) -> None:
        await asyncio.sleep(2)
        delivered.append(alert.threshold)

    def failing(alert: Alert) -> None:
        raise RuntimeError("webhook down")

    fence.on_alert(slow)
    fence.on_alert(failing)
    started = time.monotonic()
    await fence.commit(await fence.reserve("t", "0.9"), "0.9")
    assert time.monotonic() - started < 1
    await fence._alerts.drain()
    assert delivered == [50, 80]
    assert fence.counters.alert_hook_errors == 2


async def test_a_retried_reserve_reports_the_alerts_its_first_call_raised(
    make_fence: MakeFence,
) -> None:
    """A reserve whose reply was lost (the script ran) and that is sent again with the same
    reservation id gets the same hold and the alerts the first run raised, marked repeated."""
    plan = Plan("a", [Limit("1d", max_cost="1", max_requests=2)])
    lost = make_fence(plans=[plan], default_plan="a")  # its caller never saw the reply
    fence = make_fence(plans=[plan], default_plan="a")
    seen: list[Alert] = []
    fence.on_alert(seen.append)
    first = await lost.reserve("t", "0.9", reservation_id="call-1")
    retried = await fence.reserve("t", "0.9", reservation_id="call-1")
    assert (retried.id, retried.expires_at) == (first.id, first.expires_at)
    await fence._alerts.drain()
    assert [(a.metric, a.threshold, a.used, a.reservation_id, a.repeated) for a in seen] == [
        ("requests", 50, 1, "call-1", True),
    ]
    again = await fence.reserve("t", "0.9", reservation_id="call-1")  # at least once, each time
    assert again.id == "call-1"
    await fence._alerts.drain()
    assert len(seen) == 2
    (w,) = (await fence.status("t")).windows
    assert (w.requests, w.held) == (1, D("0.9"))  # one hold, one request: nothing counted twice


async def test_a_repeated_commit_reports_the_alerts_its_first_run_raised(
    make_fence: MakeFence,
) -> None:
    plan = Plan("a", [Limit("1d", max_cost="1")])
    lost = make_fence(plans=[plan], default_plan="a")
    fence = make_fence(plans=[plan], default_plan="a")
    seen: list[Alert] = []
    fence.on_alert(seen.append)
    r = await fence.reserve("t", "0.9", reservation_id="call-1", feature="chat")
    assert (await lost.commit(r, "0.85")).duplicate is False
    settled = await fence.commit(r, "0.85")
    assert (settled.duplicate, settled.cost) == (True, D("0.85"))
    await fence._alerts.drain()
    assert [(a.threshold, a.used, a.feature, a.reservation_id, a.repeated) for a in seen] == [
        (50, D("0.85"), "chat", "call-1", True),
        (80, D("0.85"), "chat", "call-1", True),
    ]
    other = await fence.reserve("t", "0.1")
    await fence.release(other)
    assert (await fence.commit(other, "0.1")).duplicate is True  # released: no alerts to repeat
    await fence._alerts.drain()
    assert len(seen) == 2
    (w,) = (await fence.status("t")).windows
    assert w.used == D("0.85")


async def test_first_reports_are_not_marked_repeated(make_fence: MakeFence) -> None:
    fence = make_fence(plans=[Plan("a", [Limit("1d", max_cost="1")])], default_plan="a")
    seen: list[Alert] = []
    fence.on_alert(seen.append)
    r = await fence.reserve("t", "0.6", reservation_id="x")
    await fence.commit(r, "0.6")
    await fence._alerts.drain()
    assert [(a.threshold, a.reservation_id, a.repeated) for a in seen] == [(50, "x", False)]


# -- shadow mode -------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["plan", "fence"])
async def test_shadow_mode_records_but_never_refuses(make_fence: MakeFence, where: str) -> None:
    limits = [Limit("1d", max_cost="1", max_requests=2)]
    if where == "plan":
        fence = make_fence(plans=[Plan("s", limits, enforce=False)], default_plan="s")
    else:
        fence = make_fence(plans=[Plan("s", limits)], default_plan="s", enforce=False)
    seen: list[Alert] = []
    fence.on_alert(seen.append)
    await fence.commit(await fence.reserve("t", "0.9"), "0.9")
    over = await fence.reserve("t", "0.5")
    assert isinstance(over.shadow_refusal, BudgetExceeded)
    await fence.commit(over, "0.5")
    third = await fence.reserve("t", "0.1")
    assert isinstance(third.shadow_refusal, RequestLimitExceeded)
    (w,) = (await fence.status("t")).windows
    assert (w.used, w.requests, w.remaining) == (D("1.4"), 3, D(0))
    assert fence.counters.shadow_refusals == 2
    await fence._alerts.drain()
    assert [a.threshold for a in seen if a.metric == "cost"] == [50, 80, 100]


# -- configuration drift between instances -----------------------------------------------------


async def test_a_plan_unknown_to_an_instance_falls_back_to_its_default(
    make_fence: MakeFence,
) -> None:
    new = make_fence(plans=[OWNED, POOL], default_plan="own")
    old = make_fence(plans=[OWNED], default_plan="own")  # an older config, without "org"
    await new.set_plan("acme", "org")
    r = await old.reserve("acme", "0.5")  # priced with the default plan's limits, no loop
    await old.commit(r, "0.5")
    with pytest.raises(BudgetExceeded) as info:
        await old.reserve("acme", "0.4")
    assert info.value.max_cost == D("0.80")
    assert (await old.status("acme")).plan == "org"


async def test_pools_work_without_caches(make_fence: MakeFence) -> None:
    fence = make_fence(plans=[OWNED, POOL], default_plan="own", cache_size=0)
    await fence.set_pool("a", "p", plan="org")
    await fence.commit(await fence.reserve("a", "0.5"), "0.5")
    assert (await fence.status("a")).pool_windows[0].used == D("0.5")


async def test_commit_follows_a_plan_changed_mid_call(make_fence: MakeFence) -> None:
    hourly = Plan("hourly", [Limit("1d", max_cost="1"), Limit("1h", max_cost="1", kind="sliding")])
    a = make_fence(plans=[OWNED, POOL, hourly], default_plan="own")
    b = make_fence(plans=[OWNED, POOL, hourly], default_plan="own")
    r = await b.reserve("acme", "0.2")
    await a.set_plan("acme", "hourly")
    await a.set_pool("acme", "p", plan="org")
    await b.commit(r, "0.2")  # b still believes "own", on its own tag
    s = await a.status("acme")
    assert [w.used for w in s.windows] == [D("0.2"), D("0.2")]
    assert (s.pool_windows[0].used, s.held, s.pool_windows[0].held) == (D("0.2"), 0, 0)


@pytest.mark.parametrize("crash_after", ["out", "in", "point"])
async def test_an_interrupted_move_is_finished_by_the_next_set_pool(
    make_fence: MakeFence, crash_after: str
) -> None:
    fence = make_fence(plans=[OWNED, POOL], default_plan="own")
    await fence.set_pool("a", "p1", plan="org")
    await fence.set_pool_plan("p2", "org")
    await fence.commit(await fence.reserve("a", "0.1"), "0.1")
    hold = await fence.reserve("a", "0.2")
    router = fence._router
    real_run = router.run

    async def crashing(name: str, keys: list[str], args: list[str]) -> list[str]:
        reply = await real_run(name, keys, args)
        if name == "move" and args[0] == crash_after:
            raise StoreUnavailable("connection lost")
        return reply

    router.run = crashing  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await fence.set_pool("a", "p2")  # p1 -> p2 stops after one step
    router.run = real_run  # type: ignore[method-assign]
    await fence.set_pool("a", None)  # finishes p1 -> p2, then p2 -> own
    s = await fence.status("a")
    assert (s.pool, s.windows[0].used, s.held, s.open_holds) == (None, D("0.1"), D("0.2"), 1)
    assert (await fence.commit(hold, "0.2")).duplicate is False
    assert (await fence.status("a")).windows[0].used == D("0.3")  # nothing counted twice
    await fence.set_pool("b", "p1")
    await fence.set_pool("c", "p2")
    assert (await fence.status("b")).held == 0
    assert (await fence.status("c")).held == 0
