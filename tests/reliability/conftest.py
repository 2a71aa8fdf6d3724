"""Fixtures of the fault tests: a Redis server of the test's own, and spawned worker processes."""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.reliability.servers import RedisProcess, have_redis_binaries, redis_server


def _need_binaries() -> None:
    if not have_redis_binaries():
        if os.environ.get("CI"):
            pytest.fail("redis-server / redis-cli are needed for the fault tests")
        pytest.skip("redis-server / redis-cli are not installed")


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A ``redis-server`` of this test alone (AOF on, so a clean restart keeps the budgets),
    which the test may stop, kill and restart on the same port; removed afterwards."""
    _need_binaries()
    with redis_server("--appendonly", "yes", "--appendfsync", "everysec") as server:
        yield server


class Workers:
    """Worker processes (spawned) of one test; the ones still alive are killed at the end."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[Any] = []

    def start(self, target: Any, *args: Any) -> Any:
        proc = self.ctx.Process(target=target, args=args, daemon=True)
        proc.start()
        self.procs.append(proc)
        return proc

    def results(self, queue: Any, count: int, timeout: float = 120) -> list[Any]:
        """``count`` results from ``queue``; fails at once when a worker died without one."""
        deadline = time.monotonic() + timeout
        got: list[Any] = []
        while len(got) < count:
            try:
                got.append(queue.get(timeout=0.5))
                continue
            except queue_module.Empty:
                pass
            dead = [p for p in self.procs if p.exitcode not in (None, 0)]
            if dead:
                pytest.fail(f"worker process(es) died: exit codes {[p.exitcode for p in dead]}")
            if time.monotonic() > deadline:
                pytest.fail(f"only {len(got)} of {count} workers reported in {timeout} s")
        return got

    def close(self) -> None:
        for proc in self.procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.join(timeout=10)


@pytest.fixture
def workers() -> Iterator[Workers]:
    pool = Workers()
    try:
        yield pool
    finally:
        pool.close()
