"""Added latency of the HTTP reserve / commit API over in-process engine calls, on real Redis.

``tokenfence serve`` (one uvicorn worker, h11) runs as a child process on loopback against Redis.
This process measures, interleaved so that drift on the machine hits both alike, one
reserve + one commit made in-process (``TokenFence.reserve`` / ``commit``, one Redis round trip
each) and the same pair over HTTP (``POST /reserve``, ``POST /commit`` with an ``httpx``
keep-alive client: JSON, the service token, the reservation token, then the same engine calls
in the server). The figure to compare between machines is the ratio of the p50s. Beside them,
two requests the server refuses at once (401, no store call) show what HTTP itself costs: the
client, uvicorn and Starlette.

``python -m benchmarks.bench_service [--quick]`` prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence

TOKEN = "bench-service-token-0123456789"
PLAN = Plan(
    "bench",
    [Limit("1d", max_cost="1000000", max_requests=10**9), Limit("1mo", max_cost="4000000")],
)
PLANS_TOML = """
default_plan = "bench"

[plans.bench]
limits = [
  { window = "1d", max_cost = "1000000", max_requests = 1000000000 },
  { window = "1mo", max_cost = "4000000" },
]
"""


def _pct(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(
    redis_url: str, prefix: str, workdir: Path
) -> tuple[subprocess.Popen[bytes], str]:
    plans = workdir / "plans.toml"
    plans.write_text(PLANS_TOML)
    port = _free_port()
    log = (workdir / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tokenfence_asgi",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--redis-url",
            redis_url,
            "--prefix",
            prefix,
            "--config",
            str(plans),
            "--log-level",
            "warning",
        ],
        env={**os.environ, "TOKENFENCE_SERVICE_TOKEN": TOKEN},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"tokenfence serve exited: {(workdir / 'serve.log').read_text()}")
        try:
            if httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("tokenfence serve did not start")
        time.sleep(0.1)


async def _measure(url: str, redis_url: str, prefix: str, n: int) -> dict[str, Any]:
    fence = TokenFence(redis_url=redis_url, plans=[PLAN], default_plan="bench", prefix=prefix)
    client = httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )

    async def in_process(tenant: str) -> None:
        r = await fence.reserve(tenant, "0.0123", feature="chat", model="gpt-4o-mini")
        await fence.commit(r, "0.0101", input_tokens=1000, output_tokens=200)

    async def over_http(tenant: str) -> None:
        held = await client.post(
            "/reserve",
            json={
                "tenant": tenant,
                "feature": "chat",
                "candidates": [{"model": "gpt-4o-mini", "estimate": "0.0123"}],
            },
        )
        done = await client.post(
            "/commit",
            json={
                "id": held.json()["id"],
                "cost": "0.0101",
                "input_tokens": 1000,
                "output_tokens": 200,
            },
        )
        if done.status_code != 200:
            raise RuntimeError(done.text)

    async def http_floor(tenant: str) -> None:  # two requests refused before any work: 401
        for _ in range(2):
            await client.post("/reserve", json={"tenant": tenant}, headers={"Authorization": ""})

    local: list[float] = []
    remote: list[float] = []
    floor: list[float] = []
    try:
        for i in range(200):  # warm up: connections, script cache, code paths
            await in_process(f"warm-{i % 10}")
            await over_http(f"warm-{i % 10}")
            await http_floor("warm")
        for i in range(n):
            tenant = f"tenant-{i % 100}"
            t0 = time.perf_counter()
            await in_process(tenant)
            t1 = time.perf_counter()
            await over_http(tenant)
            t2 = time.perf_counter()
            await http_floor(tenant)
            t3 = time.perf_counter()
            local.append(t1 - t0)
            remote.append(t2 - t1)
            floor.append(t3 - t2)
    finally:
        await client.aclose()
        store = fence._store.client
        async for key in store.scan_iter(match=f"{prefix}:*", count=1000):
            await store.delete(key)
        await fence.aclose()
    return {
        "service_inprocess_pair_p50_us": round(_pct(local, 50) * 1e6, 1),
        "service_inprocess_pair_p99_us": round(_pct(local, 99) * 1e6, 1),
        "service_http_pair_p50_us": round(_pct(remote, 50) * 1e6, 1),
        "service_http_pair_p99_us": round(_pct(remote, 99) * 1e6, 1),
        "service_http_401_pair_p50_us": round(_pct(floor, 50) * 1e6, 1),
        "service_http_added_p50_us": round((_pct(remote, 50) - _pct(local, 50)) * 1e6, 1),
        "service_http_over_inprocess_p50": round(_pct(remote, 50) / _pct(local, 50), 2),
        "service_http_over_inprocess_p99": round(_pct(remote, 99) / _pct(local, 99), 2),
    }


def run(quick: bool, redis_url: str | None = None) -> dict[str, Any]:
    """Measure; ``redis_url`` defaults to ``TOKENFENCE_TEST_REDIS_URL`` or 127.0.0.1:6379."""
    url = redis_url or os.environ.get("TOKENFENCE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    n = 500 if quick else 5_000
    prefix = f"tfbsvc{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="tokenfence-bench-") as tmp:
        proc, base = _start_server(url, prefix, Path(tmp))
        try:
            return asyncio.run(_measure(base, url, prefix, n))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_service")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    from benchmarks.__main__ import quiet_logs, report

    quiet_logs()
    report(run(args.quick, args.redis_url))


if __name__ == "__main__":
    main()
