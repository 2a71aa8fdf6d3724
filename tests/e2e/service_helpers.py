"""``tokenfence serve`` as a child process on loopback, and HTTP clients that spend a budget.

``serve_subprocess`` runs ``python -m tokenfence_asgi serve ...`` (the same command the
main CLI exposes) on a free loopback port and stops it; ``spend`` is what each client process
runs: concurrent reserve / commit / release loops, retried the way a real client should (same
``request_id`` for a reserve, same token for a commit), bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.servers import free_port


@contextlib.contextmanager
def serve_subprocess(args: list[str], *, token: str, log: Path) -> Iterator[str]:
    """Run ``tokenfence serve`` with ``args`` on a free loopback port; yield its base URL."""
    port = free_port()
    env = {**os.environ, "TOKENFENCE_SERVICE_TOKEN": token}
    with log.open("wb") as out:
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
                "--log-level",
                "warning",
                *args,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"tokenfence serve exited: {log.read_text()[-2000:]}")
                try:
                    if httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("tokenfence serve did not start")
                time.sleep(0.1)
            yield url
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


async def _retry(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST, repeating the same body on a 503 or a dropped connection (safe: idempotent)."""
    for attempt in range(20):
        try:
            response = await client.post(path, json=body)
        except httpx.TransportError:
            await asyncio.sleep(0.05 * (attempt + 1))
            continue
        if response.status_code != 503:
            return response
        await asyncio.sleep(0.05 * (attempt + 1))
    raise RuntimeError(f"{path} kept failing")


async def _spend_async(
    url: str, token: str, tenant: str, seed: int, tasks: int, max_estimate_nanos: int
) -> dict[str, int]:
    totals = {"committed": 0, "commits": 0, "releases": 0, "refusals": 0, "duplicates": 0}
    deadline = time.monotonic() + 90

    async def task(client: httpx.AsyncClient, rng: random.Random, name: str) -> None:
        refusals = 0
        for i in range(400):  # bounded in count and in time
            if refusals >= 3 or time.monotonic() > deadline:
                return
            estimate = rng.randint(1, max_estimate_nanos)
            body = {
                "tenant": tenant,
                "feature": "chat",
                "request_id": f"{name}-{i}",
                "candidates": [{"model": "m", "estimate": str(Decimal(estimate) / 10**9)}],
            }
            held = await _retry(client, "/reserve", body)
            if held.status_code == 402:
                refusals += 1
                totals["refusals"] += 1
                continue
            assert held.status_code == 200, held.text
            rid = held.json()["id"]
            await asyncio.sleep(rng.random() / 100)  # the provider call
            if rng.random() < 0.1:
                released = await _retry(client, "/release", {"id": rid})
                assert released.status_code == 200, released.text
                totals["releases"] += 1
                continue
            actual = Decimal(estimate * rng.randint(50, 100) // 100) / 10**9
            done = await _retry(client, "/commit", {"id": rid, "cost": str(actual)})
            assert done.status_code == 200, done.text
            cost = int(Decimal(done.json()["cost"]) * 10**9)
            if rng.random() < 0.05:  # a client retrying a commit it already made
                again = await _retry(client, "/commit", {"id": rid, "cost": str(actual)})
                assert again.json()["duplicate"] is True, again.text
                assert again.json()["cost"] == done.json()["cost"], again.text
                totals["duplicates"] += 1
            # Each token is committed by this task only: the first answer (even a duplicate, when
            # an attempt that timed out had landed) is this reservation's one charge.
            totals["committed"] += cost
            totals["commits"] += 1

    limits = httpx.Limits(max_connections=tasks, max_keepalive_connections=tasks)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30, limits=limits
    ) as client:
        rng = random.Random(seed)
        await asyncio.gather(
            *(task(client, random.Random(rng.random()), f"p{seed}t{n}") for n in range(tasks))
        )
    return totals


def spend(
    url: str,
    token: str,
    tenant: str,
    seed: int,
    tasks: int,
    max_estimate_nanos: int,
    start: Any,
    queue: Any,
) -> None:
    """A client process: wait for the others, then spend with ``tasks`` concurrent loops."""
    start.wait(60)
    queue.put(asyncio.run(_spend_async(url, token, tenant, seed, tasks, max_estimate_nanos)))
