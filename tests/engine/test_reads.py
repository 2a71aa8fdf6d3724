"""The facts the admin app and the exporter read, through public fence methods."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.conftest import START, FakeClock
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence

MakeFence = Callable[..., TokenFence]
DAY = Plan("day", [Limit("1d", max_cost="10")])
ORG = Plan("org", [Limit("1d", max_cost="100")])


async def test_tenant_switch_is_the_tenants_own_wherever_it_lives(make_fence: MakeFence) -> None:
    fence = make_fence(plans=[DAY, ORG], default_plan="day")
    assert await fence.tenant_switch("acme") is False
    await fence.kill()  # global: status says killed, the tenant's own switch is off
    assert (await fence.status("acme")).killed
    assert await fence.tenant_switch("acme") is False
    await fence.kill("acme")
    assert await fence.tenant_switch("acme") is True
    await fence.set_pool("acme", "org1", plan="org")  # the switch moves with the tenant
    assert await fence.tenant_switch("acme") is True
    await fence.revive("acme")
    assert await fence.tenant_switch("acme") is False
    await fence.kill("acme", feature="chat")  # a feature's switch is not the tenant's
    assert await fence.tenant_switch("acme") is False


async def test_now_is_the_fence_clock_else_the_wall(
    make_fence: MakeFence, clock: FakeClock
) -> None:
    fence = make_fence(plans=[DAY], default_plan="day")
    assert fence.now() == START
    clock.advance(days=2)
    assert fence.now() == START + 2 * 86400
    wall = make_fence(plans=[DAY], default_plan="day", clock=None)
    assert abs(wall.now() - time.time()) < 60


async def test_read_ledgers_reads_many_streams_from_their_cursors(make_fence: MakeFence) -> None:
    fence = make_fence(plans=[DAY, ORG], default_plan="day")
    await fence.set_pool("b", "org1", plan="org")
    for tenant in ("a", "a", "b"):
        await fence.commit(await fence.reserve(tenant, "0.01"), "0.01")
    streams = sorted([s async for s in fence.ledger_streams()])
    assert len(streams) == 2
    assert all(s.startswith(f"{fence.prefix}:") for s in streams)
    first = await fence.read_ledgers([(s, "0") for s in streams])
    assert first == [await fence.read_ledger(s) for s in streams]
    assert sorted(len(records) for records in first) == [1, 2]
    cursors = [(s, records[-1].entry_id) for s, records in zip(streams, first, strict=True)]
    assert await fence.read_ledgers(cursors) == [[], []]  # nothing after the last
    assert await fence.read_ledgers([]) == []
    with pytest.raises(ValueError, match="not a ledger stream"):
        await fence.read_ledgers([("other:{t.a}:l", "0")])
    with pytest.raises(ValueError, match="count"):
        await fence.read_ledgers([(streams[0], "0")], 0)


async def test_ledger_trimmed_counts_what_the_ledger_lost(make_fence: MakeFence) -> None:
    fence = make_fence(plans=[DAY], default_plan="day")
    for _ in range(3):
        await fence.commit(await fence.reserve("a", "0.01"), "0.01")
    (stream,) = [s async for s in fence.ledger_streams()]
    assert await fence.ledger_trimmed([stream]) == {stream: 0}  # Redis >= 7.0 and the embedded
    await fence._store.client.xtrim(stream, maxlen=1, approximate=False)  # as retention would
    trimmed = await fence.ledger_trimmed([stream, f"{fence.prefix}:{{t.gone}}:l"])
    assert trimmed == {stream: 2}  # a stream that is gone is left out
    with pytest.raises(ValueError, match="not a ledger stream"):
        await fence.ledger_trimmed(["nope"])
