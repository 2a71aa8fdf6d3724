"""Load generators that run in spawned worker processes (top-level functions, picklable args).

Each records every call as ``(started, ended, op, outcome)`` with ``time.monotonic()`` (one
clock for every process on Linux), so the parent can line calls up with the faults it injects.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any

from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import StoreUnavailable
from tokenfence_asgi.money import from_nanos
from tokenfence_asgi.results import Reservation

__all__ = ["BIG", "engine_worker", "http_worker"]

BIG = Plan("big", [Limit("1d", max_cost="1000000")])

Op = tuple[float, float, str, str]


def _backoff(fence: TokenFence) -> dict[str, int]:
    backoff = fence._store.backoff
    if backoff is None:
        return {"probes": 0, "fast_failures": 0}
    return {"probes": backoff.probes, "fast_failures": backoff.fast_failures}


async def _engine_load(
    url: str, prefix: str, tenant: str, mode: str, seconds: float, callers: int, start: Any
) -> dict[str, Any]:
    fence = TokenFence(
        redis_url=url, prefix=prefix, plans=[BIG], default_plan="big", on_store_error=mode
    )  # type: ignore[arg-type]
    await fence.ping()
    await asyncio.to_thread(start.wait, 120)
    deadline = time.monotonic() + seconds
    ops: list[Op] = []
    committed: dict[str, tuple[int, bool]] = {}  # rid -> (cost nanos, recorded)
    abandoned: list[str] = []

    async def caller(c: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            rid, cost = f"{c}-{n}", 1000 + 10 * c + n
            n += 1
            t0 = time.monotonic()
            try:
                r = await fence.reserve(tenant, from_nanos(2 * cost), reservation_id=rid)
            except StoreUnavailable:
                ops.append((t0, time.monotonic(), "reserve", "unavailable"))
                abandoned.append(rid)
                continue
            except Exception as exc:
                ops.append((t0, time.monotonic(), "reserve", f"error: {exc!r}"))
                continue
            ops.append((t0, time.monotonic(), "reserve", "degraded" if r.degraded else "ok"))
            while True:  # an app retries a commit that did not reach the store
                t0 = time.monotonic()
                try:
                    s = await fence.commit(r, from_nanos(cost))
                except StoreUnavailable:
                    ops.append((t0, time.monotonic(), "commit", "unavailable"))
                    await asyncio.sleep(0.01)
                    continue
                except Exception as exc:
                    ops.append((t0, time.monotonic(), "commit", f"error: {exc!r}"))
                    break
                outcome = "duplicate" if s.duplicate else "ok" if s.recorded else "not_recorded"
                ops.append((t0, time.monotonic(), "commit", outcome))
                committed[rid] = (cost, s.recorded)
                break

    await asyncio.gather(*(caller(c) for c in range(callers)))
    # A reserve that failed may still have been applied (its reply lost): release it, as an
    # app that keeps its reservation ids would; the lease would reclaim it otherwise.
    for rid in abandoned:
        dead = Reservation(rid, tenant, None, None, from_nanos(0), 0, "big")
        for _ in range(200):
            try:
                await fence.release(dead)
                break
            except StoreUnavailable:
                await asyncio.sleep(0.05)
    result = {
        "tenant": tenant,
        "mode": mode,
        "ops": ops,
        "committed": committed,
        "counters": asdict(fence.counters),
        "backoff": _backoff(fence),
    }
    await fence.aclose()
    return result


def engine_worker(
    url: str,
    prefix: str,
    tenant: str,
    mode: str,
    seconds: float,
    callers: int,
    start: Any,
    queue: Any,
) -> None:
    """Reserve and commit on ``tenant`` from ``callers`` concurrent tasks for ``seconds``."""
    queue.put(asyncio.run(_engine_load(url, prefix, tenant, mode, seconds, callers, start)))


async def _http_load(
    url: str, prefix: str, tenant: str, seconds: float, callers: int, start: Any
) -> dict[str, Any]:
    import httpx
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tests.reliability.servers import serve
    from tokenfence_asgi.context import current_context
    from tokenfence_asgi.web.middleware import TokenFenceMiddleware

    fence = TokenFence(redis_url=url, prefix=prefix, plans=[BIG], default_plan="big")

    async def spend(request: Request) -> JSONResponse:
        ctx = current_context()
        assert ctx is not None
        assert ctx.tenant_id is not None
        r = await fence.reserve(ctx.tenant_id, "0.000002")
        await fence.commit(r, "0.000001")
        return JSONResponse({"ok": True})

    async def ready(request: Request) -> JSONResponse:
        await fence.ping()
        return JSONResponse({"ok": True})

    # As documented: inside Starlette's error middleware, which would answer 500 first.
    app = Starlette(
        routes=[Route("/spend", spend, methods=["POST"]), Route("/ready", ready)],
        middleware=[Middleware(TokenFenceMiddleware, fence=fence)],
    )
    ops: list[Op] = []
    with serve(app) as base:
        limits = httpx.Limits(max_connections=callers + 2, max_keepalive_connections=callers + 2)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
            assert (await client.get("/ready", headers={"X-Tenant-ID": tenant})).status_code == 200
            await asyncio.to_thread(start.wait, 120)
            deadline = time.monotonic() + seconds

            async def caller() -> None:
                while time.monotonic() < deadline:
                    t0 = time.monotonic()
                    try:
                        response = await client.post("/spend", headers={"X-Tenant-ID": tenant})
                        outcome = str(response.status_code)
                        if response.status_code != 200:
                            try:
                                outcome += ":" + str(response.json().get("error"))
                            except ValueError:
                                outcome += ":" + response.text[:300]
                    except httpx.HTTPError as exc:
                        outcome = f"http error: {exc!r}"
                    ops.append((t0, time.monotonic(), "spend", outcome))

            await asyncio.gather(*(caller() for _ in range(callers)))
    # The fence's connections belong to the server's event loop, which is gone: the process
    # exits without closing them.
    return {
        "tenant": tenant,
        "ops": ops,
        "counters": asdict(fence.counters),
        "backoff": _backoff(fence),
    }


def http_worker(
    url: str, prefix: str, tenant: str, seconds: float, callers: int, start: Any, queue: Any
) -> None:
    """Serve a fenced route with uvicorn and call it from ``callers`` tasks for ``seconds``."""
    queue.put(asyncio.run(_http_load(url, prefix, tenant, seconds, callers, start)))
