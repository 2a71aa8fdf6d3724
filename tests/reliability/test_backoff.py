"""The store's reconnect backoff: bounded, jittered, one probe at a time, waiters served by it.

Against a port where nothing answers (a counting proxy in front of a closed port), a burst of
callers opens a handful of connections instead of one or two per call; a server that comes back
is found by the next probe, and the calls waiting for it succeed.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.reliability.figures import record
from tests.reliability.servers import CountingProxy, RedisProcess, free_port
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import StoreUnavailable
from tokenfence_asgi.store.client import BACKOFF_BASE_S, BACKOFF_CAP_S, Backoff

PLAN = Plan("p", [Limit("1d", max_cost="100")])


def test_windows_double_from_the_base_up_to_the_cap_with_jitter() -> None:
    backoff = Backoff(base=0.025, cap=1.0)
    for failures, full in [(1, 0.025), (2, 0.05), (3, 0.1), (6, 0.8), (7, 1.0), (500, 1.0)]:
        backoff.failures = failures
        windows = [backoff.window() for _ in range(200)]
        assert all(full / 2 <= w <= full for w in windows), failures
        assert max(windows) - min(windows) > full / 10  # jittered, so processes spread out


async def test_waiters_share_one_probe_and_a_success_ends_the_backoff() -> None:
    backoff = Backoff(base=0.02, cap=0.1)
    backoff.failed(probe=False)  # an in-flight call failed: backing off
    assert backoff.failures == 1
    backoff.failed(probe=False)  # another one admitted before: not counted again
    assert backoff.failures == 1
    calls = [asyncio.create_task(backoff.admit(0.5)) for _ in range(20)]
    while not backoff.probing:  # noqa: ASYNC110 - the window ends: one becomes the probe
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.01)
    assert sum(t.done() for t in calls) == 1  # the others wait for it, without connecting
    assert backoff.probes == 1
    backoff.succeeded(probe=True)
    assert sorted(await asyncio.gather(*calls)) == [False] * 19 + [True]
    assert backoff.failures == 0
    assert await backoff.admit(0.5) is False  # not backing off any more


async def test_a_failed_probe_grows_the_window_and_late_callers_fail_fast() -> None:
    backoff = Backoff(base=0.2, cap=2.0)
    backoff.failed(probe=False)
    assert await backoff.admit(0.5)  # waits up to 0.2 s, then is the probe
    backoff.failed(probe=True)
    assert backoff.failures == 2
    assert 0.2 <= backoff.retry_at - time.monotonic() <= 0.4
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="next attempt in"):
        await backoff.admit(0.1)  # the next probe is due after this call's deadline
    assert time.monotonic() - started < 0.05
    assert backoff.fast_failures == 1


async def test_a_cancelled_probe_lets_the_next_call_try() -> None:
    backoff = Backoff(base=0.01, cap=0.1)
    backoff.failed(probe=False)
    assert await backoff.admit(0.5)
    follower = asyncio.create_task(backoff.admit(0.5))
    await asyncio.sleep(0.02)
    assert not follower.done()
    backoff.abandoned()
    assert await follower  # it becomes the probe


async def _hammer(fence: TokenFence, callers: int, seconds: float) -> tuple[int, int]:
    deadline = time.monotonic() + seconds
    calls = failures = 0

    async def caller() -> None:
        nonlocal calls, failures
        while time.monotonic() < deadline:
            calls += 1
            try:
                await fence.reserve("acme", "0.01")
            except StoreUnavailable:
                failures += 1

    await asyncio.gather(*(caller() for _ in range(callers)))
    return calls, failures


@pytest.mark.parametrize("backoff", [True, False], ids=["backoff", "no-backoff"])
async def test_callers_against_a_dead_store_open_few_connections(backoff: bool) -> None:
    with CountingProxy(free_port()) as proxy:  # nothing listens behind it
        fence = TokenFence(redis_url=proxy.url, plans=[PLAN], default_plan="p")
        if not backoff:
            fence._store.backoff = None  # what every call did before the backoff existed
        try:
            calls, failures = await _hammer(fence, callers=20, seconds=1.0)
        finally:
            await fence.aclose()
        attempts = proxy.count()
    assert calls == failures
    record("dead_store_1s", backoff=backoff, callers=20, calls=calls, connections=attempts)
    if backoff:
        # the calls in flight when the first one failed (2 tries each: redis-py retries once),
        # then one probe per window, the windows from 25 ms doubling towards 1 s
        assert attempts <= 2 * 20 + 2 * 8
    else:
        assert attempts >= calls  # each call connects (twice): the herd the backoff prevents


async def test_waiting_calls_succeed_when_the_server_comes_back(tmp_path: object) -> None:
    port = free_port()
    server = RedisProcess(port, str(tmp_path), "--appendonly", "no")
    fence = TokenFence(redis_url=server.url, plans=[PLAN], default_plan="p", timeout_s=0.5)
    try:
        with pytest.raises(StoreUnavailable):
            await fence.reserve("acme", "0.01")  # nothing there: backing off now
        waiting = [asyncio.create_task(fence.reserve("acme", "0.01")) for _ in range(20)]
        await asyncio.to_thread(server.start)  # back within the callers' 0.5 s
        results = await asyncio.gather(*waiting, return_exceptions=True)
        ok = [r for r in results if not isinstance(r, BaseException)]
        assert len(ok) == 20, results
        assert fence._store.backoff is not None
        assert fence._store.backoff.failures == 0
    finally:
        await fence.aclose()
        server.close()


def test_the_constants_are_what_the_docs_say() -> None:
    assert (BACKOFF_BASE_S, BACKOFF_CAP_S) == (0.025, 1.0)
