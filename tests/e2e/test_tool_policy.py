"""Tool-call policy end to end: FastAPI + middleware + LiteLLM over HTTP to a fake provider.

The fake provider answers with a tool call. A denied tool gets the app a 403
``ai_policy_denied`` body; a tool that needs approval gets a 403 ``ai_approval_required`` body
with a pending approval id; once an operator approves it, the request replayed with that id is
answered, once. Every call that reached the provider is charged exactly once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from tests.e2e.fake_provider import FakeProvider
from tests.litellm.litellm_support import close_litellm_clients, saved_callbacks
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.endpoints import feature
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.litellm import APPROVAL_KEY, TokenFenceCallback
from tokenfence_asgi.policy import Policy
from tokenfence_asgi.web.middleware import TokenFenceMiddleware

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:Items? .* on TypedDict class .* using the `ReadOnly` qualifier:UserWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:Accessing the 'model_(computed_)?fields' attribute on the inst:DeprecationWarning"
    ),
]

CALL_COST = Decimal("0.00027")  # 1000 x $0.15/M + 200 x $0.60/M (gpt-4o-mini)
AGENT = Plan(
    "agent",
    [Limit("1d", max_cost="10")],
    policy=Policy().deny("tool:drop_*").require_approval("tool:send_email").allow("tool:**"),
)
TOOLS = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
    for n in ("search_docs", "drop_table", "send_email")
]


@pytest.fixture
def fence(make_fence: Callable[..., TokenFence]) -> TokenFence:
    return make_fence(plans=[AGENT], default_plan="agent")


@pytest.fixture
async def client(
    fence: TokenFence, server: tuple[FakeProvider, str]
) -> AsyncIterator[httpx.AsyncClient]:
    with saved_callbacks():
        callback = TokenFenceCallback(fence)
        litellm.callbacks = [callback]
        api = {"api_base": server[1], "api_key": "sk-fake"}
        app = FastAPI()

        @app.post("/agent")
        @feature("agent")
        async def agent(approval: str | None = None) -> dict[str, Any]:
            metadata = {APPROVAL_KEY: approval} if approval else {}
            response = await litellm.acompletion(
                model="openai/gpt-4o-mini",
                messages=[{"role": "user", "content": "Do it."}],
                tools=TOOLS,
                max_tokens=100,
                metadata=metadata,
                **api,
            )
            called = response.choices[0].message.tool_calls or []
            return {"tools": [c.function.name for c in called]}

        router = litellm.Router(
            model_list=[
                {"model_name": "smart", "litellm_params": {"model": "openai/gpt-4o-mini", **api}}
            ],
            num_retries=2,
        )

        @app.post("/routed")
        @feature("agent")
        async def routed() -> dict[str, Any]:
            response = await router.acompletion(
                model="smart",
                messages=[{"role": "user", "content": "Do it."}],
                tools=TOOLS,
                max_tokens=100,
            )
            return {
                "tools": [c.function.name for c in response.choices[0].message.tool_calls or []]
            }

        app.add_middleware(TokenFenceMiddleware, fence=fence)
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                yield http
        finally:
            callback.close()
            await close_litellm_clients()


async def spent(fence: TokenFence, tenant: str) -> Decimal:
    for _ in range(500):
        window = (await fence.status(tenant)).windows[0]
        if window.held == 0:
            return window.used
        await asyncio.sleep(0.002)
    raise AssertionError(f"a hold was left: {window}")


async def test_denied_tool_is_never_offered_and_a_denied_call_is_403(
    client: httpx.AsyncClient, fence: TokenFence, provider: FakeProvider
) -> None:
    provider.tool_calls = ("search_docs",)
    ok = await client.post("/agent", headers={"X-Tenant-ID": "acme"})
    assert ok.status_code == 200
    assert ok.json() == {"tools": ["search_docs"]}
    offered = [t["function"]["name"] for t in provider.requests[-1]["tools"]]
    assert offered == ["search_docs", "send_email"]  # drop_table never reached the provider

    provider.tool_calls = ("drop_table",)  # the model calls it anyway
    denied = await client.post("/agent", headers={"X-Tenant-ID": "acme"})
    assert denied.status_code == 403
    assert denied.json()["error"] == "ai_policy_denied"
    assert "tool:drop_table" in denied.json()["message"]
    assert provider.calls == 2
    assert await spent(fence, "acme") == 2 * CALL_COST  # both calls were made and charged


async def test_router_does_not_retry_a_denied_tool_call(
    client: httpx.AsyncClient, fence: TokenFence, provider: FakeProvider
) -> None:
    provider.tool_calls = ("drop_table",)
    denied = await client.post("/routed", headers={"X-Tenant-ID": "acme"})
    assert denied.status_code == 403
    assert denied.json()["error"] == "ai_policy_denied"
    assert provider.calls == 1  # neither retried nor sent to another deployment
    assert await spent(fence, "acme") == CALL_COST


async def test_approval_round_trip_is_single_use(
    client: httpx.AsyncClient, fence: TokenFence, provider: FakeProvider
) -> None:
    provider.tool_calls = ("send_email",)
    pending = await client.post("/agent", headers={"X-Tenant-ID": "acme"})
    assert pending.status_code == 403
    body = pending.json()
    assert body["error"] == "ai_approval_required"
    assert body["action"] == "tool:send_email"
    approval = body["approval_id"]

    assert await fence.approve(approval)
    replayed = await client.post(
        "/agent", params={"approval": approval}, headers={"X-Tenant-ID": "acme"}
    )
    assert replayed.status_code == 200
    assert replayed.json() == {"tools": ["send_email"]}

    again = await client.post(
        "/agent", params={"approval": approval}, headers={"X-Tenant-ID": "acme"}
    )
    assert again.status_code == 403
    assert again.json()["error"] == "ai_approval_required"
    assert again.json()["approval_id"] != approval

    # Another tenant cannot use acme's approval.
    other = await client.post(
        "/agent",
        params={"approval": again.json()["approval_id"]},
        headers={"X-Tenant-ID": "globex"},
    )
    assert other.status_code == 422
    assert provider.calls == 4
    assert await spent(fence, "acme") == 3 * CALL_COST
    assert await spent(fence, "globex") == CALL_COST


async def test_ledger_records_the_model_used_and_the_request_id(
    client: httpx.AsyncClient, fence: TokenFence, provider: FakeProvider
) -> None:
    provider.tool_calls = ("search_docs",)
    ok = await client.post("/agent", headers={"X-Tenant-ID": "acme", "X-Request-ID": "req-42"})
    assert ok.status_code == 200
    assert await spent(fence, "acme") == CALL_COST
    records = [r async for r in fence.usage_records(tenant_id="acme")]
    assert len(records) == 1
    record = records[0]
    assert record.request_id == "req-42"
    assert record.feature == "agent"
    assert record.model_requested == "openai/gpt-4o-mini"
    assert record.model == "gpt-4o-mini"  # what the provider answered with
    assert (record.input_tokens, record.output_tokens) == (1000, 200)
    assert record.cost == CALL_COST
