"""Redis stopped for 10 s under HTTP load from 4 processes (uvicorn + TokenFenceMiddleware).

Each process serves a fenced route and calls it from 8 concurrent clients, through a counting
TCP proxy in front of this test's own Redis (the proxy counts every connection the fences
open, also while the server is down). While Redis is away every call is answered 503
``ai_budget_unavailable`` (fail closed) within the fence's ``timeout_s`` (0.5 s) plus one
connection attempt, none hangs and none is a 500; the service resumes by itself within one
backoff window after Redis is back; and the fences reconnect with a bounded backoff: about one
attempt per process per window (at most 1 s), not one per request.

``TOKENFENCE_OUTAGE_S`` shortens the outage for a quick local run.

``on_store_error="allowance"`` (a small local allowance per tenant while the store is away,
written back after) is tested in ``tests/engine/test_allowance.py``.
"""

from __future__ import annotations

import math
import os
import signal
import time

import pytest

from tests.reliability.conftest import Workers
from tests.reliability.figures import percentile, record
from tests.reliability.load import http_worker
from tests.reliability.servers import CountingProxy, RedisProcess
from tokenfence_asgi.store.client import BACKOFF_BASE_S, BACKOFF_CAP_S

pytestmark = pytest.mark.slow

PROCESSES = 4
CALLERS = 8
OUTAGE_S = float(os.environ.get("TOKENFENCE_OUTAGE_S", "10"))  # the 10 s by default
BEFORE_S, AFTER_S = 1.5, 3.0
TIMEOUT_S = 0.5  # the engine's default timeout_s


def _attempt_bound(seconds: float) -> int:
    """Connections one process may open in ``seconds`` of outage: each in-flight call and each
    probe tries twice (redis-py's one retry); probes come once per window, the windows doubling
    from BACKOFF_BASE_S up to BACKOFF_CAP_S and jittered down to half."""
    ramp = math.ceil(math.log2(BACKOFF_CAP_S / BACKOFF_BASE_S)) + 1
    probes = ramp + math.ceil(seconds / (0.5 * BACKOFF_CAP_S))
    return 2 * CALLERS + 2 * probes


def test_ten_second_outage_fails_closed_fast_and_recovers_without_a_herd(
    own_redis: RedisProcess, prefix: str, workers: Workers
) -> None:
    with CountingProxy(own_redis.port) as proxy:
        queue = workers.ctx.Queue()
        start = workers.ctx.Barrier(PROCESSES + 1)
        for i in range(PROCESSES):
            workers.start(
                http_worker,
                proxy.url,
                prefix,
                f"outage-{i}",
                BEFORE_S + OUTAGE_S + AFTER_S,
                CALLERS,
                start,
                queue,
            )
        start.wait(120)
        time.sleep(BEFORE_S)
        stopped = time.monotonic()
        own_redis.stop(signal.SIGTERM)
        down = time.monotonic()
        time.sleep(max(0.0, OUTAGE_S - (down - stopped)))
        restarted = time.monotonic()
        own_redis.start(wait=False)
        ready = own_redis.wait_ready()
        results = workers.results(queue, PROCESSES)
        during = proxy.count(down, restarted)
        after = proxy.count(ready, ready + 1.0)

    failed_latency: list[float] = []
    recoveries: list[float] = []
    calls = 0
    for result in results:
        ops = result["ops"]
        calls += len(ops)
        outcomes = {op[3] for op in ops}
        assert outcomes <= {"200", "503:ai_budget_unavailable"}, outcomes  # no 500, no hang
        failed = [op for op in ops if op[3] != "200"]
        assert failed, "the outage was not felt"
        failed_latency += [t1 - t0 for t0, t1, _, _ in failed]
        # Away: everything fails closed. Back: it resumes by itself.
        assert all(op[3] != "200" for op in ops if down + 0.1 < op[0] and op[1] < restarted)
        resumed = min(t1 for t0, t1, _, outcome in ops if outcome == "200" and t0 >= ready)
        recoveries.append(resumed - ready)
        assert resumed - ready <= BACKOFF_CAP_S + TIMEOUT_S + 1.0
        settled = ready + BACKOFF_CAP_S + TIMEOUT_S
        assert all(op[3] == "200" for op in ops if op[0] >= settled)
        assert result["counters"]["store_errors"] >= len(failed)

    # Answered within the timeout plus one attempt (a refused connection is immediate); the
    # slack covers a loaded CI machine.
    assert max(failed_latency) <= TIMEOUT_S + 1.0, max(failed_latency)
    bound = PROCESSES * _attempt_bound(OUTAGE_S)
    assert during <= bound, (during, bound)
    record(
        "outage_10s",
        processes=PROCESSES,
        callers_per_process=CALLERS,
        calls=calls,
        answered_503=len(failed_latency),
        p50_503_s=round(percentile(failed_latency, 0.5), 3),
        p99_503_s=round(percentile(failed_latency, 0.99), 3),
        max_503_s=round(max(failed_latency), 3),
        connection_attempts_during_outage=during,
        attempt_bound=bound,
        connections_first_second_back=after,
        max_recovery_s=round(max(recoveries), 3),
        probes=sum(r["backoff"]["probes"] for r in results),
        fast_failures=sum(r["backoff"]["fast_failures"] for r in results),
    )
