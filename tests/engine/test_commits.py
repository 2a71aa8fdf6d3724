"""The commit queue (``commit_soon``): commits off the caller's path, pipelined, drained, bounded.

The rule it must keep: a queued commit never lets a tenant spend past a limit, because the
call's hold stays in the store until the commit lands. On real Redis, the embedded store and
Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import structlog

from tests.conftest import START, Backend
from tests.reliability.figures import record
from tests.reliability.servers import have_redis_binaries, redis_server
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine import commits as commits_module
from tokenfence_asgi.engine.commits import MAX_BATCH, CommitQueue
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.engine.observe import FenceObserver
from tokenfence_asgi.errors import BudgetExceeded, ConfigError, InvalidAmount, InvalidId
from tokenfence_asgi.money import from_nanos, to_nanos
from tokenfence_asgi.results import Reservation
from tokenfence_asgi.store.client import Store

MakeFence = Callable[..., TokenFence]
D = Decimal

DAY = Plan("day", [Limit("1d", max_cost="1.00", max_requests=100_000)])
BIG = Plan("big", [Limit("1d", max_cost="1000", max_requests=100_000)])
PLANS = [DAY, BIG]


async def used_and_held(fence: TokenFence, tenant: str) -> tuple[Decimal, Decimal]:
    status = await fence.status(tenant)
    return status.windows[0].used, status.held


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[asyncio.Event]:
    """Fault injection: queued commits wait until the event is set (a slow store); it is set
    at the end of the test, before the fences close."""
    opened = asyncio.Event()
    attempt = CommitQueue._attempt

    async def gated(self: CommitQueue, batch: Any) -> Any:
        await opened.wait()
        return await attempt(self, batch)

    monkeypatch.setattr(CommitQueue, "_attempt", gated)
    try:
        yield opened
    finally:
        opened.set()


@pytest.fixture
def pipelines(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every pipeline the stores send (a spy; the calls go through)."""
    sizes: list[int] = []
    run_pipelined = Store.run_pipelined

    async def spy(self: Store, calls: list[Any]) -> list[Any]:
        sizes.append(len(calls))
        return await run_pipelined(self, calls)

    monkeypatch.setattr(Store, "run_pipelined", spy)
    return sizes


async def test_queued_commits_land_in_few_round_trips(
    make_fence: MakeFence, pipelines: list[int]
) -> None:
    fence = make_fence(plans=PLANS, default_plan="big")
    calls = 300
    held = [await fence.reserve(f"t{n % 30}", "0.02", feature="chat") for n in range(calls)]
    for n, reservation in enumerate(held):
        await fence.commit_soon(reservation, D("0.001") + D(n) / 10**6, output_tokens=n)
    assert fence.commits.pending == calls  # queued, none sent yet: the caller never waited
    await fence.commits.flush()
    assert fence.commits.pending == 0
    # all 300 sent in ceil(300 / MAX_BATCH) pipelines (one round trip each; per node on a
    # cluster), not 300 round trips
    assert sorted(pipelines, reverse=True) == [MAX_BATCH] * (calls // MAX_BATCH) + [
        calls % MAX_BATCH
    ]
    for tenant in range(30):
        expected = sum(D("0.001") + D(n) / 10**6 for n in range(calls) if n % 30 == tenant)
        assert await used_and_held(fence, f"t{tenant}") == (expected, D(0))
    records = [r async for r in fence.usage_records()]
    assert sorted(r.id for r in records) == sorted(r.id for r in held)  # each charged once
    assert sorted(r.output_tokens for r in records) == list(range(calls))
    assert (fence.counters.commits_queued, fence.counters.commit_errors) == (calls, 0)


async def test_queued_commits_survive_a_lost_script_cache(
    make_fence: MakeFence, backend: Backend, pipelines: list[int]
) -> None:
    """After SCRIPT FLUSH (a restart, a failover), each pipelined commit answered NOSCRIPT
    is sent again on its own, which loads the script: all land, once."""
    fence = make_fence(plans=PLANS, default_plan="big")
    held = [await fence.reserve(f"t{n % 3}", "0.05") for n in range(30)]
    raw = backend.client()
    try:
        await raw.script_flush()
    finally:
        await raw.aclose()
    for reservation in held:
        await fence.commit_soon(reservation, "0.01")
    await fence.commits.flush()
    assert pipelines  # they went as a pipeline first
    assert fence.counters.commit_errors == 0
    for tenant in ("t0", "t1", "t2"):
        assert await used_and_held(fence, tenant) == (D("0.10"), D(0))


async def test_commit_stays_awaitable_with_the_same_settlement(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="day")
    queued = await fence.reserve("acme", "0.05")
    await fence.commit_soon(queued, "0.013", input_tokens=10, output_tokens=2)
    awaited = await fence.reserve("acme", "0.05")
    settled = await fence.commit(awaited, "0.013", input_tokens=10, output_tokens=2)
    assert (settled.cost, settled.duplicate, settled.late) == (D("0.013"), False, False)
    await fence.commits.flush()
    # The queued one was charged exactly as the awaited one; repeating it charges nothing and
    # reports what it charged, as for any commit.
    again = await fence.commit(queued, "0.013")
    assert (again.cost, again.duplicate) == (D("0.013"), True)
    assert await used_and_held(fence, "acme") == (D("0.026"), D(0))


async def test_queued_commits_never_let_concurrent_calls_exceed_the_limit(
    make_fence: MakeFence, gate: asyncio.Event
) -> None:
    """While commits wait in the queue, their holds keep every instance within the limit."""
    fence = make_fence(plans=PLANS, default_plan="day")
    other = make_fence(plans=PLANS, default_plan="day")  # another app instance, same store
    reader = make_fence(plans=PLANS, default_plan="day")  # a third, for status
    admitted: list[Reservation] = []

    async def call(instance: TokenFence) -> None:
        reservation = await instance.reserve("acme", "0.10", feature="chat")
        admitted.append(reservation)
        await instance.commit_soon(reservation, "0.07")  # queued: the store is slow

    await asyncio.gather(*(call(fence) for _ in range(10)))  # $1.00 held, commits queued
    assert fence.commits.pending == 10
    refused = await asyncio.gather(*(call(other) for _ in range(30)), return_exceptions=True)
    assert all(isinstance(r, BudgetExceeded) for r in refused)  # not one more call
    assert await used_and_held(reader, "acme") == (D(0), D("1.00"))

    # Calls on the instance whose commits wait are refused too; each then waits for those
    # commits to land and tries once more: $0.30 came back, so exactly 3 of 10 get through.
    racing = [asyncio.create_task(call(fence)) for _ in range(10)]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in racing)
    gate.set()  # the store answers: each hold becomes its cost
    outcomes = await asyncio.gather(*racing, return_exceptions=True)
    assert sum(o is None for o in outcomes) == 3
    assert all(isinstance(o, BudgetExceeded) for o in outcomes if o is not None)
    await fence.commits.flush()
    assert len(admitted) == 13
    used, held = await used_and_held(reader, "acme")
    assert (used, held) == (D("0.91"), D(0))
    assert used <= D("1.00")


async def test_a_live_queue_under_concurrent_calls_stays_within_the_limit(
    make_fence: MakeFence,
) -> None:
    """Concurrent calls on two instances, commits queued and sent as they go: the spend ends
    at most the limit, and exactly what the admitted calls cost."""
    fence = make_fence(plans=PLANS, default_plan="day")
    other = make_fence(plans=PLANS, default_plan="day")
    admitted = 0
    most_pending = 0

    async def caller(instance: TokenFence) -> None:
        nonlocal admitted, most_pending
        while True:
            try:
                reservation = await instance.reserve("acme", "0.03")
            except BudgetExceeded:
                return
            admitted += 1
            await instance.commit_soon(reservation, "0.03")
            most_pending = max(most_pending, instance.commits.pending)

    await asyncio.gather(*(caller(fence if n % 2 else other) for n in range(32)))
    await fence.commits.flush()
    await other.commits.flush()
    used, held = await used_and_held(fence, "acme")
    assert most_pending >= 1  # calls were admitted while commits were still queued
    assert admitted == 33  # floor($1.00 / $0.03)
    assert (used, held) == (D("0.99"), D(0))


async def test_a_full_queue_makes_its_caller_commit(
    make_fence: MakeFence, gate: asyncio.Event
) -> None:
    fence = make_fence(plans=PLANS, default_plan="big", commit_queue=2)
    reader = make_fence(plans=PLANS, default_plan="big")
    held = [await fence.reserve("acme", "0.05") for _ in range(5)]
    for reservation in held:
        await fence.commit_soon(reservation, "0.01")
    # two wait in the queue (the store is slow); the other three were committed by their
    # callers before commit_soon returned: back-pressure, nothing dropped
    assert fence.commits.pending == 2
    assert (fence.counters.commits_queued, fence.counters.commits_waited) == (2, 3)
    assert await used_and_held(reader, "acme") == (D("0.03"), D("0.10"))
    gate.set()
    await fence.commits.flush()
    assert await used_and_held(reader, "acme") == (D("0.05"), D(0))


async def test_commit_queue_zero_commits_before_returning(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="big", commit_queue=0)
    reader = make_fence(plans=PLANS, default_plan="big")
    await fence.commit_soon(await fence.reserve("acme", "0.05"), "0.01")
    assert fence.commits.pending == 0
    assert await used_and_held(reader, "acme") == (D("0.01"), D(0))
    assert (fence.counters.commits_queued, fence.counters.commits_waited) == (0, 0)
    for bad in (-1, 10**7, True, "10"):
        with pytest.raises(ConfigError, match="commit_queue"):
            make_fence(commit_queue=bad)


async def test_aclose_sends_what_is_queued(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="big")
    reader = make_fence(plans=PLANS, default_plan="big")
    held = [await fence.reserve("acme", "0.05") for _ in range(200)]
    for reservation in held:
        await fence.commit_soon(reservation, "0.01")
    await fence.aclose()
    assert fence.commits.pending == 0
    assert await used_and_held(reader, "acme") == (D("2.00"), D(0))


async def test_commit_soon_checks_its_arguments_at_once(make_fence: MakeFence) -> None:
    fence = make_fence(plans=PLANS, default_plan="big")
    reservation = await fence.reserve("acme", "0.05")
    with pytest.raises(InvalidAmount):
        await fence.commit_soon(reservation, "-0.01")
    with pytest.raises(TypeError, match="Reservation"):
        await fence.commit_soon("r1", "0.01")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="output_tokens"):
        await fence.commit_soon(reservation, "0.01", output_tokens=-1)
    with pytest.raises(TypeError, match="model"):
        await fence.commit_soon(reservation, "0.01", model=4)  # type: ignore[arg-type]
    assert fence.commits.pending == 0
    await fence.commit_soon(reservation, "0.01")
    assert await used_and_held(fence, "acme") == (D("0.01"), D(0))


async def test_a_failing_queued_commit_is_logged_and_counted_and_the_rest_land(
    make_fence: MakeFence,
) -> None:
    fence = make_fence(plans=PLANS, default_plan="big")
    first = await fence.reserve("acme", "0.05")
    last = await fence.reserve("acme", "0.05")
    forged = Reservation("r1", "bad\x00tenant", None, None, D("0.05"), 50_000_000, "big")
    with structlog.testing.capture_logs() as logs:
        await fence.commit_soon(first, "0.01")
        await fence.commit_soon(forged, "0.01")  # fails in the background (invalid id)
        await fence.commit_soon(last, "0.02")
        await fence.commits.flush()  # returns: the error is not raised into this caller
    failed = [e for e in logs if e["event"] == "queued_commit_failed"]
    assert [(e["reservation"], e["log_level"]) for e in failed] == [("r1", "error")]
    assert "InvalidId" in failed[0]["error"]
    assert fence.counters.commit_errors == 1
    assert await used_and_held(fence, "acme") == (D("0.03"), D(0))


async def test_a_call_refused_for_its_own_queued_holds_is_tried_again_after_they_land(
    make_fence: MakeFence, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sequential caller near its limit is not refused for holds its own queued commits are
    about to replace: the refused reserve flushes them and tries once more."""
    monkeypatch.setattr(commits_module, "LINGER_S", 3600.0)  # the commit waits until flushed
    fence = make_fence(plans=PLANS, default_plan="day")
    reader = make_fence(plans=PLANS, default_plan="day")
    await fence.commit_soon(await fence.reserve("acme", "0.60"), "0.10")
    assert fence.commits.pending == 1
    with pytest.raises(BudgetExceeded):  # an instance with nothing queued is refused
        await reader.reserve("acme", "0.60")
    second = await fence.reserve("acme", "0.60")  # refused, flushed, then held
    assert second.amount == D("0.60")
    assert fence.commits.pending == 0
    assert await used_and_held(reader, "acme") == (D("0.10"), D("0.60"))
    with pytest.raises(BudgetExceeded):  # and a real refusal stays one
        await fence.reserve("acme", "0.60")
    # The daily usage counts the refusals callers saw: the reader's and the last one, not the
    # tries that were made again after the queued commits landed.
    today = datetime.fromtimestamp(START, UTC).date()
    (day,) = await reader.usage("acme", today, today)
    assert day.refusals == 2
    await fence.commit_soon(await fence.reserve("acme", "0.10"), "0.10")
    with pytest.raises(BudgetExceeded):  # refused while a commit of its own was queued
        await fence.reserve("acme", "0.60")
    (day,) = await reader.usage("acme", today, today)
    assert day.refusals == 3


async def test_awaited_commits_of_concurrent_callers_share_round_trips(
    make_fence: MakeFence, pipelines: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``commits.commit`` (the HTTP API's): each caller gets its own settlement or error, as
    from ``commit``, at once (no waiting for more), in fewer round trips than callers."""
    monkeypatch.setattr(commits_module, "LINGER_S", 3600.0)  # awaited commits never linger
    fence = make_fence(plans=PLANS, default_plan="big")
    held = [await fence.reserve(f"t{n % 5}", "0.05") for n in range(60)]
    async with asyncio.timeout(30):
        settled = await asyncio.gather(
            *(fence.commits.commit(r, D(n + 1) / 1000) for n, r in enumerate(held))
        )
    assert [s.cost for s in settled] == [D(n + 1) / 1000 for n in range(60)]
    assert not any(s.duplicate or s.late for s in settled)
    round_trips = len(pipelines) + (60 - sum(pipelines))  # pipelines, and commits sent alone
    assert round_trips <= 3
    assert (await fence.commits.commit(held[0], "0.001")).duplicate
    forged = Reservation("r1", "bad\x00tenant", None, None, D("0.05"), 50_000_000, "big")
    with pytest.raises(InvalidId):
        await fence.commits.commit(forged, "0.01")
    assert (fence.counters.commits_queued, fence.counters.commit_errors) == (0, 0)
    assert await used_and_held(fence, "t0") == (
        sum(D(n + 1) / 1000 for n in range(0, 60, 5)),
        D(0),
    )


async def test_status_sees_the_commits_queued_before_it(make_fence: MakeFence) -> None:
    """Read your own writes: ``status`` waits for this fence's queued commits."""
    fence = make_fence(plans=PLANS, default_plan="big")
    await fence.commit_soon(await fence.reserve("acme", "0.05"), "0.01")
    assert fence.commits.pending == 1
    assert await used_and_held(fence, "acme") == (D("0.01"), D(0))


# -- outages, loops that end, processes that exit or die (real Redis) ---------------------------


def _need_binaries() -> None:
    if not have_redis_binaries():
        pytest.skip("redis-server / redis-cli are not installed")


@pytest.fixture
async def paused_redis(prefix: str) -> AsyncIterator[Any]:
    """A redis-server of this test alone, which it may pause (SIGSTOP) and resume."""
    _need_binaries()
    with redis_server() as server:
        try:
            yield server
        finally:
            server.send(signal.SIGCONT)


class FailedScript(FenceObserver):
    """Sets ``failed`` when a store script fails (the store did not answer)."""

    def __init__(self) -> None:
        self.failed = asyncio.Event()

    def script(self, name: str, seconds: float, ok: bool) -> None:
        if not ok:
            self.failed.set()


async def test_a_store_outage_is_retried_until_the_commit_lands(
    paused_redis: Any, prefix: str
) -> None:
    fence = TokenFence(
        redis_url=paused_redis.url, prefix=prefix, plans=PLANS, default_plan="big", timeout_s=0.2
    )
    try:
        reservation = await fence.reserve("acme", "0.05")
        paused_redis.send(signal.SIGSTOP)
        failures = fence.observe(FailedScript())
        with structlog.testing.capture_logs() as logs:
            await fence.commit_soon(reservation, "0.01")
            await asyncio.wait_for(failures.failed.wait(), 30)  # the first try failed
            paused_redis.send(signal.SIGCONT)
            await fence.commits.flush()
        assert "queued_commit_retry" in [e["event"] for e in logs]
        assert fence.counters.commit_errors == 0
        assert await used_and_held(fence, "acme") == (D("0.01"), D(0))
    finally:
        paused_redis.send(signal.SIGCONT)
        await fence.aclose()


async def test_an_outage_longer_than_the_retries_is_logged_not_raised(
    paused_redis: Any, prefix: str
) -> None:
    fence = TokenFence(
        redis_url=paused_redis.url, prefix=prefix, plans=PLANS, default_plan="big", timeout_s=0.2
    )
    try:
        reservation = await fence.reserve("acme", "0.05")
        paused_redis.send(signal.SIGSTOP)
        with structlog.testing.capture_logs() as logs:
            await fence.commit_soon(reservation, "0.01")
            unrelated = asyncio.create_task(asyncio.sleep(0.01, "done"))
            await fence.commits.flush()  # every retry failed: logged, counted, not raised
            assert await unrelated == "done"
        assert fence.counters.commit_errors == 1
        (failed,) = [e for e in logs if e["event"] == "queued_commit_failed"]
        assert failed["reservation"] == reservation.id
        assert failed["hold_expires_at"] == reservation.expires_at.isoformat()  # type: ignore[union-attr]
        paused_redis.send(signal.SIGCONT)
        # the commit never landed: its hold stays on the budget until its lease ends
        assert await used_and_held(fence, "acme") == (D(0), D("0.05"))
    finally:
        paused_redis.send(signal.SIGCONT)
        await fence.aclose()


async def _async_program(url: str, prefix: str, calls: int, tenants: int) -> None:
    """An async program whose coroutine queues commits and returns: no flush, no aclose."""
    fence = TokenFence(redis_url=url, prefix=prefix, plans=PLANS, default_plan="big")
    for n in range(calls):
        reservation = await fence.reserve(f"t{n % tenants}", "0.05")
        await fence.commit_soon(reservation, "0.01")
    assert fence.commits.pending > 0


async def _run_program(code: str) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    assert await asyncio.wait_for(proc.wait(), 120) == 0


@pytest.mark.slow
async def test_a_loop_that_ends_without_aclose_still_sends_its_commits(
    redis_url: str, prefix: str
) -> None:
    """``asyncio.run(main())`` where ``main`` queued commits and returned: the loop cancels
    the sender, which sends what is left first."""
    await _run_program(
        "import asyncio; from tests.engine.test_commits import _async_program; "
        f"asyncio.run(_async_program({redis_url!r}, {prefix!r}, 300, 20))"
    )
    reader = TokenFence(redis_url=redis_url, prefix=prefix, plans=PLANS, default_plan="big")
    try:
        for n in range(20):
            assert await used_and_held(reader, f"t{n}") == (D("0.15"), D(0))
    finally:
        await reader.aclose()


def _sync_program(url: str, prefix: str, calls: int) -> None:
    """A sync program: fence work on the fence's own loop thread; it queues its commits and
    exits at once, with no aclose."""
    fence = TokenFence(redis_url=url, prefix=prefix, plans=PLANS, default_plan="big")
    held = [fence.run_sync(fence.reserve, "acme", "0.05") for _ in range(calls)]

    async def settle() -> int:
        for reservation in held:
            await fence.commit_soon(reservation, "0.01")
        return fence.commits.pending

    assert fence.run_sync(settle) == calls  # all still queued as the program ends


@pytest.mark.slow
async def test_a_sync_program_sends_its_queued_commits_at_exit(redis_url: str, prefix: str) -> None:
    await _run_program(
        "from tests.engine.test_commits import _sync_program; "
        f"_sync_program({redis_url!r}, {prefix!r}, 200)"
    )
    reader = TokenFence(redis_url=redis_url, prefix=prefix, plans=PLANS, default_plan="big")
    try:
        assert await used_and_held(reader, "acme") == (D("2.00"), D(0))
    finally:
        await reader.aclose()


async def test_the_middleware_sends_queued_commits_at_shutdown(
    make_fence: MakeFence, gate: asyncio.Event
) -> None:
    from starlette.applications import Starlette

    from tokenfence_asgi.web.middleware import TokenFenceMiddleware

    fence = make_fence(plans=PLANS, default_plan="big")
    reader = make_fence(plans=PLANS, default_plan="big")
    for _ in range(50):
        await fence.commit_soon(await fence.reserve("acme", "0.05"), "0.01")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        gate.set()  # the store answers again just as the app shuts down

    app = Starlette(lifespan=lifespan)
    app.add_middleware(TokenFenceMiddleware, fence=fence)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for kind in ("lifespan.startup", "lifespan.shutdown"):
        inbox.put_nowait({"type": kind})
    told: list[tuple[str, int]] = []

    async def send(message: dict[str, Any]) -> None:
        told.append((message["type"], fence.commits.pending))

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send)
    # the server heard "shut down" only once every queued commit had landed
    assert told == [("lifespan.startup.complete", 50), ("lifespan.shutdown.complete", 0)]
    assert await used_and_held(reader, "acme") == (D("0.50"), D(0))


# -- a process SIGKILLed with commits queued -------------------------------------------------

CRASH = Plan("crash", [Limit("1d", max_cost="10")])
HOLD_S = 2.0
LANDED, QUEUED = 40, 30


async def _crashing_program(url: str, prefix: str) -> None:
    """Commits that land, then commits that stay queued (the store stops answering them);
    prints what it did and waits to be killed."""
    fence = TokenFence(
        redis_url=url, prefix=prefix, plans=[CRASH], default_plan="crash", hold_ttl=HOLD_S
    )
    landed = []
    for n in range(LANDED):
        reservation = await fence.reserve("acme", "0.05", reservation_id=f"landed-{n}")
        cost = 10_000_000 + n  # nano-dollars
        await fence.commit_soon(reservation, D(cost) / 10**9)
        landed.append((reservation.id, cost))
    await fence.commits.flush()

    async def never(self: CommitQueue, batch: Any) -> Any:
        await asyncio.Event().wait()

    CommitQueue._attempt = never  # type: ignore[method-assign]
    queued = []
    for n in range(QUEUED):
        reservation = await fence.reserve("acme", "0.05", reservation_id=f"queued-{n}")
        cost = 20_000_000 + n
        await fence.commit_soon(reservation, D(cost) / 10**9)
        assert reservation.expires_at is not None
        queued.append(
            (reservation.id, reservation.amount_nanos, cost, reservation.expires_at.timestamp())
        )
    await asyncio.sleep(0.05)  # the sender takes its batch: some in flight, some waiting
    report = {"landed": landed, "queued": queued, "pending": fence.commits.pending}
    print(json.dumps(report), flush=True)
    await asyncio.Event().wait()


@pytest.mark.slow
async def test_a_process_killed_with_queued_commits_loses_only_their_charges(
    redis_url: str, prefix: str
) -> None:
    """SIGKILL with 30 commits queued: their holds stay on the budget until their lease ends
    (so nothing can overspend meanwhile), then come back whole; those 30 calls are never
    charged (the operator's loss, bounded by the queue); every landed commit counts once."""
    code = (
        "import asyncio; from tests.engine.test_commits import _crashing_program; "
        f"asyncio.run(_crashing_program({redis_url!r}, {prefix!r}))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    fence = TokenFence(
        redis_url=redis_url, prefix=prefix, plans=[CRASH], default_plan="crash", hold_ttl=HOLD_S
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        report = json.loads(line)
        proc.kill()  # SIGKILL: no flush, no atexit, nothing runs in the program
        killed_at = time.time()
        await proc.wait()
        assert report["pending"] == QUEUED

        landed_nanos = sum(cost for _, cost in report["landed"])
        held_nanos = sum(amount for _, amount, _, _ in report["queued"])
        lost_nanos = sum(cost for _, _, cost, _ in report["queued"])
        status = await fence.status("acme")
        (window,) = status.windows
        assert to_nanos(window.used) == landed_nanos  # every landed commit, once
        assert (to_nanos(status.held), status.open_holds) == (held_nanos, QUEUED)
        free = to_nanos(window.remaining or 0)
        assert free == to_nanos(D(10)) - landed_nanos - held_nanos
        with pytest.raises(BudgetExceeded):  # the dead process's holds still count
            await fence.reserve("acme", from_nanos(free + 1))

        expires = max(at for *_, at in report["queued"])
        await asyncio.sleep(max(0.0, expires - time.time()) + 0.2)  # their leases run out
        scripts = 0
        while (await fence.status("acme")).held:  # each script reclaims reclaim_batch (16)
            scripts += 1
        status = await fence.status("acme")
        available_after = time.time() - killed_at
        (window,) = status.windows
        assert (status.held, status.open_holds) == (0, 0)
        assert to_nanos(window.used) == landed_nanos  # the 30 queued calls: never charged
        assert to_nanos(window.remaining or 0) == to_nanos(D(10)) - landed_nanos

        records = [r async for r in fence.usage_records(tenant_id="acme")]
        assert sorted(r.id for r in records) == sorted(rid for rid, _ in report["landed"])
        # a reconciler that learns what a lost call cost can still charge it, once, late
        rid, amount, cost, _ = report["queued"][0]
        lost = Reservation(rid, "acme", None, None, from_nanos(amount), amount, "crash")
        late = await fence.commit(lost, from_nanos(cost))
        assert (late.late, late.duplicate) == (True, False)
        assert (await fence.commit(lost, from_nanos(cost))).duplicate

        record(
            "commit_queue_sigkill",
            commits_landed=len(report["landed"]),
            commits_queued_at_kill=report["pending"],
            commits_lost=QUEUED,
            holds_left=QUEUED,
            holds_left_usd=str(from_nanos(held_nanos)),
            uncharged_cost_usd=str(from_nanos(lost_nanos)),
            hold_ttl_s=HOLD_S,
            budget_whole_again_after_s=round(available_after, 2),
            reclaiming_scripts=scripts,
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await fence.aclose()
