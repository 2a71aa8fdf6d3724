"""on_store_error="allowance": a little local spend per tenant during an outage, written back.

A real redis-server of the test's own (on a free loopback port) is killed and restarted: while
it is down each tenant may spend up to the allowance, then is refused with StoreUnavailable;
what was committed meanwhile lands in Redis, once, when it answers again.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from decimal import Decimal

import pytest
import structlog

from tests.reliability.servers import RedisProcess, redis_server
from tokenfence_asgi import Limit, Plan, StoreUnavailable, TokenFence
from tokenfence_asgi.engine.allowance import Allowance, Owed
from tokenfence_asgi.engine.observe import FenceObserver
from tokenfence_asgi.errors import ConfigError
from tokenfence_asgi.results import Reservation

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")

PLAN = Plan("day", [Limit("1d", max_cost="10")])


@pytest.fixture
def server() -> Iterator[RedisProcess]:
    """A redis-server of this test's own, which it may kill and start again on the same port."""
    with redis_server("--appendonly", "no") as s:
        yield s


def make(server: RedisProcess, **options: object) -> TokenFence:
    return TokenFence(
        redis_url=server.url,
        plans=[PLAN],
        default_plan="day",
        timeout_s=0.2,
        on_store_error="allowance",
        outage_allowance="0.05",
        **options,
    )  # type: ignore[arg-type]


async def reachable(fence: TokenFence) -> None:
    """Ping until the store answers (the client backs off after failures for up to ~1 s)."""
    for _ in range(100):
        try:
            await fence.ping()
            return
        except StoreUnavailable:
            await asyncio.sleep(0.05)
    raise AssertionError("the store did not come back")


async def used(fence: TokenFence, tenant: str) -> Decimal:
    return (await fence.status(tenant)).windows[0].used


async def test_outage_spend_is_capped_then_written_back_once(server: RedisProcess) -> None:
    fence = make(server)
    try:
        await fence.commit(await fence.reserve("acme", "0.01"), "0.01")
        server.kill()

        r1 = await fence.reserve("acme", "0.02")
        r2 = await fence.reserve("acme", "0.02")
        assert r1.degraded
        assert r2.degraded
        with pytest.raises(StoreUnavailable):  # 0.06 > the 0.05 allowance
            await fence.reserve("acme", "0.02")
        other = await fence.reserve("globex", "0.04")  # per tenant
        assert other.degraded

        settled = await fence.commit(r1, "0.015", input_tokens=100, output_tokens=20)
        assert not settled.recorded
        await fence.release(r2)  # gives its 0.02 back
        r3 = await fence.reserve("acme", "0.03")  # 0.015 spent + 0.03 held fits
        await fence.commit(r3, "0.03")
        assert fence.counters.allowed_without_store == 4
        assert fence.counters.outage_allowance_refusals == 1

        server.start()  # empty: it kept nothing on disk
        await reachable(fence)  # the first script that reaches it starts the write-back
        await asyncio.wait_for(fence._holds.writing_back, 5)  # type: ignore[arg-type]
        assert fence.counters.written_back == 2
        assert await used(fence, "acme") == Decimal("0.045")
        assert await used(fence, "globex") == 0  # reserved, never committed

        again = await fence.commit(r1, "0.015")  # the app retries: charged once
        assert again.duplicate
        assert await used(fence, "acme") == Decimal("0.045")
        records = {r.id: r async for r in fence.usage_records(tenant_id="acme")}
        assert set(records) == {r1.id, r3.id}
        assert records[r1.id].late
        assert (records[r1.id].input_tokens, records[r1.id].output_tokens) == (100, 20)

        server.kill()  # a new outage: the counter started again from zero
        assert (await fence.reserve("acme", "0.05")).degraded
    finally:
        await fence.aclose()


async def test_write_back_waits_while_the_store_is_away(server: RedisProcess) -> None:
    fence = make(server)
    server.kill()
    r = await fence.reserve("acme", "0.01")
    await fence.commit(r, "0.01")
    assert await fence.write_back() == 0  # still down: still owed
    server.start()
    await reachable(fence)
    if fence._holds.writing_back is not None:  # the ping may have started it already
        await fence._holds.writing_back
    assert fence.counters.written_back + await fence.write_back() == 1
    assert await fence.write_back() == 0
    assert await used(fence, "acme") == Decimal("0.01")
    await fence.aclose()


async def test_spend_owed_at_close_is_logged_with_its_amount(server: RedisProcess) -> None:
    fence = make(server)
    server.kill()
    await fence.commit(await fence.reserve("acme", "0.02"), "0.0125")
    with structlog.testing.capture_logs() as logs:
        await fence.aclose()
    lost = [e for e in logs if e["event"] == "outage_spend_lost"]
    assert lost == [
        {"event": "outage_spend_lost", "cost_nanos": 12_500_000, "commits": 1, "log_level": "error"}
    ]


async def test_closed_and_open_modes_are_unchanged(server: RedisProcess) -> None:
    closed = TokenFence(redis_url=server.url, timeout_s=0.2)
    opened = TokenFence(redis_url=server.url, timeout_s=0.2, on_store_error="open")
    server.kill()
    with pytest.raises(StoreUnavailable):
        await closed.reserve("acme", "0.01")
    for _ in range(5):  # no allowance: always let through
        assert (await opened.reserve("acme", "1")).degraded
    await closed.aclose()
    await opened.aclose()


@pytest.mark.parametrize("bad", ["-1", "nan", "x", "2000000"])
def test_bad_allowance_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="outage_allowance"):
        TokenFence(on_store_error="allowance", outage_allowance=bad)


def test_allowance_counts() -> None:
    allowance = Allowance(100)
    assert allowance.take("a", "t", 60)
    assert not allowance.take("b", "t", 50)
    assert allowance.take("c", "u", 100)
    reservation = Reservation("a", "t", None, None, Decimal(0), 60, "p", degraded=True)
    allowance.owe(Owed(reservation, 30, 0, 0, None, None))
    assert allowance.used_nanos("t") == 30
    allowance.owe(Owed(reservation, 99, 0, 0, None, None))  # a repeat: the first is owed
    assert allowance.owed_nanos() == 30
    assert allowance.take("b", "t", 70)
    allowance.recovered()  # still owed: nothing reset
    assert allowance.used_nanos("t") == 100
    allowance.written("a")
    allowance.recovered()
    assert allowance.used_nanos("t") == 0
    assert not allowance.owed


async def test_the_write_back_starts_by_itself_on_a_fence_with_observers(
    server: RedisProcess,
) -> None:
    """Observers (the Prometheus metrics among them) time each script on another path: the
    first answer after an outage starts the write-back there too."""
    fence = make(server)
    fence.observe(FenceObserver())
    try:
        server.kill()
        reservation = await fence.reserve("acme", "0.02")
        assert reservation.degraded
        await fence.commit(reservation, "0.02")
        server.start()
        await reachable(fence)
        assert fence._holds.writing_back is not None
        await asyncio.wait_for(fence._holds.writing_back, 5)
        assert fence.counters.written_back == 1
        assert await used(fence, "acme") == Decimal("0.02")
    finally:
        await fence.aclose()
