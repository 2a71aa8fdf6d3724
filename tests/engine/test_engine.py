"""The engine's rules, on real Redis and on the embedded store (same test bodies)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tests.conftest import Backend, FakeClock
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import (
    BudgetExceeded,
    ConfigError,
    InvalidAmount,
    InvalidId,
    RequestLimitExceeded,
    ReservationIdConflict,
    StoreUnavailable,
    TenantDisabled,
    TooManyOpenHolds,
    UnknownPlan,
)
from tokenfence_asgi.results import Reservation
from tokenfence_asgi.web.problem import http_status

MakeFence = Callable[..., TokenFence]
D = Decimal

DAY = Plan("day", [Limit("1d", max_cost="1.00", max_requests=1000)])
TIGHT = Plan("tight", [Limit("1d", max_cost="1.00", max_requests=3), Limit("1mo", max_cost="2")])
BIG = Plan("big", [Limit("1d", max_cost="1000")])
PLANS = [DAY, TIGHT, BIG]


async def day_window(fence: TokenFence, tenant: str) -> tuple[Decimal, Decimal, int]:
    s = await fence.status(tenant)
    w = next(w for w in s.windows if w.window == "1d")
    return w.used, w.held, w.requests


async def test_reserve_commit_charges_the_actual_cost(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    r = await fence.reserve("acme", "0.02", feature="chat", model="gpt-4o")
    assert (r.tenant_id, r.feature, r.model, r.amount, r.plan) == (
        "acme",
        "chat",
        "gpt-4o",
        D("0.02"),
        "day",
    )
    assert await day_window(fence, "acme") == (D(0), D("0.02"), 1)
    settled = await fence.commit(r, "0.013", input_tokens=100, output_tokens=20)
    assert (settled.cost, settled.late, settled.duplicate) == (D("0.013"), False, False)
    s = await fence.status("acme")
    (w,) = s.windows
    assert (w.used, w.held, w.limit, w.remaining, w.requests) == (
        D("0.013"),
        D(0),
        D("1"),
        D("0.987"),
        1,
    )
    assert s.plan == "day"
    assert s.open_holds == 0


@pytest.mark.parametrize("amount", ["0.10", "1.00", "100", "0.000000001", "0.0000135"])
async def test_round_amounts_reach_redis_as_integers(make_fence: MakeFence, amount: str) -> None:
    """$0.10 is 1e8 nano-dollars: the value some Redis releases received as '1e+08'."""
    fence = make_fence(plans=PLANS, default_plan="big")
    r = await fence.reserve("t", amount)
    await fence.commit(r, amount)
    r2 = await fence.reserve("t", amount)
    await fence.commit(r2, amount)
    assert (await day_window(fence, "t"))[0] == 2 * D(amount)


async def test_refused_call_consumes_nothing(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    r = await fence.reserve("acme", "0.60")
    before = await fence.status("acme")
    with pytest.raises(BudgetExceeded) as info:
        await fence.reserve("acme", "0.50")
    assert await fence.status("acme") == before
    err = info.value
    assert (err.window, err.total_cost, err.held, err.max_cost) == ("1d", D(0), D("0.6"), D("1"))
    assert err.resets_at == datetime(2026, 3, 16, tzinfo=UTC)
    body = err.to_dict()
    assert body["error"] == "ai_budget_exceeded"
    assert (body["used"], body["limit"], body["window"]) == ("0.000000", "1.000000", "1d")
    assert body["resets_at"] == "2026-03-16T00:00:00Z"
    await fence.commit(r, "0.60")
    # exactly what is left still fits
    await fence.reserve("acme", "0.40")


async def test_request_limit(make_fence: MakeFence, clock: FakeClock) -> None:
    fence = make_fence(plans=PLANS, default_plan="tight")
    for _ in range(3):
        await fence.release(await fence.reserve("acme", "0.01"))
    with pytest.raises(RequestLimitExceeded) as info:
        await fence.reserve("acme", "0.01")
    assert (info.value.requests, info.value.max_requests, info.value.window) == (3, 3, "1d")
    assert info.value.to_dict()["error"] == "ai_request_limit_exceeded"
    clock.set(datetime(2026, 3, 16, 0, 0, tzinfo=UTC))
    await fence.reserve("acme", "0.01")


async def test_every_limit_is_checked_first_failing_reported(
    make_fence: MakeFence, clock: FakeClock
) -> None:
    fence = make_fence(plans=PLANS, default_plan="tight")
    r = await fence.reserve("acme", "0.90")
    await fence.commit(r, "0.90")
    clock.advance(86400)  # new day; the month still holds $0.90
    r = await fence.reserve("acme", "0.90")
    await fence.commit(r, "0.90")
    clock.advance(86400)
    with pytest.raises(BudgetExceeded) as info:
        await fence.reserve("acme", "0.30")
    assert (info.value.window, info.value.total_cost, info.value.max_cost) == (
        "1mo",
        D("1.8"),
        D("2"),
    )
    assert info.value.resets_at == datetime(2026, 4, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("window", "start", "reset"),
    [
        ("1m", datetime(2026, 3, 15, 12, 0, 30), datetime(2026, 3, 15, 12, 1)),
        ("1h", datetime(2026, 3, 15, 12, 59, 59), datetime(2026, 3, 15, 13, 0)),
        ("1d", datetime(2026, 12, 31, 23, 59), datetime(2027, 1, 1)),
        ("7d", datetime(2026, 3, 15, 23, 0), datetime(2026, 3, 16)),  # Sunday -> Monday
        ("7d", datetime(2026, 3, 16, 0, 0), datetime(2026, 3, 23)),
        ("1mo", datetime(2026, 1, 31, 18, 0), datetime(2026, 2, 1)),
        ("1mo", datetime(2028, 2, 29, 23, 0), datetime(2028, 3, 1)),  # leap day
        ("1mo", datetime(2026, 12, 5), datetime(2027, 1, 1)),
    ],
)
async def test_calendar_windows_align_to_utc(
    make_fence: MakeFence, clock: FakeClock, window: str, start: datetime, reset: datetime
) -> None:
    plan = Plan("w", [Limit(window, max_cost="1")])
    fence = make_fence(plans=[plan], default_plan="w")
    clock.set(start.replace(tzinfo=UTC))
    await fence.commit(await fence.reserve("acme", "1"), "1")
    with pytest.raises(BudgetExceeded) as info:
        await fence.reserve("acme", "0.01")
    assert info.value.resets_at == reset.replace(tzinfo=UTC)
    clock.set(reset.replace(tzinfo=UTC) - timedelta(seconds=1))
    with pytest.raises(BudgetExceeded):
        await fence.reserve("acme", "0.01")
    clock.set(reset.replace(tzinfo=UTC))
    await fence.reserve("acme", "1")


async def test_hold_counts_until_settled_and_release_frees_it(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    r = await fence.reserve("acme", "1.00")
    with pytest.raises(BudgetExceeded):
        await fence.reserve("acme", "0.000000001")
    assert (await fence.release(r)).duplicate is False
    assert (await fence.release(r)).duplicate is True
    assert await day_window(fence, "acme") == (D(0), D(0), 1)
    await fence.reserve("acme", "1.00")


async def test_expired_holds_are_reclaimed(make_fence: MakeFence, clock: FakeClock) -> None:
    fence = make_fence(plans=PLANS, default_plan="day", hold_ttl=60)
    await fence.reserve("acme", "0.70")
    clock.advance(59)
    with pytest.raises(BudgetExceeded):
        await fence.reserve("acme", "0.70")
    clock.advance(1)
    r = await fence.reserve("acme", "0.70")
    assert r.expires_at == datetime.fromtimestamp(clock.now + 60, UTC)
    s = await fence.status("acme")
    assert (s.held, s.open_holds) == (D("0.7"), 1)


async def test_reclaim_work_per_call_is_bounded(make_fence: MakeFence, clock: FakeClock) -> None:
    fence = make_fence(plans=PLANS, default_plan="big", hold_ttl=10, reclaim_batch=2)
    for _ in range(5):
        await fence.reserve("acme", "1")
    clock.advance(10)
    assert [(await fence.status("acme")).open_holds for _ in range(4)] == [3, 1, 0, 0]
    assert (await fence.status("acme")).held == 0


async def test_commit_and_release_are_idempotent(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    r = await fence.reserve("acme", "0.50")
    first, second = await fence.commit(r, "0.25"), await fence.commit(r, "0.25")
    assert (first.cost, first.duplicate) == (D("0.25"), False)
    assert (second.cost, second.duplicate) == (D("0.25"), True)  # what the first one charged
    assert (await fence.release(r)).duplicate is True
    assert await day_window(fence, "acme") == (D("0.25"), D(0), 1)
    released = await fence.reserve("acme", "0.10")
    await fence.release(released)
    assert (await fence.commit(released, "0.10")).duplicate is True
    assert await day_window(fence, "acme") == (D("0.25"), D(0), 2)


async def test_concurrent_commits_of_one_id_charge_once(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    r = await fence.reserve("acme", "0.50")
    results = await asyncio.gather(*(fence.commit(r, "0.40") for _ in range(20)))
    assert sum(not s.duplicate for s in results) == 1
    assert (await day_window(fence, "acme"))[:2] == (D("0.4"), D(0))


async def test_repeated_reservation_id_returns_the_same_hold(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    a = await fence.reserve("acme", "0.30", reservation_id="call-1")
    b = await fence.reserve("acme", "0.30", reservation_id="call-1")
    assert (a.id, a.expires_at) == (b.id, b.expires_at)
    assert await day_window(fence, "acme") == (D(0), D("0.3"), 1)
    # A retry with a shorter candidate list cannot name the candidate that was held.
    first = await fence.reserve_first("acme", [("a", 10**12), ("b", 10**6)], reservation_id="c-2")
    assert first.model == "b"
    with pytest.raises(ReservationIdConflict, match="another call") as conflict:
        await fence.reserve_first("acme", [("a", 10**6)], reservation_id="c-2")
    assert not conflict.value.settled
    assert http_status(conflict.value) == 409
    await fence.commit(a, "0.1")
    with pytest.raises(InvalidId, match="already used") as settled:
        await fence.reserve("acme", "0.30", reservation_id="call-1")
    assert isinstance(settled.value, ReservationIdConflict)
    assert settled.value.settled


async def test_late_commit_charges_actual_cost_once(
    make_fence: MakeFence, clock: FakeClock
) -> None:
    fence = make_fence(plans=PLANS, default_plan="day", hold_ttl=30)
    r = await fence.reserve("acme", "0.20")
    clock.advance(31)
    assert (await fence.status("acme")).held == 0  # reclaimed
    settled = await fence.commit(r, "0.15")
    assert (settled.cost, settled.late) == (D("0.15"), True)
    assert (await fence.commit(r, "0.15")).duplicate is True
    assert (await day_window(fence, "acme"))[:2] == (D("0.15"), D(0))


async def test_commit_of_an_id_the_store_forgot_is_charged_late(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    lost = Reservation("lost-1", "acme", None, None, D("0.1"), 10**8, "day")
    settled = await fence.commit(lost, "0.07")
    assert (settled.cost, settled.late) == (D("0.07"), True)
    assert (await fence.commit(lost, "0.07")).duplicate is True
    assert (await day_window(fence, "acme"))[0] == D("0.07")


async def test_overage_is_charged_in_full(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    r = await fence.reserve("acme", "0.10")
    await fence.commit(r, "0.95")  # the provider billed more than the estimate
    assert (await day_window(fence, "acme"))[0] == D("0.95")
    with pytest.raises(BudgetExceeded):
        await fence.reserve("acme", "0.06")


async def test_300_concurrent_reserves_admit_exactly_what_fits(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    results = await asyncio.gather(
        *(fence.reserve("acme", "0.0123") for _ in range(300)), return_exceptions=True
    )
    admitted = [r for r in results if isinstance(r, Reservation)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(admitted) == int(D("1") / D("0.0123")) == 81
    assert len(refused) == 300 - 81
    used, held, requests = await day_window(fence, "acme")
    assert (used, held, requests) == (D(0), D("0.0123") * 81, 81)


async def test_kill_switches(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    await fence.kill("acme")
    with pytest.raises(TenantDisabled) as info:
        await fence.reserve("acme", "0.01")
    assert (info.value.scope, http_status(info.value)) == ("tenant", 403)
    assert info.value.to_dict()["error"] == "ai_disabled"
    await fence.reserve("other", "0.01")
    await fence.revive("acme")
    await fence.kill("acme", feature="document_analysis")
    with pytest.raises(TenantDisabled) as info:
        await fence.reserve("acme", "0.01", feature="document_analysis")
    assert info.value.scope == "feature"
    await fence.reserve("acme", "0.01", feature="chat")
    assert (await fence.status("acme")).killed_features == ("document_analysis",)
    await fence.revive("acme", feature="document_analysis")
    await fence.reserve("acme", "0.01", feature="document_analysis")


async def test_has_tenant_is_true_once_the_store_holds_state_for_it(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    await fence.status("ghost")
    await fence.revive("ghost")
    assert not await fence.has_tenant("ghost")  # reading and reviving create nothing
    await fence.release(await fence.reserve("caller", "0.01"))
    await fence.set_plan("planned", "big")
    await fence.kill("killed")
    await fence.set_pool("pooled", "org", plan="day")
    for tenant in ("caller", "planned", "killed", "pooled"):
        assert await fence.has_tenant(tenant), tenant
    assert sorted([t async for t in fence.tenants()]) == ["caller", "killed", "planned", "pooled"]
    with pytest.raises(InvalidId):
        await fence.has_tenant("")


async def test_global_kill_reaches_every_instance_within_the_cache_interval(
    make_fence: MakeFence,
) -> None:
    a = make_fence(plans=PLANS, default_plan="day", kill_cache_s=0.2)
    b = make_fence(plans=PLANS, default_plan="day", kill_cache_s=0.2)
    assert TokenFence.__init__.__kwdefaults__["kill_cache_s"] == 1.0
    await b.reserve("acme", "0.01")  # b has read the switches
    await a.kill()
    with pytest.raises(TenantDisabled) as info:
        await a.reserve("acme", "0.01")  # the instance that killed knows at once
    assert info.value.scope == "global"
    deadline = time.monotonic() + 0.2
    refused_at = None
    while refused_at is None:
        try:
            await b.reserve("acme", "0.000001")
        except TenantDisabled:
            refused_at = time.monotonic()
        await asyncio.sleep(0.01)
    assert refused_at <= deadline + 0.1
    await a.kill(feature="search")
    await a.revive()
    with pytest.raises(TenantDisabled):
        await a.reserve("acme", "0.01", feature="search")
    await a.reserve("acme", "0.01", feature="chat")


async def test_plan_assignment_is_honoured_by_every_instance(make_fence: MakeFence) -> None:
    a = make_fence(plans=PLANS, default_plan="day")
    b = make_fence(plans=PLANS, default_plan="day")
    with pytest.raises(BudgetExceeded):
        await b.reserve("acme", "5")  # b now believes acme is on "day"
    await a.set_plan("acme", "big")
    r = await b.reserve("acme", "5")  # the stored plan wins on the next reserve
    assert r.plan == "big"
    assert (await b.status("acme")).plan == "big"
    with pytest.raises(UnknownPlan, match="no-such"):
        await a.set_plan("acme", "no-such")


async def test_rollover_carries_unused_budget_once(make_fence: MakeFence, clock: FakeClock) -> None:
    plan = Plan("r", [Limit("1d", max_cost="10", rollover=0.5)])
    fence = make_fence(plans=[plan], default_plan="r")
    await fence.commit(await fence.reserve("acme", "2"), "2")  # $8 unused, $5 may carry
    clock.advance(86400)
    (w,) = (await fence.status("acme")).windows
    assert (w.limit, w.carried, w.remaining) == (D(15), D(5), D(15))
    await fence.commit(await fence.reserve("acme", "15"), "15")
    clock.advance(86400)  # spent $15 of $15: nothing carries, and nothing compounds
    (w,) = (await fence.status("acme")).windows
    assert (w.limit, w.carried) == (D(10), D(0))
    clock.advance(2 * 86400)  # an idle day in between: only the preceding period counts
    (w,) = (await fence.status("acme")).windows
    assert (w.limit, w.carried) == (D(15), D(5))
    await fence.commit(await fence.reserve("acme", "7"), "7")
    clock.advance(86400)  # $3 unused, under the $5 cap: exactly $13 fits, not a nano more
    with pytest.raises(BudgetExceeded) as info:
        await fence.reserve("acme", "13.000000001")
    assert (info.value.max_cost, info.value.window) == (D(13), "1d")
    await fence.reserve("acme", "13")


async def test_script_cache_flush_is_survived(make_fence: MakeFence, backend: Backend) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    r = await fence.reserve("acme", "0.1")
    raw = backend.client()
    await raw.script_flush()
    await fence.ping()
    await raw.script_flush()
    await fence.commit(r, "0.1")
    await raw.script_flush()
    assert (await day_window(fence, "acme"))[0] == D("0.1")
    await raw.aclose()


@pytest.mark.parametrize(
    "tenant",
    [
        "a:b",
        "a",
        "a}b",
        "{a}",
        "x}y",
        "x",
        "%41",
        "A",
        "a b",
        "ä",
        "租户",
        "🙂" * 200,
        "k:",
        "a\\b",
    ],
)
async def test_hostile_tenant_ids_get_their_own_budget(make_fence: MakeFence, tenant: str) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    others = ["a:b", "a", "a}b", "{a}", "x}y", "x", "%41", "A", "k:"]
    for other in others:
        if other != tenant:
            await fence.reserve(other, "0.5")
    await fence.commit(await fence.reserve(tenant, "1"), "1")
    assert (await day_window(fence, tenant))[0] == 1
    for other in others:
        if other != tenant:
            assert (await day_window(fence, other))[1] == D("0.5")


@pytest.mark.parametrize(
    ("tenant", "match"),
    [
        ("", "empty"),
        ("x" * 201, "maximum"),
        ("a\nb", "control"),
        ("a\x00", "control"),
        ("\u200b", "control"),
        (42, "string"),
        (None, "string"),
    ],
)
async def test_bad_ids_are_refused_clearly(
    make_fence: MakeFence, tenant: object, match: str
) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    with pytest.raises(InvalidId, match=match):
        await fence.reserve(tenant, "0.01")  # type: ignore[arg-type]
    with pytest.raises(InvalidId, match="feature"):
        await fence.reserve("acme", "0.01", feature="")


@pytest.mark.parametrize("amount", ["-0.01", "NaN", "inf", "abc", 1_000_001, True, None])
async def test_bad_amounts_are_refused_and_change_nothing(
    make_fence: MakeFence, amount: object
) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    with pytest.raises(InvalidAmount):
        await fence.reserve("acme", amount)  # type: ignore[arg-type]
    r = await fence.reserve("acme", "0.01")
    with pytest.raises(InvalidAmount):
        await fence.commit(r, amount)  # type: ignore[arg-type]
    assert await day_window(fence, "acme") == (D(0), D("0.01"), 1)


@pytest.mark.parametrize("amount", ["0", 0, D("0.000"), "-0", 0.0])
async def test_a_zero_amount_is_refused_naming_the_field(
    make_fence: MakeFence, amount: object
) -> None:
    """A hold of $0 limits nothing: reserve refuses it before the store is asked."""
    fence = make_fence(plans=PLANS, default_plan="day")
    with pytest.raises(InvalidAmount, match=r"^amount: zero amount .*above \$0") as info:
        await fence.reserve("acme", amount)  # type: ignore[arg-type]
    assert (http_status(info.value), info.value.error_code) == (422, "invalid_amount")
    s = await fence.status("acme")
    assert (s.open_holds, s.windows[0].requests) == (0, 0)
    await fence.reserve("acme", "0.000000001")  # the smallest amount is accepted
    r = await fence.reserve("acme", "0.01")
    assert (await fence.commit(r, "0")).cost == 0  # a call may still cost nothing


async def test_open_holds_are_bounded_per_tenant(make_fence: MakeFence, clock: FakeClock) -> None:
    fence = make_fence(plans=PLANS, default_plan="big", max_open_holds=3, hold_ttl=60)
    first = await fence.reserve("acme", "0.01", reservation_id="first")
    clock.advance(10)
    held = [first, *[await fence.reserve("acme", "0.01") for _ in range(2)]]
    with pytest.raises(TooManyOpenHolds) as info:
        await fence.reserve("acme", "0.01")
    err = info.value
    assert isinstance(err, RequestLimitExceeded)  # a 429, handled like a request limit
    assert (http_status(err), err.error_code) == (429, "ai_too_many_open_holds")
    assert (err.requests, err.max_requests) == (3, 3)
    assert err.resets_at == first.expires_at  # when the earliest hold's lease ends
    assert "3 AI calls in flight" in err.message
    assert err.to_dict()["window"] == "open_holds"
    assert (await fence.status("acme")).open_holds == 3
    again = await fence.reserve("acme", "0.01", reservation_id="first")  # a retry, not a 4th
    assert again.expires_at == first.expires_at
    await fence.reserve("other", "0.01")  # the bound is per tenant
    await fence.release(held[1])
    await fence.reserve("acme", "0.01")  # a settled hold frees its place
    with pytest.raises(TooManyOpenHolds):
        await fence.reserve("acme", "0.01")


async def test_expired_holds_never_lock_a_tenant_out_past_their_lease(
    make_fence: MakeFence, clock: FakeClock
) -> None:
    """A process that crashed with max_open_holds calls in flight: the next reserve after
    their lease reclaims one first, even when it may reclaim only one per call."""
    fence = make_fence(
        plans=PLANS, default_plan="big", max_open_holds=4, hold_ttl=60, reclaim_batch=1
    )
    for _ in range(4):
        await fence.reserve("acme", "0.5")
    clock.advance(59)
    with pytest.raises(TooManyOpenHolds) as info:
        await fence.reserve("acme", "0.5")
    assert info.value.retry_after_s(datetime.fromtimestamp(clock.now, UTC)) == 1
    clock.advance(1)
    r = await fence.reserve("acme", "0.5")
    assert r.expires_at == datetime.fromtimestamp(clock.now + 60, UTC)
    s = await fence.status("acme")  # status reclaims one more
    assert (s.open_holds, s.held) == (3, D("1.5"))


async def test_open_holds_bound_counts_zero_holds_and_holds_in_shadow_mode(
    make_fence: MakeFence,
) -> None:
    """$0 candidates (a model priced at $0) still hold a place; shadow mode never lifts it."""
    shadow = Plan("shadow", [Limit("1d", max_cost="0.01")], enforce=False)
    fence = make_fence(plans=[shadow], default_plan="shadow", max_open_holds=2)
    await fence.reserve_first("acme", [("free-model", 0)])
    over = await fence.reserve("acme", "5")
    assert isinstance(over.shadow_refusal, BudgetExceeded)
    with pytest.raises(TooManyOpenHolds):
        await fence.reserve_first("acme", [("free-model", 0)])


async def test_pool_members_each_have_their_own_open_holds_bound(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="big", max_open_holds=2)
    for tenant in ("a", "b"):
        await fence.set_pool(tenant, "org", plan="big")
    await fence.reserve("b", "0.01")
    for _ in range(2):
        await fence.reserve("a", "0.01")
    with pytest.raises(TooManyOpenHolds) as info:
        await fence.reserve("a", "0.01")
    assert info.value.requests == 2
    await fence.reserve("b", "0.01")
    s = await fence.status("a")
    assert (s.pool, s.open_holds) == ("org", 2)


async def test_concurrent_reserves_never_exceed_the_open_holds_bound(
    make_fence: MakeFence,
) -> None:
    fence = make_fence(plans=PLANS, default_plan="big", max_open_holds=25)
    results = await asyncio.gather(
        *(fence.reserve("acme", "0.01") for _ in range(120)), return_exceptions=True
    )
    admitted = [r for r in results if isinstance(r, Reservation)]
    refused = [r for r in results if isinstance(r, TooManyOpenHolds)]
    assert (len(admitted), len(refused)) == (25, 95)
    s = await fence.status("acme")
    assert (s.open_holds, s.held, s.windows[0].requests) == (25, D("0.25"), 25)
    await asyncio.gather(*(fence.release(r) for r in admitted[:10]))
    again = await asyncio.gather(
        *(fence.reserve("acme", "0.01") for _ in range(40)), return_exceptions=True
    )
    assert sum(isinstance(r, Reservation) for r in again) == 10
    assert (await fence.status("acme")).open_holds == 25


@pytest.mark.parametrize("bound", [0, -1, True, 1.5, "10", 10**7 + 1])
def test_a_bad_open_holds_bound_is_refused_at_configuration(bound: object) -> None:
    with pytest.raises(ConfigError, match="max_open_holds"):
        TokenFence(max_open_holds=bound)  # type: ignore[arg-type]


async def test_redis_time_is_the_default_clock(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="day", clock=None)
    r = await fence.reserve("acme", "0.01")
    assert r.expires_at is not None
    drift = abs((r.expires_at - datetime.now(UTC)).total_seconds() - 600)
    assert drift < 5
    (w,) = (await fence.status("acme")).windows
    assert w.resets_at == datetime.now(UTC).replace(
        hour=0, minute=0, second=0, microsecond=0
    ) + timedelta(days=1)


async def test_bad_fence_options_are_refused_at_configuration() -> None:
    with pytest.raises(UnknownPlan):
        TokenFence(plans=[DAY], default_plan="free")
    with pytest.raises(ConfigError, match="on_store_error"):
        TokenFence(on_store_error="maybe")  # type: ignore[arg-type]


async def test_closed_port_gives_store_unavailable_quickly() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fence = TokenFence(redis_url=f"redis://127.0.0.1:{port}/0", plans=PLANS, default_plan="day")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await fence.reserve("acme", "0.01")
    assert time.monotonic() - started < 5
    assert http_status(info.value) == 503
    with pytest.raises(StoreUnavailable):
        await fence.ping()
    assert fence.counters.store_errors == 2
    await fence.aclose()


async def test_open_mode_allows_and_counts_when_the_store_is_down() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fence = TokenFence(
        redis_url=f"redis://127.0.0.1:{port}/0",
        plans=PLANS,
        default_plan="day",
        on_store_error="open",
    )
    r = await fence.reserve("acme", "0.01")
    assert r.degraded
    settled = await fence.commit(r, "0.01")
    assert settled.recorded is False
    assert (await fence.release(r)).recorded is False
    assert fence.counters.allowed_without_store == 1
    await fence.aclose()


async def test_candidates_follow_the_plan_the_store_holds(make_fence: MakeFence) -> None:
    a = make_fence(plans=PLANS, default_plan="day")
    b = make_fence(plans=PLANS, default_plan="day")
    await b.reserve("acme", "0.01")  # b caches "day"
    await a.set_plan("acme", "big")
    seen: list[str] = []

    def offer(plan: Plan) -> list[tuple[str | None, int]]:
        seen.append(plan.name)
        return [("gpt-4o", 5 * 10**9), ("gpt-4o-mini", 10**8)]

    r = await b.reserve_first("acme", offer)
    assert seen == ["day", "big"]  # recomputed for the plan the script found
    assert (r.model, r.amount, r.plan) == ("gpt-4o", D(5), "big")
    await b.release(r)
    await a.set_plan("acme", "day")
    r = await a.reserve_first("acme", offer)
    assert (r.model, r.amount) == ("gpt-4o-mini", D("0.1"))  # downgraded: the first did not fit


async def test_forged_reservations_are_refused(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    long_id = Reservation("x" * 5000, "acme", None, None, D(0), 0, "day")
    with pytest.raises(InvalidId, match="reservation_id"):
        await fence.commit(long_id, "0.01")
    with pytest.raises(InvalidId, match="reservation_id"):
        await fence.release(long_id)
    bad_feature = Reservation("ok", "acme", "a\nb", None, D(0), 0, "day")
    with pytest.raises(InvalidId, match="feature"):
        await fence.commit(bad_feature, "0.01")
