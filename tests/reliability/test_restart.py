"""Redis restarted, and its script cache flushed, under load from 4 processes.

The server is this test's own (``own_redis``, AOF on: a clean restart keeps the budgets). Two
processes fail closed (the default) and two are ``on_store_error="open"``; each runs 8
concurrent callers that reserve and commit (an app retries a commit that did not reach the
store). A restart (SIGTERM, then the same port again):

- closed: the only failures are ``StoreUnavailable``, and only for calls in flight while the
  server was away (started before it answered again, ended after it was told to stop); calls
  that arrive while it is away wait for the reconnect (at most ``timeout_s``) and mostly
  succeed.
- open: no call fails; every reservation let through without the store is counted in
  ``FenceCounters.allowed_without_store``.
- nothing is charged twice and nothing acknowledged is lost: the ledger has each committed
  reservation once and the counters equal it.

``SCRIPT FLUSH`` (five times under load) fails no call at all: NOSCRIPT reloads the script.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tests.reliability.conftest import Workers
from tests.reliability.figures import percentile, record
from tests.reliability.load import BIG, engine_worker
from tests.reliability.servers import RedisProcess
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.money import to_nanos
from tokenfence_asgi.store.client import BACKOFF_CAP_S

pytestmark = pytest.mark.slow

CALLERS = 8


def _run(
    workers: Workers,
    server: RedisProcess,
    prefix: str,
    modes: list[str],
    seconds: float,
    fault: Callable[[], dict[str, float]],
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    queue = workers.ctx.Queue()
    start = workers.ctx.Barrier(len(modes) + 1)
    for i, mode in enumerate(modes):
        workers.start(
            engine_worker, server.url, prefix, f"w{i}-{mode}", mode, seconds, CALLERS, start, queue
        )
    start.wait(120)
    times = fault()
    results = workers.results(queue, len(modes))
    return sorted(results, key=lambda r: r["tenant"]), times


def _check_ledger(server: RedisProcess, prefix: str, result: dict[str, Any]) -> None:
    """Each committed reservation charged once; counters equal the ledger."""

    async def read() -> tuple[list[Any], Any]:
        fence = TokenFence(
            redis_url=server.url, prefix=prefix, plans=[BIG], default_plan="big", timeout_s=5
        )
        try:
            records = [r async for r in fence.usage_records(tenant_id=result["tenant"])]
            return records, await fence.status(result["tenant"])
        finally:
            await fence.aclose()

    records, status = asyncio.run(read())
    ids = [r.id for r in records]
    assert len(ids) == len(set(ids)), "a reservation was charged twice"
    assert sum(r.cost_nanos for r in records) == to_nanos(status.windows[0].used)
    committed = result["committed"]
    for rec in records:
        assert rec.cost_nanos == committed[rec.id][0], rec.id
    acknowledged = {rid for rid, (_, recorded) in committed.items() if recorded}
    assert acknowledged <= set(ids)  # nothing acknowledged was lost in the restart
    assert set(ids) <= set(committed)
    if result["mode"] == "closed":
        assert set(ids) == set(committed)
        assert status.held == 0


def test_restart_under_load_fails_only_calls_in_flight(
    own_redis: RedisProcess, prefix: str, workers: Workers
) -> None:
    def restart() -> dict[str, float]:
        time.sleep(1.5)
        stopped = time.monotonic()
        own_redis.stop(signal.SIGTERM)
        exited = time.monotonic()
        own_redis.start(wait=False)
        ready = own_redis.wait_ready()
        return {"stopped": stopped, "exited": exited, "ready": ready}

    modes = ["closed", "closed", "open", "open"]
    results, t = _run(workers, own_redis, prefix, modes, 4.5, restart)
    reconnects = own_redis.info("stats")["total_connections_received"]

    calls = failed = allowed = 0
    late: list[float] = []
    for result in results:
        ops = result["ops"]
        calls += len(ops)
        assert [op for op in ops if op[3].startswith("error")] == []
        unavailable = [op for op in ops if op[3] == "unavailable"]
        if result["mode"] == "open":
            assert unavailable == []  # open mode lets every call through
            degraded = sum(1 for op in ops if op[3] == "degraded")
            assert result["counters"]["allowed_without_store"] == degraded
            allowed += degraded
        else:
            assert result["counters"]["allowed_without_store"] == 0
            failed += len(unavailable)
            for t0, t1, op, _ in unavailable:
                # in flight while the server was away: ended after the stop, started before it
                # answered again (or within one backoff window of it, see the docstring)
                assert t1 >= t["stopped"], (op, t0, t1)
                late.append(t0 - t["ready"])
                assert t0 <= t["ready"] + BACKOFF_CAP_S, (op, t0 - t["ready"])
        _check_ledger(own_redis, prefix, result)
    assert failed + allowed > 0, "the restart was not felt: no call was in flight"
    record(
        "restart",
        processes=len(modes),
        calls=calls,
        restart_s=round(t["ready"] - t["stopped"], 3),
        failed_closed=failed,
        allowed_open=allowed,
        started_after_ready_and_failed=sum(1 for x in late if x > 0),
        latest_failed_start_after_ready_s=round(max(late, default=0), 3),
        connections_after_restart=reconnects,
        charged_twice=0,
        lost=0,
    )


def test_script_flush_under_load_fails_no_call(
    own_redis: RedisProcess, prefix: str, workers: Workers
) -> None:
    def flush() -> dict[str, float]:
        client = redis.Redis(port=own_redis.port, socket_timeout=5)
        try:
            time.sleep(0.5)
            for _ in range(5):
                client.script_flush()
                time.sleep(0.3)
        finally:
            client.close()
        return {}

    results, _ = _run(workers, own_redis, prefix, ["closed"] * 4, 2.5, flush)
    calls = 0
    latencies = []
    for result in results:
        calls += len(result["ops"])
        assert [op for op in result["ops"] if op[3] not in ("ok", "duplicate")] == []
        assert result["counters"]["store_errors"] == 0
        latencies += [t1 - t0 for t0, t1, _, _ in result["ops"]]
        _check_ledger(own_redis, prefix, result)
    record(
        "script_flush",
        processes=4,
        calls=calls,
        flushes=5,
        failed=0,
        p99_call_s=round(percentile(latencies, 0.99), 4),
    )
