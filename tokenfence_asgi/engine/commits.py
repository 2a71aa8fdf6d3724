"""The commit queue: settlements sent off the caller's path, pipelined, drained at close.

An integration that has its answer hands the commit to ``fence.commit_soon`` and returns; a
background task of the fence sends the queued commits, many in one pipelined round trip
(``store.pipeline``; per node on a Redis Cluster, and on the embedded store too). Until a
commit lands, the call's hold stays on the budget in the store, so a queued commit never lets a
tenant spend more than its limits: the hold is the call's worst case and the commit only ever
replaces it.

- **Bounded**: at most ``max_pending`` commits wait or are being sent. When the queue is full,
  the caller commits itself, awaited (back-pressure; nothing is dropped), counted in
  ``counters.commits_waited``.
- **Drained**: ``flush()`` waits for every commit queued before it; ``fence.aclose()`` flushes,
  and so does the middleware at application shutdown. A loop that ends without either (an
  ``asyncio.run`` whose coroutine returned) cancels the sender, which sends what is left
  before it stops; a sync program's private loop thread is flushed at interpreter exit.
- **Errors** of a background commit are logged (``queued_commit_failed``) and counted in
  ``counters.commit_errors``, never raised into another caller. A store outage is retried
  (``RETRY_DELAYS_S``): a commit is idempotent by reservation id, so a repeat charges nothing.
- **What a crash loses**: a process killed with commits queued (at most ``max_pending``,
  those being sent included) leaves their holds in the store. Each hold keeps its amount (the call's
  worst case) off the tenant's budget until its lease ends (``hold_ttl``, 10 minutes by
  default); then the next script on the tenant reclaims it (at most ``reclaim_batch`` holds
  per script) and the tenant is charged nothing for that call: the money the call cost is
  lost to the operator unless a reconciler commits it late (a late commit still charges it,
  once). No call is ever charged twice, and the limits are never exceeded.

Commits queued from the loop the sender runs on are sent there; a commit made on another
running loop (another thread) while the sender is busy is committed by its caller at once.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import threading
import weakref
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeGuard

import structlog

from tokenfence_asgi.errors import ConfigError, Contended, StoreUnavailable
from tokenfence_asgi.money import MoneyInput, to_nanos
from tokenfence_asgi.results import FenceCounters, Reservation, Settlement
from tokenfence_asgi.store.client import Store
from tokenfence_asgi.store.pipeline import PIPELINED, Pipeliner

__all__ = ["MAX_BATCH", "RETRY_DELAYS_S", "CommitQueue"]

log = structlog.get_logger("tokenfence_asgi")

MAX_BATCH = 128
"""Commits sent in one pipeline at most."""

LINGER_S = 0.02
"""How long the sender waits for more commits before sending fewer than ``MAX_BATCH``: each
send is a system call and a round trip, so a few commits per send cost the caller's process
less CPU than one each (measured: about half, for calls 2 ms apart). ``flush()`` (and so
``status`` and ``aclose``) sends at once; a reserve refused while the tenant's own commits
wait flushes them and tries again (``TokenFence.reserve_first``)."""

RETRY_DELAYS_S = (0.05, 0.25, 1.0)
"""Pauses before each new attempt of queued commits the store did not answer."""

EXIT_WAIT_S = 10.0
"""How long interpreter exit waits for a sync program's queued commits."""

_MAX_TOKENS = 10**12


CommitFunction = Callable[..., Awaitable[Settlement]]
"""``TokenFence.commit``."""


@dataclass(slots=True)
class _Job:
    """One queued commit: ``TokenFence.commit``'s arguments, and its place in the queue."""

    reservation: Reservation
    cost: MoneyInput
    input_tokens: int
    output_tokens: int
    model: str | None
    request_id: str | None
    seq: int = 0
    settled: asyncio.Future[Settlement] | None = None  # a caller awaits its settlement

    async def run(self, commit: CommitFunction) -> Settlement:
        return await commit(
            self.reservation,
            self.cost,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            model=self.model,
            request_id=self.request_id,
        )


def _job(
    reservation: Reservation,
    cost: MoneyInput,
    input_tokens: int,
    output_tokens: int,
    model: str | None,
    request_id: str | None,
) -> _Job:
    """A job of ``commit``'s arguments; raises now what ``commit`` would raise for them."""
    if not isinstance(reservation, Reservation):
        raise TypeError(f"commit needs a Reservation, got {type(reservation).__name__}")
    to_nanos(cost, rounding="half_up", field="cost")
    tokens: tuple[tuple[str, object], ...] = (
        ("input_tokens", input_tokens),
        ("output_tokens", output_tokens),
    )
    for name, value in tokens:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_TOKENS:
            raise ValueError(f"{name} must be an int in [0, {_MAX_TOKENS}], got {value!r}")
    labels: tuple[tuple[str, object], ...] = (("model", model), ("request_id", request_id))
    for name, value in labels:
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string or None, got {type(value).__name__}")
    return _Job(reservation, cost, input_tokens, output_tokens, model, request_id)


class CommitQueue:
    """A fence's queue of commits to send in the background (see the module doc).

    ``commit`` is the fence's ``commit``; ``store`` the store it runs on (its pipeline);
    ``max_pending`` the most commits that may wait (0: every commit is made by its caller).
    """

    __slots__ = (
        "__weakref__",
        "_at_exit",
        "_awaited",
        "_closed",
        "_commit",
        "_counters",
        "_done_through",
        "_in_flight",
        "_jobs",
        "_nudge",
        "_owners",
        "_seq",
        "_store",
        "_thread",
        "_waiters",
        "_worker",
        "max_pending",
    )

    def __init__(
        self, commit: CommitFunction, store: Store, counters: FenceCounters, *, max_pending: int
    ) -> None:
        if (
            isinstance(max_pending, bool)
            or not isinstance(max_pending, int)
            or not 0 <= max_pending <= 10**6
        ):
            raise ConfigError(f"commit_queue must be an int in [0, 1000000], got {max_pending!r}")
        self.max_pending = max_pending
        self._commit = commit
        self._store = store
        self._counters = counters
        self._jobs: deque[_Job] = deque()
        self._in_flight: list[_Job] = []
        self._owners: Counter[str] = Counter()  # queued commits per tenant and per pool
        self._nudge: asyncio.Event | None = None  # set to end the sender's wait for more
        self._awaited = 0  # jobs queued whose caller awaits them (never left to linger)
        self._seq = 0  # the last job queued
        self._done_through = 0  # every job up to this one was sent (landed or failed)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._worker: asyncio.Task[None] | None = None
        self._thread: int | None = None  # the thread the sender's loop runs on
        self._closed = False
        self._at_exit: Callable[[], None] | None = None

    @property
    def pending(self) -> int:
        """Commits queued or being sent."""
        return len(self._jobs) + len(self._in_flight)

    def holds_queued(self, tenant_id: str, pool: str | None = None) -> bool:
        """Whether a commit of the tenant's (or, given, of the pool's) is queued or being sent:
        its hold still counts in the store, maybe for more than the call's cost."""
        return bool(self._owners[tenant_id] or (pool is not None and self._owners[_POOL + pool]))

    async def put(
        self,
        reservation: Reservation,
        cost: MoneyInput,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        model: str | None = None,
        request_id: str | None = None,
    ) -> None:
        """Queue a commit (``TokenFence.commit``'s arguments, checked now); when the queue is
        full or closed, make it here, awaited, raising what ``commit`` raises."""
        job = _job(reservation, cost, input_tokens, output_tokens, model, request_id)
        if not self._take(job):
            await job.run(self._commit)

    async def commit(
        self,
        reservation: Reservation,
        cost: MoneyInput,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        model: str | None = None,
        request_id: str | None = None,
    ) -> Settlement:
        """``TokenFence.commit``, sent with the commits queued meanwhile (concurrent callers
        share a round trip) and awaited: the same ``Settlement``, or the same error, as
        ``commit``. Sent at once, without waiting for more (``LINGER_S``)."""
        job = _job(reservation, cost, input_tokens, output_tokens, model, request_id)
        job.settled = asyncio.get_running_loop().create_future()
        if not self._take(job):
            return await job.run(self._commit)
        return await job.settled

    def _take(self, job: _Job) -> bool:
        """Queue ``job`` and make sure it is sent; False when its caller must commit it."""
        loop = asyncio.get_running_loop()
        full = self.pending >= self.max_pending
        if self._closed or full or not self._owned_by(loop):
            if full and self.max_pending and not self._closed and job.settled is None:
                self._counters.commits_waited += 1
            return False
        self._seq += 1
        job.seq = self._seq
        self._jobs.append(job)
        self._owners.update(_owners(job))
        if job.settled is None:
            self._counters.commits_queued += 1
        else:
            self._awaited += 1
        if self._worker is None:
            self._start(loop)
        elif job.settled is not None or len(self._jobs) >= MAX_BATCH:
            self._poke()
        return True

    async def flush(self) -> None:
        """Wait until every commit queued before this call was sent: landed, or failed (then
        logged and counted). Returns at once when none is waiting."""
        target = self._seq
        if self._done_through >= target:
            return
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.get_loop().is_closed():
            self._owned_by(loop)  # jobs left by a loop that is gone: send them here
            if self._worker is None:
                self._start(loop)
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append((target, future))
        self._poke()
        await future

    def close(self) -> None:
        """Queue no more (later commits are made by their callers); the fence is closing."""
        self._closed = True
        self._poke()
        if self._at_exit is not None:
            atexit.unregister(self._at_exit)
            self._at_exit = None

    # -- the sender -----------------------------------------------------------------------------

    def _owned_by(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether commits queued on ``loop`` can be sent there: no sender runs elsewhere (a
        sender on a loop that was closed under it is replaced, its jobs kept)."""
        worker = self._worker
        if worker is None or worker.get_loop() is loop:
            return True
        if not worker.get_loop().is_closed():
            return False
        self._worker = None
        if self._in_flight:
            self._jobs.extendleft(reversed(self._in_flight))
            self._in_flight = []
        return True

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        # A context of its own: the queue outlives the request that started it, and its log
        # lines must not carry that request's tenant or id.
        self._worker = loop.create_task(self._work(), context=contextvars.Context())
        self._thread = threading.get_ident()
        if self._at_exit is None and not self._closed:
            ref = weakref.ref(self)

            def at_exit() -> None:
                queue = ref()
                if queue is not None:
                    queue._flush_at_exit()

            self._at_exit = at_exit
            atexit.register(at_exit)

    def _poke(self) -> None:
        """End the sender's wait for more commits (from any thread)."""
        nudge, worker = self._nudge, self._worker
        if nudge is None or worker is None:
            return
        loop = worker.get_loop()
        try:
            same = asyncio.get_running_loop() is loop
        except RuntimeError:
            same = False
        if same:
            nudge.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(nudge.set)

    async def _linger(self) -> None:
        """Wait up to ``LINGER_S`` for a full batch or a flush."""
        if self._waiters or self._awaited or self._closed or len(self._jobs) >= MAX_BATCH:
            return
        if LINGER_S <= 0:
            return
        self._nudge = nudge = asyncio.Event()
        try:
            async with asyncio.timeout(LINGER_S):
                await nudge.wait()
        except TimeoutError:
            pass
        finally:
            self._nudge = None

    async def _work(self) -> None:
        try:
            while self._jobs:
                await self._linger()
                count = min(len(self._jobs), MAX_BATCH)
                batch = [self._jobs.popleft() for _ in range(count)]
                self._in_flight = batch
                await self._send(batch)
                self._in_flight = []
                self._done(batch)
        except asyncio.CancelledError:
            # The loop is ending without a flush (an asyncio.run that returned): send what is
            # left before stopping, so that no queued commit is silently lost.
            leftover, self._in_flight = [*self._in_flight, *self._jobs], []
            self._jobs.clear()
            if leftover:
                try:
                    await self._send(leftover, retry=False)
                except asyncio.CancelledError:
                    log.error("queued_commits_lost", commits=len(leftover))
                    raise
                finally:
                    self._done(leftover)
            raise
        finally:
            if self._worker is asyncio.current_task():
                self._worker = None
            self._finished(self._seq if not self._jobs else self._done_through)

    async def _send(self, batch: list[_Job], *, retry: bool = True) -> None:
        """Send ``batch`` (one pipeline when it is more than one), then retry what the store
        did not answer; log and count what fails for good."""
        failed = await self._attempt(batch)
        for delay in RETRY_DELAYS_S if retry else ():
            if not failed:
                return
            log.warning("queued_commit_retry", commits=len(failed), delay_s=delay)
            await asyncio.sleep(delay)
            failed = await self._attempt([job for job, _ in failed])
        for job, error in failed:
            self._failed(job, error)

    async def _attempt(self, batch: list[_Job]) -> list[tuple[_Job, Exception]]:
        """One attempt of each job; the ones the store did not answer, with their error."""
        if len(batch) == 1:
            outcome = [await self._one(batch[0])]
        else:
            token = PIPELINED.set(Pipeliner(self._store))  # the tasks below copy it
            try:
                outcome = await asyncio.gather(*(self._one(job) for job in batch))
            finally:
                PIPELINED.reset(token)
        return [(job, error) for job, error in zip(batch, outcome, strict=True) if error]

    async def _one(self, job: _Job) -> Exception | None:
        try:
            settlement = await job.run(self._commit)
        except (StoreUnavailable, Contended) as exc:  # the store may answer the next time
            if job.settled is None:
                return exc
            self._failed(job, exc)  # its caller decides, as after a commit of its own
        except Exception as exc:  # a bug or a refused argument: retrying cannot help
            self._failed(job, exc)
        else:
            if _open(job.settled):
                job.settled.set_result(settlement)
        return None

    def _failed(self, job: _Job, error: Exception) -> None:
        if job.settled is not None:  # the caller's own commit: the error is the caller's
            if _open(job.settled):
                job.settled.set_exception(error)
            return
        self._counters.commit_errors += 1
        reservation = job.reservation
        log.error(
            "queued_commit_failed",
            tenant=reservation.tenant_id,
            reservation=reservation.id,
            cost=str(job.cost),
            hold_expires_at=None
            if reservation.expires_at is None
            else reservation.expires_at.isoformat(),
            error=repr(error),
        )

    def _done(self, batch: list[_Job]) -> None:
        for job in batch:
            self._owners.subtract(_owners(job))
            if job.settled is not None:
                self._awaited -= 1
                if _open(job.settled):  # never sent (cancelled with the loop)
                    job.settled.cancel()
        self._owners += Counter()  # drop the zeros
        self._finished(batch[-1].seq)

    def _finished(self, seq: int) -> None:
        """Every job up to ``seq`` was sent: wake the flushes waiting for them."""
        self._done_through = max(self._done_through, seq)
        waiting, self._waiters = self._waiters, []
        for target, future in waiting:
            if target > self._done_through:
                self._waiters.append((target, future))
                continue
            loop = future.get_loop()
            if loop.is_closed():
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                _wake(future)
            else:
                loop.call_soon_threadsafe(_wake, future)

    def _flush_at_exit(self) -> None:
        """At interpreter exit: flush commits left on a loop that still runs in another thread
        (a sync program's private loop); log the ones that cannot be sent any more."""
        if not self.pending:
            return
        worker = self._worker
        loop = None if worker is None else worker.get_loop()
        if loop is not None and loop.is_running() and threading.get_ident() != self._thread:
            try:
                asyncio.run_coroutine_threadsafe(self.flush(), loop).result(EXIT_WAIT_S)
            except Exception:  # the loop stopped under it, or the store is away
                log.exception("queued_commits_not_flushed_at_exit")
        if self.pending:
            log.error("queued_commits_lost_at_exit", commits=self.pending)


def _open(future: asyncio.Future[Settlement] | None) -> TypeGuard[asyncio.Future[Settlement]]:
    """Whether ``future`` still waits for its result, on a loop that still runs callbacks."""
    return future is not None and not future.done() and not future.get_loop().is_closed()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_POOL = "\x00pool:"  # no tenant id holds a control character


def _owners(job: _Job) -> tuple[str, ...]:
    """The budgets a job's hold is on: its tenant's, and its pool's."""
    pool = job.reservation.pool
    tenant = job.reservation.tenant_id
    return (tenant,) if pool is None else (tenant, _POOL + pool)
