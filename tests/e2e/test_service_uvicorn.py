"""The reserve / commit API in real uvicorn servers on loopback, on real Redis.

One test serves ``service_app`` from a thread and speaks HTTP to it; the other runs
``tokenfence serve --workers 2`` as a child process and has 4 client processes, 25 concurrent
requests each, spend one tenant's budget: never more than its limit, to the nano-dollar, and
exactly what Redis records.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import redis

from tests.e2e.servers import serve
from tests.e2e.service_helpers import serve_subprocess, spend
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.money import to_nanos
from tokenfence_asgi.web.service import service_app

pytestmark = pytest.mark.slow

TOKEN = "e2e-service-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLAN = Plan("shared", [Limit("1d", max_cost="6.00")])


def _delete_keys(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture
def cleanup(redis_url: str, prefix: str) -> Iterator[str]:
    yield prefix
    _delete_keys(redis_url, prefix)


def test_reserve_commit_release_over_a_real_server(redis_url: str, cleanup: str) -> None:
    fence = TokenFence(redis_url=redis_url, prefix=cleanup, plans=[PLAN], default_plan="shared")
    app = service_app(fence, token=TOKEN, owns_fence=True, max_body_bytes=4096)
    with serve(app, lifespan="on") as url, httpx.Client(base_url=url, timeout=10) as client:
        body = {
            "tenant": "acme",
            "feature": "chat",
            "request_id": "r-1",
            "candidates": [{"model": "gpt-4o", "estimate": "5.50"}],
        }
        assert client.post("/reserve", json=body).status_code == 401
        held = client.post("/reserve", json=body, headers=AUTH)
        assert held.status_code == 200, held.text
        assert held.json()["amount"] == "5.500000000"
        again = client.post("/reserve", json=body, headers=AUTH)  # a retried request
        assert again.json()["reservation_id"] == "r-1"

        refused = client.post(
            "/reserve",
            headers=AUTH,
            json={"tenant": "acme", "candidates": [{"model": "gpt-4o", "estimate": "0.60"}]},
        )
        assert refused.status_code == 402
        assert refused.json()["error"] == "ai_budget_exceeded"
        assert int(refused.headers["retry-after"]) >= 1

        token = held.json()["id"]
        done = client.post("/commit", json={"id": token, "cost": "5.25"}, headers=AUTH)
        assert (done.status_code, done.json()["cost"], done.json()["duplicate"]) == (
            200,
            "5.250000000",
            False,
        )
        repeat = client.post("/commit", json={"id": token, "cost": "5.25"}, headers=AUTH)
        assert (repeat.json()["cost"], repeat.json()["duplicate"]) == ("5.250000000", True)
        released = client.post("/release", json={"id": token}, headers=AUTH)
        assert released.json()["duplicate"] is True

        forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
        bad = client.post("/commit", json={"id": forged, "cost": "0.10"}, headers=AUTH)
        assert (bad.status_code, bad.json()["error"]) == (422, "invalid_reservation")
        big = client.post(
            "/release",
            content=b"{" + b" " * 5000 + b"}",
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert (big.status_code, big.json()["error"]) == (413, "body_too_large")

        status = client.get("/status/acme", headers=AUTH).json()
        assert (status["windows"][0]["used"], status["held"]) == ("5.250000000", "0.000000000")
        assert client.get("/openapi.json").json()["openapi"] == "3.1.0"


def test_four_client_processes_never_overspend_through_serve(
    redis_url: str, cleanup: str, tmp_path: Path
) -> None:
    plans = tmp_path / "plans.toml"
    plans.write_text(
        'default_plan = "shared"\n[plans.shared]\nlimits = [{ window = "1d", max_cost = "6.00" }]\n'
    )
    tenant = f"shared-{uuid.uuid4().hex[:8]}"
    processes, tasks, max_estimate = 4, 25, 20_000_000  # estimates up to $0.02
    with serve_subprocess(
        ["--workers", "2", "--redis-url", redis_url, "--config", str(plans), "--prefix", cleanup],
        token=TOKEN,
        log=tmp_path / "serve.log",
    ) as url:
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        start = ctx.Barrier(processes)
        procs = [
            ctx.Process(
                target=spend, args=(url, TOKEN, tenant, seed, tasks, max_estimate, start, queue)
            )
            for seed in range(processes)
        ]
        for p in procs:
            p.start()
        results = [queue.get(timeout=180) for _ in procs]
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
        with httpx.Client(base_url=url, headers=AUTH) as client:
            served = client.get(f"/status/{tenant}").json()

    fence = TokenFence(redis_url=redis_url, prefix=cleanup, plans=[PLAN], default_plan="shared")

    async def read() -> Decimal:
        try:
            status = await fence.status(tenant)
            assert (status.held, status.open_holds) == (0, 0)
            return status.windows[0].used
        finally:
            await fence.aclose()

    used = asyncio.run(read())
    total = sum(r["committed"] for r in results)
    assert all(r["commits"] > 0 and r["refusals"] > 0 for r in results), results
    assert sum(r["duplicates"] for r in results) > 0
    assert to_nanos(used) == total  # every commit counted once, to the nano-dollar
    assert served["windows"][0]["used"] == f"{used:.9f}"
    assert used <= Decimal("6.00")  # never overspent
    # A refusal needs used + up to 99 other holds of at most $0.02 + the estimate > $6.
    assert used > Decimal("6.00") - 100 * Decimal("0.02")
