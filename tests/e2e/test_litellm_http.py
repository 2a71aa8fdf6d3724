"""TokenFenceCallback through real HTTP: LiteLLM's openai provider against a loopback fake server.

The fake provider answers with fixed usage (1000 input, 200 output tokens), so gpt-4o-mini calls
cost exactly $0.00027 at LiteLLM's prices, and it counts the requests it received: a refused
call must never reach it. No internet, no API key.
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
from tokenfence_asgi.config import BUILTIN_PLANS, Limit, Plan
from tokenfence_asgi.context import FenceContext, tenant_scope
from tokenfence_asgi.endpoints import feature
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import BudgetExceeded, InputTooLong, ModelNotAllowed
from tokenfence_asgi.litellm import TokenFenceCallback
from tokenfence_asgi.money import from_nanos, to_nanos
from tokenfence_asgi.web.middleware import TokenFenceMiddleware

pytestmark = [
    pytest.mark.slow,
    # LiteLLM's own use of pydantic warns; nothing to do with this project.
    pytest.mark.filterwarnings(
        "ignore:Items? .* on TypedDict class .* using the `ReadOnly` qualifier:UserWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:Accessing the 'model_(computed_)?fields' attribute on the inst:DeprecationWarning"
    ),
]

MSGS = [{"role": "user", "content": "Say hello."}]
CALL_COST = Decimal("0.00027")  # 1000 x $0.15/M + 200 x $0.60/M
needs_settle_hook = pytest.mark.skipif(
    not hasattr(FenceContext, "on_end"), reason="needs the end-of-scope settle hook in context.py"
)
OPEN = Plan("open", [Limit("1d", max_cost="10")])
TINY = Plan("tiny", [Limit("1d", max_cost="0.001")], upgrade_url="https://example.com/up")
PLANS = [*BUILTIN_PLANS, OPEN, TINY]


@pytest.fixture
def fence(make_fence: Callable[..., TokenFence]) -> TokenFence:
    return make_fence(plans=PLANS, default_plan="open")


@pytest.fixture
async def cb(fence: TokenFence) -> AsyncIterator[TokenFenceCallback]:
    callback = TokenFenceCallback(fence)
    with saved_callbacks():
        litellm.callbacks = [callback]
        try:
            yield callback
        finally:
            callback.close()
            await close_litellm_clients()


async def window(fence: TokenFence, tenant: str = "acme") -> tuple[Decimal, Decimal]:
    first = (await fence.status(tenant)).windows[0]
    return first.used, first.held


async def settled(fence: TokenFence, tenant: str = "acme") -> tuple[Decimal, Decimal]:
    """The window once no hold is left (the success event commits after the caller returns)."""
    for _ in range(500):
        used, held = await window(fence, tenant)
        if held == 0:
            break
        await asyncio.sleep(0.002)
    return used, held


async def test_charged_cost_is_litellms_cost_of_the_response(
    cb: TokenFenceCallback, fence: TokenFence, provider: FakeProvider, api: dict[str, str]
) -> None:
    async with tenant_scope("acme"):
        response = await litellm.acompletion(model="gpt-4o-mini", messages=MSGS, **api)
        await cb.settle()
    litellm_cost = response._hidden_params["response_cost"]
    assert from_nanos(to_nanos(str(litellm_cost))) == CALL_COST
    assert await window(fence) == (CALL_COST, 0)
    body = provider.requests[-1]
    assert (body["model"], body["max_tokens"]) == ("gpt-4o-mini", 4096)  # capped to the hold


async def test_exhausted_budget_blocks_before_any_provider_call(
    cb: TokenFenceCallback, fence: TokenFence, provider: FakeProvider, api: dict[str, str]
) -> None:
    await fence.set_plan("acme", "tiny")
    spent = await fence.reserve("acme", "0.001")
    await fence.commit(spent, "0.001")
    async with tenant_scope("acme"):
        with pytest.raises(BudgetExceeded) as info:
            await litellm.acompletion(model="gpt-4o-mini", messages=MSGS, max_tokens=10, **api)
    assert info.value.to_dict()["used"] == "0.001000"
    assert provider.calls == 0


async def test_free_plan_gpt4o_is_answered_by_gpt4o_mini(
    cb: TokenFenceCallback, fence: TokenFence, provider: FakeProvider, api: dict[str, str]
) -> None:
    await fence.set_plan("acme", "free")
    async with tenant_scope("acme"):
        response = await litellm.acompletion(model="gpt-4o", messages=MSGS, **api)
        await cb.settle()
    assert provider.requests[-1]["model"] == "gpt-4o-mini"
    assert response.model == "gpt-4o-mini"
    assert await window(fence) == (CALL_COST, 0)


async def test_disallowed_model_and_too_long_input_never_reach_the_provider(
    cb: TokenFenceCallback, fence: TokenFence, provider: FakeProvider, api: dict[str, str]
) -> None:
    await fence.set_plan("acme", "free")
    async with tenant_scope("acme"):
        with pytest.raises(ModelNotAllowed):
            await litellm.acompletion(model="claude-3-5-sonnet-20241022", messages=MSGS, **api)
        long = [{"role": "user", "content": "x" * 2001}]
        with pytest.raises(InputTooLong):
            await litellm.acompletion(model="gpt-4o-mini", messages=long, **api)
    assert provider.calls == 0
    assert await window(fence) == (0, 0)


async def test_failure_releases_the_hold(
    cb: TokenFenceCallback, fence: TokenFence, provider: FakeProvider, api: dict[str, str]
) -> None:
    provider.fail_next = 100
    async with tenant_scope("acme"):
        with pytest.raises(litellm.InternalServerError):
            await litellm.acompletion(model="gpt-4o-mini", messages=MSGS, **api)
        assert await window(fence) == (0, 0)  # released before the caller saw the error
        await cb.settle()
    assert provider.calls >= 1


async def test_stream_is_charged_at_the_end(
    cb: TokenFenceCallback, fence: TokenFence, provider: FakeProvider, api: dict[str, str]
) -> None:
    async with tenant_scope("acme"):
        stream = await litellm.acompletion(
            model="gpt-4o-mini", messages=MSGS, stream=True, max_tokens=500, **api
        )
        parts = []
        async for chunk in stream:
            parts.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
            assert (await window(fence))[1] > 0  # held while it streams
        await cb.settle()
    assert "".join(parts) == "Hello from the fake provider."
    assert provider.requests[-1]["stream_options"] == {"include_usage": True}
    assert await window(fence) == (CALL_COST, 0)  # the provider's usage, not a local count


async def test_cancelled_stream_leaves_no_hold(
    cb: TokenFenceCallback, fence: TokenFence, provider: FakeProvider, api: dict[str, str]
) -> None:
    provider.chunk_delay_s = 0.05
    hold = cb.prices.estimate("gpt-4o-mini", MSGS, max_output_tokens=300).amount_nanos
    first_chunk = asyncio.Event()

    async def consume() -> None:
        stream = await litellm.acompletion(
            model="gpt-4o-mini", messages=MSGS, stream=True, max_tokens=300, **api
        )
        async for _ in stream:
            first_chunk.set()

    async with tenant_scope("acme"):
        task = asyncio.create_task(consume())
        await first_chunk.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await window(fence) == (0, from_nanos(hold))  # no callback fired
        await cb.settle()  # what the end of the request does
    used, held = await window(fence)
    assert held == 0
    assert 0 < used < from_nanos(hold) / 5  # its input and what it streamed, not its hold


async def test_router_downgrades_within_its_deployment(
    cb: TokenFenceCallback, fence: TokenFence, provider: FakeProvider, api: dict[str, str]
) -> None:
    router = litellm.Router(
        model_list=[{"model_name": "smart", "litellm_params": {"model": "openai/gpt-4o", **api}}],
        num_retries=2,
    )
    await fence.set_plan("acme", "free")
    async with tenant_scope("acme"):
        response = await router.acompletion(model="smart", messages=MSGS)
        await cb.settle()
    assert response.choices[0].message.content == "Hello from the fake provider."
    assert provider.requests[-1]["model"] == "gpt-4o-mini"
    assert await window(fence) == (CALL_COST, 0)
    await fence.set_plan("acme", "tiny")
    async with tenant_scope("acme"):
        with pytest.raises(BudgetExceeded):
            await router.acompletion(model="smart", messages=MSGS)
    assert provider.calls == 1


@pytest.fixture
async def app_client(
    cb: TokenFenceCallback, fence: TokenFence, api: dict[str, str]
) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()

    @app.post("/chat")
    @feature("chat")
    async def chat(model: str = "gpt-4o-mini") -> dict[str, Any]:
        response = await litellm.acompletion(model=model, messages=MSGS, max_tokens=100, **api)
        return {"answer": response.choices[0].message.content, "model": response.model}

    @app.post("/chat-sync")
    @feature("chat")
    def chat_sync() -> dict[str, Any]:  # run in the threadpool: the sync entry point
        response = cb.completion(model="gpt-4o-mini", messages=MSGS, max_tokens=100, **api)
        return {"answer": response.choices[0].message.content}

    @app.post("/abandon")
    @feature("chat")
    async def abandon() -> dict[str, Any]:  # reads one chunk, then goes away
        stream = await litellm.acompletion(
            model="gpt-4o-mini", messages=MSGS, stream=True, max_tokens=300, **api
        )
        async for _ in stream:
            break
        return {"ok": True}

    router = litellm.Router(
        model_list=[{"model_name": "smart", "litellm_params": {"model": "openai/gpt-4o", **api}}],
        num_retries=2,
    )

    @app.post("/routed")
    @feature("chat")
    async def routed() -> dict[str, Any]:
        response = await router.acompletion(model="smart", messages=MSGS, max_tokens=100)
        return {"model": response.model}

    app.add_middleware(TokenFenceMiddleware, fence=fence)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        yield client


async def test_fastapi_endpoint_answers_402_from_inside_litellm(
    app_client: httpx.AsyncClient, fence: TokenFence, provider: FakeProvider
) -> None:
    ok = await app_client.post("/chat", headers={"X-Tenant-ID": "acme"})
    assert ok.status_code == 200
    assert ok.json() == {"answer": "Hello from the fake provider.", "model": "gpt-4o-mini"}
    assert await settled(fence) == (CALL_COST, 0)

    await fence.set_plan("acme", "tiny")
    spent = await fence.reserve("acme", "0.0007")
    await fence.commit(spent, "0.0007")  # $0.00097 of $0.001 used
    refused = await app_client.post("/chat", headers={"X-Tenant-ID": "acme"})
    assert refused.status_code == 402
    assert refused.json()["error"] == "ai_budget_exceeded"
    assert refused.json()["upgrade_url"] == "https://example.com/up"
    assert "retry-after" in refused.headers
    assert provider.calls == 1

    await fence.set_plan("free-user", "free")
    forbidden = await app_client.post(
        "/chat", params={"model": "o1"}, headers={"X-Tenant-ID": "free-user"}
    )
    assert forbidden.status_code == 403
    assert forbidden.json()["error"] == "ai_model_not_allowed"


async def test_sync_endpoint_is_fenced_through_the_apps_loop(
    app_client: httpx.AsyncClient, fence: TokenFence, provider: FakeProvider
) -> None:
    ok = await app_client.post("/chat-sync", headers={"X-Tenant-ID": "acme"})
    assert ok.status_code == 200
    assert await window(fence) == (CALL_COST, 0)  # charged before the endpoint returned
    await fence.set_plan("acme", "tiny")
    spent = await fence.reserve("acme", "0.0007")
    await fence.commit(spent, "0.0007")  # $0.00097 of $0.001 used
    refused = await app_client.post("/chat-sync", headers={"X-Tenant-ID": "acme"})
    assert refused.status_code == 402
    assert provider.calls == 1


@needs_settle_hook
async def test_end_of_request_settles_an_abandoned_stream(
    app_client: httpx.AsyncClient, cb: TokenFenceCallback, fence: TokenFence
) -> None:
    hold = cb.prices.estimate("gpt-4o-mini", MSGS, max_output_tokens=300).amount_nanos
    ok = await app_client.post("/abandon", headers={"X-Tenant-ID": "acme"})
    assert ok.status_code == 200
    used, held = await window(fence)
    assert held == 0
    assert 0 < used < from_nanos(hold) / 5  # its input and what it streamed, not its hold


@needs_settle_hook
async def test_end_of_tenant_scope_settles_an_abandoned_stream(
    cb: TokenFenceCallback, fence: TokenFence, api: dict[str, str]
) -> None:
    async with tenant_scope("acme"):
        stream = await litellm.acompletion(
            model="gpt-4o-mini", messages=MSGS, stream=True, max_tokens=300, **api
        )
        async for _ in stream:
            break
    assert (await window(fence))[1] == 0


async def test_router_refusal_inside_an_endpoint_is_a_402(
    app_client: httpx.AsyncClient, fence: TokenFence, provider: FakeProvider
) -> None:
    await fence.set_plan("acme", "free")
    ok = await app_client.post("/routed", headers={"X-Tenant-ID": "acme"})
    assert ok.json() == {"model": "gpt-4o-mini"}
    await fence.set_plan("poor", "tiny")
    spent = await fence.reserve("poor", "0.001")
    await fence.commit(spent, "0.001")
    refused = await app_client.post("/routed", headers={"X-Tenant-ID": "poor"})
    assert refused.status_code == 402  # not the 422 the Router saw
    assert refused.json()["error"] == "ai_budget_exceeded"
    assert provider.calls == 1
