"""The usage ledger and the daily usage counters, on real Redis and on the embedded store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import START, Backend, FakeClock
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import BudgetExceeded, RequestLimitExceeded
from tokenfence_asgi.money import from_nanos
from tokenfence_asgi.results import DailyUsage, UsageRecord

MakeFence = Callable[..., TokenFence]
D = Decimal
DAY = Plan("day", [Limit("1d", max_cost="1.00", max_requests=1000), Limit("1mo", max_cost="20")])
ROLL = Plan("roll", [Limit("1d", max_cost="1.00", rollover=0.5)])
BIG = Plan("big", [Limit("1mo", max_cost="100000")])
PLANS = [DAY, ROLL, BIG]
TODAY = datetime.fromtimestamp(START, UTC).date()


async def records(fence: TokenFence, **kw: object) -> list[UsageRecord]:
    return [r async for r in fence.usage_records(**kw)]  # type: ignore[arg-type]


async def test_commit_writes_one_record_with_every_field(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    r = await fence.reserve("acme", "0.02", feature="chat", model="gpt-4o")
    await fence.commit(
        r, "0.013", input_tokens=100, output_tokens=20, model="gpt-4o-mini", request_id="req-1"
    )
    (rec,) = await records(fence)
    assert rec.id == r.id
    assert (rec.tenant_id, rec.feature, rec.pool) == ("acme", "chat", None)
    assert (rec.model_requested, rec.model) == ("gpt-4o", "gpt-4o-mini")
    assert (rec.input_tokens, rec.output_tokens) == (100, 20)
    assert (rec.cost, rec.cost_nanos) == (D("0.013"), 13_000_000)
    assert rec.timestamp == datetime.fromtimestamp(START, UTC)
    assert (rec.request_id, rec.late) == ("req-1", False)
    assert rec.stream == f"{fence.prefix}:{{t.acme}}:l"


async def test_model_used_defaults_to_the_reserved_one(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    await fence.commit(await fence.reserve("a", "0.01", model="m1"), "0.01")
    await fence.commit(await fence.reserve("a", "0.01"), "0.01", model="m2")
    await fence.commit(await fence.reserve("a", "0.01"), "0.01")
    got = sorted(((r.model_requested, r.model) for r in await records(fence)), key=str)
    assert got == sorted([("m1", "m1"), (None, "m2"), (None, None)], key=str)


async def test_repeats_write_nothing_and_releases_no_record(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    r = await fence.reserve("acme", "0.10")
    await fence.commit(r, "0.05")
    assert (await fence.commit(r, "0.05")).duplicate
    assert (await fence.commit(r, "0.07")).duplicate
    await fence.release(r)  # a no-op on a committed id
    r2 = await fence.reserve("acme", "0.10")
    await fence.release(r2)
    await fence.release(r2)
    assert [x.id for x in await records(fence)] == [r.id]
    (day,) = await fence.usage("acme", TODAY, TODAY)
    assert (day.cost, day.requests, day.releases, day.refusals) == (D("0.05"), 1, 1, 0)


async def test_late_and_unknown_commits_are_recorded_once(
    make_fence: MakeFence, clock: FakeClock
) -> None:
    fence = make_fence(plans=PLANS, default_plan="big", hold_ttl=10)
    r = await fence.reserve("acme", "0.10")
    clock.advance(60)
    await fence.reserve("acme", "0.01")  # reclaims the expired hold
    assert (await fence.commit(r, "0.08")).late
    assert (await fence.commit(r, "0.08")).duplicate
    ghost = r.__class__(
        id="never-reserved",
        tenant_id="acme",
        feature="chat",
        model=None,
        amount=D("0.01"),
        amount_nanos=10**7,
        plan="big",
    )
    assert (await fence.commit(ghost, "0.02")).late
    assert (await fence.commit(ghost, "0.02")).duplicate
    got = {x.id: x for x in await records(fence)}
    assert set(got) == {r.id, "never-reserved"}
    assert got[r.id].late
    assert got["never-reserved"].late
    assert got["never-reserved"].feature == "chat"
    assert sum(x.cost_nanos for x in got.values()) == 100_000_000


async def test_usage_days_plan_and_limit_at_the_time(
    make_fence: MakeFence, clock: FakeClock
) -> None:
    fence = make_fence(plans=PLANS, default_plan="roll")
    await fence.commit(await fence.reserve("acme", "0.30"), "0.25", input_tokens=7, output_tokens=3)
    with pytest.raises(BudgetExceeded):  # $1 a day; a first day carries nothing over
        await fence.reserve("acme", "1.30")
    clock.advance(86400)
    await fence.commit(await fence.reserve("acme", "1.20"), "1.10")
    held = await fence.reserve("acme", "0.10")
    await fence.set_plan("acme", "day")
    await fence.release(held)
    days = await fence.usage("acme", TODAY - timedelta(days=3), TODAY + timedelta(days=3))
    assert days == [
        DailyUsage(
            day=TODAY,
            tenant_id="acme",
            plan="roll",
            cost=D("0.25"),
            cost_nanos=250_000_000,
            requests=1,
            refusals=1,
            limit=D("1"),
            releases=0,
            input_tokens=7,
            output_tokens=3,
        ),
        DailyUsage(
            day=TODAY + timedelta(days=1),
            tenant_id="acme",
            plan="day",
            cost=D("1.1"),
            cost_nanos=1_100_000_000,
            requests=1,
            refusals=0,
            limit=D("1.5"),
            releases=1,
        ),
    ]
    assert await fence.usage("acme", TODAY, TODAY) == days[:1]
    assert await fence.usage("nobody", TODAY, TODAY) == []
    with pytest.raises(ValueError, match="before start"):
        await fence.usage("acme", TODAY, TODAY - timedelta(days=1))


async def test_request_limit_refusals_are_counted(make_fence: MakeFence) -> None:
    plan = Plan("three", [Limit("1d", max_requests=2)])
    fence = make_fence(plans=[plan], default_plan="three")
    for _ in range(2):
        await fence.commit(await fence.reserve("t", "0.01"), "0.01")
    for _ in range(3):
        with pytest.raises(RequestLimitExceeded):
            await fence.reserve("t", "0.01")
    (day,) = await fence.usage("t", TODAY, TODAY)
    assert (day.requests, day.refusals, day.limit, day.plan) == (2, 3, None, "three")


async def test_top_spenders_and_tenants(make_fence: MakeFence, clock: FakeClock) -> None:
    fence = make_fence(plans=PLANS, default_plan="big")
    spend = {"a": "3", "b": "1", "c": "2", "d": "2", "e": "0"}
    for tenant, cost in spend.items():
        await fence.commit(await fence.reserve(tenant, "5"), cost)
    await fence.set_plan("quiet", "day")  # state, but no usage
    clock.advance(86400)
    await fence.commit(await fence.reserve("b", "5"), "5")
    top = await fence.top_spenders(TODAY, TODAY, n=3)
    assert top == [("a", D(3)), ("c", D(2)), ("d", D(2))]
    both = await fence.top_spenders(TODAY, TODAY + timedelta(days=1))
    assert both == [("b", D(6)), ("a", D(3)), ("c", D(2)), ("d", D(2))]
    assert await fence.top_spenders(TODAY, TODAY, n=0) == []
    assert sorted([t async for t in fence.tenants()]) == ["a", "b", "c", "d", "e", "quiet"]
    await fence.ping()  # the probe's key is nobody's
    assert len([t async for t in fence.tenants()]) == 6


async def test_ids_needing_encoding(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="big")
    tenant, feature = "Ünïcode {tag}:x/y", "feat:1 2"
    r = await fence.reserve(tenant, "1", feature=feature, reservation_id="r:1/{x}")
    await fence.commit(r, "0.5", request_id="req {1}")
    (rec,) = await records(fence)
    assert (rec.tenant_id, rec.feature, rec.id, rec.request_id) == (
        tenant,
        feature,
        "r:1/{x}",
        "req {1}",
    )
    assert [t async for t in fence.tenants()] == [tenant]
    assert await fence.top_spenders(TODAY, TODAY) == [(tenant, D("0.5"))]


async def test_labels_never_fail_a_commit(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="big")
    r = await fence.reserve("t", "1", model="m\x00odel")
    long = "q" * 500
    assert not (await fence.commit(r, "0.5", request_id=long, model="used\n")).duplicate
    r2 = await fence.reserve("t", "1")
    await fence.commit(r2, "0.5", request_id="")
    got = {x.id: x for x in await records(fence)}
    assert got[r.id].request_id == "q" * 200
    assert (got[r.id].model_requested, got[r.id].model) == ("m\ufffdodel", "used\ufffd")
    assert got[r2.id].request_id is None
    with pytest.raises(TypeError):
        await fence.commit(await fence.reserve("t", "1"), "0.5", request_id=7)  # type: ignore[arg-type]


async def test_pool_members_write_to_the_pool_stream_and_usage_moves(
    make_fence: MakeFence, clock: FakeClock
) -> None:
    fence = make_fence(plans=PLANS, default_plan="big")
    await fence.commit(await fence.reserve("acme", "1"), "0.40")
    await fence.release(await fence.reserve("acme", "1"))
    await fence.set_pool("acme", "team", plan="big")
    await fence.commit(await fence.reserve("acme", "1"), "0.60")
    await fence.commit(await fence.reserve("globex", "1"), "0.10")
    await fence.set_pool("globex", "team")
    await fence.commit(await fence.reserve("globex", "1"), "0.05")
    (day,) = await fence.usage("acme", TODAY, TODAY)
    assert (day.cost, day.requests, day.releases, day.pool) == (D(1), 2, 1, "team")
    (gday,) = await fence.usage("globex", TODAY, TODAY)
    assert (gday.cost, gday.requests) == (D("0.15"), 2)
    every = [u async for u in fence.daily_usage(TODAY, TODAY)]
    assert sorted((u.tenant_id, u.cost) for u in every) == [("acme", D(1)), ("globex", D("0.15"))]
    recs = await records(fence)
    assert sorted((r.tenant_id, r.pool or "", r.cost) for r in recs) == [
        ("acme", "", D("0.4")),
        ("acme", "team", D("0.6")),
        ("globex", "", D("0.1")),
        ("globex", "team", D("0.05")),
    ]
    mine = await records(fence, tenant_id="acme")
    assert sorted(r.cost for r in mine) == [D("0.4"), D("0.6")]
    # ... and back on its own: the day's usage follows again
    await fence.set_pool("acme", None)
    await fence.commit(await fence.reserve("acme", "1"), "0.01")
    (day,) = await fence.usage("acme", TODAY, TODAY)
    assert (day.cost, day.requests, day.pool) == (D("1.01"), 3, None)
    assert await fence.top_spenders(TODAY, TODAY) == [("acme", D("1.01")), ("globex", D("0.15"))]


async def test_records_filtered_by_time(make_fence: MakeFence, clock: FakeClock) -> None:
    fence = make_fence(plans=PLANS, default_plan="big")
    for _ in range(3):
        await fence.commit(await fence.reserve("a", "1"), "0.1")
        clock.advance(3600)
    t0 = datetime.fromtimestamp(START, UTC)
    got = await records(fence, start=t0 + timedelta(hours=1), end=t0 + timedelta(hours=2))
    assert [r.timestamp for r in got] == [t0 + timedelta(hours=1)]


async def test_read_ledger_pages_by_entry_id(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="big")
    ids = []
    for _ in range(5):
        r = await fence.reserve("a", "1")
        await fence.commit(r, "0.1")
        ids.append(r.id)
    (stream,) = [s async for s in fence.ledger_streams()]
    first = await fence.read_ledger(stream, count=2)
    rest = await fence.read_ledger(stream, after=first[-1].entry_id)
    assert [r.id for r in first + rest] == ids
    with pytest.raises(ValueError, match="not a ledger stream"):
        await fence.read_ledger("elsewhere")


async def test_retention_and_maxlen(make_fence: MakeFence, backend: Backend) -> None:
    fence = make_fence(plans=PLANS, default_plan="big", ledger_maxlen=0)
    await fence.commit(await fence.reserve("a", "1"), "0.1")
    assert await records(fence) == []  # no ledger, but the daily counters still count
    assert (await fence.usage("a", TODAY, TODAY))[0].cost == D("0.1")

    fence = make_fence(plans=PLANS, default_plan="big", ledger_maxlen=None, ledger_retention=1000)
    await fence.commit(await fence.reserve("b", "1"), "0.1")
    raw = backend.client()
    try:
        key = f"{backend.prefix}:{{t.b}}:l"
        ttl = await raw.pttl(key)
        assert 1_000_000 < ttl <= 1_060_000  # the retention, plus a minute
    finally:
        await raw.aclose()


async def test_maxlen_bounds_a_stream(make_fence: MakeFence, backend: Backend) -> None:
    fence = make_fence(plans=PLANS, default_plan="big", ledger_maxlen=10, ledger_retention=None)
    for _ in range(400):
        await fence.commit(await fence.reserve("a", "0.001"), "0.001")
    raw = backend.client()
    try:
        length = await raw.xlen(f"{backend.prefix}:{{t.a}}:l")
        assert length <= 200  # approximate trimming: whole nodes of up to 100 entries
        assert await raw.pttl(f"{backend.prefix}:{{t.a}}:l") == -1
    finally:
        await raw.aclose()
    (day,) = await fence.usage("a", TODAY, TODAY)
    assert (day.requests, day.cost) == (400, D("0.4"))


async def test_old_days_are_dropped(make_fence: MakeFence, clock: FakeClock) -> None:
    fence = make_fence(plans=PLANS, default_plan="big", usage_days=3)
    for _ in range(6):
        await fence.commit(await fence.reserve("a", "1"), "0.1")
        clock.advance(86400)
    days = await fence.usage("a", TODAY - timedelta(days=10), TODAY + timedelta(days=10))
    assert [d.day for d in days] == [TODAY + timedelta(days=k) for k in (3, 4, 5)]


def test_options_are_validated() -> None:
    from tokenfence_asgi.errors import ConfigError

    for bad in (
        {"usage_days": 0},
        {"ledger_maxlen": -1},
        {"ledger_retention": 0},
        {"usage_days": True},
    ):
        with pytest.raises(ConfigError):
            TokenFence(**bad)  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    calls=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.integers(0, 3 * 10**8),  # cost nanos
            st.sampled_from(["commit", "commit", "release", "late", "repeat"]),
            st.integers(0, 30 * 3600),  # seconds to advance first
        ),
        max_size=25,
    )
)
def test_rule_records_equal_daily_counters_equal_windows(
    calls: list[tuple[str, int, str, int]],
) -> None:
    """For any mix of commits, releases, late commits and repeats: exactly one record per
    charge, and per tenant and day the records' total == the daily counter, and the month's
    total == the 1mo window's used."""
    import asyncio

    async def run() -> None:
        clock = FakeClock()
        plan = Plan("p", [Limit("1mo", max_cost="1000000")])
        fence = TokenFence(plans=[plan], default_plan="p", clock=clock, hold_ttl=60)
        charged: dict[tuple[str, date], int] = {}
        try:
            for tenant, nanos, how, advance in calls:
                clock.advance(advance)
                r = await fence.reserve(tenant, from_nanos(max(nanos, 1)))  # a hold is > $0
                if how == "release":
                    await fence.release(r)
                    continue
                if how == "late":
                    clock.advance(120)
                day = datetime.fromtimestamp(clock.now, UTC).date()
                await fence.commit(r, from_nanos(nanos))
                if how == "repeat":
                    await fence.commit(r, from_nanos(nanos))
                charged[tenant, day] = charged.get((tenant, day), 0) + nanos
            recs = [r async for r in fence.usage_records()]
            assert (
                len(recs) == len({r.id for r in recs}) == sum(1 for c in calls if c[2] != "release")
            )
            from_records: dict[tuple[str, date], int] = {}
            for rec in recs:
                k = (rec.tenant_id, rec.timestamp.date())
                from_records[k] = from_records.get(k, 0) + rec.cost_nanos
            counters = {
                (u.tenant_id, u.day): u.cost_nanos
                async for u in fence.daily_usage(date(2000, 1, 1), date(2100, 1, 1))
                if u.cost_nanos or u.requests
            }
            assert charged == from_records == counters
            for tenant in {c[0] for c in calls}:
                status = await fence.status(tenant)
                month = datetime.fromtimestamp(clock.now, UTC).strftime("%Y-%m")
                in_month = sum(
                    v
                    for (t, d), v in charged.items()
                    if t == tenant and d.strftime("%Y-%m") == month
                )
                assert status.windows[0].used == from_nanos(in_month)
        finally:
            await fence.aclose()

    asyncio.run(run())
