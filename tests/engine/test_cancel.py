"""A caller cancelled while its reserve is in flight leaves no hold behind to wait out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tokenfence_asgi.engine.fence import TokenFence

MakeFence = Callable[..., TokenFence]


async def _held(fence: TokenFence, tenant: str) -> tuple[int, str]:
    status = await fence.status(tenant)
    return status.open_holds, str(status.held)


async def _settled(fence: TokenFence, tenant: str) -> tuple[int, str]:
    for _ in range(200):  # the release runs when the late reply arrives
        held = await _held(fence, tenant)
        if held[0] == 0:
            break
        await asyncio.sleep(0.01)
    return held


async def _cancel_before_it_lands(
    fence: TokenFence, monkeypatch: pytest.MonkeyPatch, transit_s: float
) -> None:
    """Cancel a reserve whose command reaches the store ``transit_s`` after the caller gave up
    (so the first release finds nothing); return once the store holds it."""
    real = fence._router.run
    sent = asyncio.Event()
    in_transit: list[asyncio.Task[Any]] = []

    async def slow_wire(name: str, keys: list[str], args: list[str]) -> Any:
        if name != "reserve":
            return await real(name, keys, args)

        async def arrive() -> Any:
            await asyncio.sleep(transit_s)
            return await real(name, keys, args)

        in_transit.append(asyncio.ensure_future(arrive()))
        sent.set()
        return await asyncio.shield(in_transit[0])

    monkeypatch.setattr(fence._router, "run", slow_wire)
    task = asyncio.create_task(fence.reserve("acme", "0.10"))
    await sent.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await in_transit[0]


@pytest.mark.parametrize("late", [0.0, 0.2])
async def test_a_reserve_cancelled_after_the_store_held_it_is_released(
    make_fence: MakeFence, monkeypatch: pytest.MonkeyPatch, late: float
) -> None:
    fence = make_fence()
    real = fence._router.run
    landed = asyncio.Event()

    async def late_reply(name: str, keys: list[str], args: list[str]) -> Any:
        reply = await real(name, keys, args)
        if name == "reserve":
            landed.set()
            await asyncio.sleep(late)  # the store held it; the reply is still on its way
        return reply

    monkeypatch.setattr(fence._router, "run", late_reply)
    task = asyncio.create_task(fence.reserve("acme", "0.10", feature="chat"))
    await landed.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _settled(fence, "acme") == (0, "0")
    assert fence.counters.released_after_cancel == 1
    again = await fence.reserve("acme", "0.10")  # the tenant's budget is whole again
    await fence.release(again)


async def test_a_reserve_that_lands_after_the_first_release_is_released_by_a_retry(
    make_fence: MakeFence, monkeypatch: pytest.MonkeyPatch
) -> None:
    fence = make_fence()
    await _cancel_before_it_lands(fence, monkeypatch, 0.3)  # the first release found nothing
    assert (await _held(fence, "acme"))[0] == 1
    for _ in range(300):
        if fence.counters.released_after_cancel:
            break
        await asyncio.sleep(0.01)
    assert await _held(fence, "acme") == (0, "0")


async def test_a_callers_own_reservation_id_is_left_to_the_caller(
    make_fence: MakeFence, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry of an id the caller already holds must not drop the hold it still relies on."""
    fence = make_fence()
    held = await fence.reserve("acme", "0.10", reservation_id="job-7")
    real = fence._router.run
    landed = asyncio.Event()

    async def late_reply(name: str, keys: list[str], args: list[str]) -> Any:
        reply = await real(name, keys, args)
        if name == "reserve":
            landed.set()
            await asyncio.sleep(0.2)
        return reply

    monkeypatch.setattr(fence._router, "run", late_reply)
    task = asyncio.create_task(fence.reserve("acme", "0.10", reservation_id="job-7"))
    await landed.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    assert await _held(fence, "acme") == (1, "0.1")
    assert fence.counters.released_after_cancel == 0
    await fence.release(held)


async def test_aclose_releases_at_once_a_hold_still_waiting_for_its_retry(
    make_fence: MakeFence, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fence closed while a cancelled reserve's hold waits for its next release retry (1 s,
    then 5 s) releases it before the store closes, instead of leaving it to the lease."""
    fence = make_fence()
    other = make_fence()  # another instance on the same store, to look after the close
    await _cancel_before_it_lands(fence, monkeypatch, 0.2)
    assert (await _held(other, "acme"))[0] == 1
    await fence.aclose()
    assert fence.counters.released_after_cancel == 1
    assert await _held(other, "acme") == (0, "0")
