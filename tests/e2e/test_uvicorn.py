"""The middleware in a real uvicorn server on loopback: a 402, a 200, request ids, lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import FakeClock
from tests.e2e.servers import serve
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.context import current_context
from tokenfence_asgi.endpoints import feature
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.web.middleware import TokenFenceMiddleware

pytestmark = pytest.mark.slow

TINY = Plan("tiny", [Limit("1d", max_cost="0.05")], upgrade_url="https://example.com/upgrade")


def build_app(events: list[str]) -> FastAPI:
    clock = FakeClock()
    fence = TokenFence(plans=[TINY], default_plan="tiny", clock=clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await fence.ping()
        events.append("startup")
        yield
        await fence.aclose()
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    @feature("chat")
    async def chat(cost: str) -> dict[str, Any]:
        ctx = current_context()
        assert ctx is not None
        r = await fence.reserve(ctx.require_tenant(), cost, feature=ctx.feature)
        await fence.commit(r, cost)
        return {"tenant": ctx.tenant_id, "feature": ctx.feature, "request_id": ctx.request_id}

    app.add_middleware(TokenFenceMiddleware, fence=fence, clock=clock)
    return app


def test_402_and_200_through_a_real_server() -> None:
    events: list[str] = []
    with (
        serve(build_app(events), lifespan="on") as url,
        httpx.Client(base_url=url, timeout=5) as client,
    ):
        assert events == ["startup"]
        ok = client.post(
            "/chat",
            params={"cost": "0.04"},
            headers={"X-Tenant-ID": "acme", "X-Request-ID": "e2e-1"},
        )
        assert ok.status_code == 200
        assert ok.json() == {"tenant": "acme", "feature": "chat", "request_id": "e2e-1"}
        assert ok.headers["x-request-id"] == "e2e-1"

        refused = client.post("/chat", params={"cost": "0.02"}, headers={"X-Tenant-ID": "acme"})
        assert refused.status_code == 402
        assert refused.json()["error"] == "ai_budget_exceeded"
        assert (refused.json()["used"], refused.json()["limit"]) == ("0.040000", "0.050000")
        assert refused.headers["retry-after"] == "43200"
        assert refused.headers["ratelimit"] == '"1d";r=10000;t=43200'
        assert len(refused.headers["x-request-id"]) == 32

        other = client.post("/chat", params={"cost": "0.02"}, headers={"X-Tenant-ID": "other"})
        assert other.status_code == 200
        assert client.post("/chat", params={"cost": "0.01"}).status_code == 401
    assert events == ["startup", "shutdown"]
