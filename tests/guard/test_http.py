"""A guarded client inside an app behind ``TokenFenceMiddleware``.

The tenant comes from the request; a refusal raised by the guarded client (our error and the
SDK's) is answered with the same 402 / 403 / 429 bodies and headers as any fence error; and an
HTTP client that disconnects from a streaming endpoint leaves nothing held: the stream it was
reading is charged what it produced (a real uvicorn server, so the disconnect is real).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest
import redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.e2e.fake_anthropic import FakeAnthropic
from tests.e2e.fake_provider import free_port, serve
from tests.guard.conftest import MSGS, PLANS, PRICES, list_cost
from tests.guard.providers import GuardProvider
from tests.guard.test_streams import all_of
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.context import current_context
from tokenfence_asgi.endpoints import feature
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import StoreUnavailable
from tokenfence_asgi.pricing.call import CallShape
from tokenfence_asgi.web.middleware import TokenFenceMiddleware

pytestmark = pytest.mark.slow


def chat_app(fence: TokenFence, client: Any, *, owned: bool = False) -> Starlette:
    """``POST /chat?model=`` answers through the guarded ``client``; ``POST /stream`` streams
    its words; ``GET /spent`` is the tenant's spend as the app's fence sees it. ``owned``: the
    app closes both at shutdown (a fence that lives on the app's loop)."""

    @feature("chat")
    async def chat(request: Request) -> Response:
        model = request.query_params.get("model", "gpt-4o-mini")
        answer = await client.chat.completions.create(model=model, messages=MSGS)
        return JSONResponse({"answer": answer.choices[0].message.content})

    @feature("chat")
    async def stream(request: Request) -> Response:
        chunks = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MSGS, stream=True, max_tokens=300
        )

        async def words() -> AsyncIterator[str]:
            async for chunk in chunks:
                yield chunk.choices[0].delta.content or ""

        return StreamingResponse(words(), media_type="text/plain")

    async def spent(request: Request) -> Response:
        ctx = current_context()
        assert ctx is not None
        window = (await fence.status(ctx.require_tenant())).windows[0]
        return JSONResponse({"used": str(window.used), "held": str(window.held)})

    routes = [
        Route("/chat", chat, methods=["POST"]),
        Route("/stream", stream, methods=["POST"]),
        Route("/spent", spent),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if owned:
            await client.close()
            await fence.aclose()

    middleware = [Middleware(TokenFenceMiddleware, fence=fence)]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


@pytest.fixture
async def api(
    make_fence: Callable[..., TokenFence], make_client: Callable[[str], Any]
) -> AsyncIterator[tuple[TokenFence, httpx.AsyncClient]]:
    plans = [*PLANS, Plan("tight", [Limit("1d", max_requests=1)])]
    fence = make_fence(plans=plans, default_plan="open", prices=PRICES)
    app = chat_app(fence, fence.guard(make_client("AsyncOpenAI")))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        yield fence, http


ACME = {"X-Tenant-ID": "acme"}


async def test_refusals_become_the_middlewares_bodies(
    api: tuple[TokenFence, httpx.AsyncClient], oai: GuardProvider
) -> None:
    fence, http = api
    ok = await http.post("/chat", headers=ACME)
    assert ok.status_code == 200
    assert ok.json() == {"answer": "".join(oai.words)}
    denied = await http.post("/chat", params={"model": "gpt-4o"}, headers=ACME)
    assert (denied.status_code, denied.json()["error"]) == (403, "ai_model_not_allowed")
    await fence.set_plan("acme", "tiny")
    broke = await http.post("/chat", headers=ACME)
    assert (broke.status_code, broke.json()["error"]) == (402, "ai_budget_exceeded")
    assert broke.json()["window"] == "1d"
    assert broke.headers["RateLimit-Policy"].startswith('"1d";q=0')
    await fence.set_plan("globex", "tight")
    assert (await http.post("/chat", headers={"X-Tenant-ID": "globex"})).status_code == 200
    limited = await http.post("/chat", headers={"X-Tenant-ID": "globex"})
    assert (limited.status_code, limited.json()["error"]) == (429, "ai_request_limit_exceeded")
    assert "Retry-After" in limited.headers
    await fence.kill("acme")
    killed = await http.post("/chat", headers=ACME)
    assert (killed.status_code, killed.json()["error"]) == (403, "ai_disabled")
    assert oai.calls == 2
    spent = (await http.get("/spent", headers=ACME)).json()
    assert spent == {"used": str(list_cost("gpt-4o-mini", 1000, 200)), "held": "0"}


@pytest.fixture(params=["redis", "embedded"])
def served(
    request: pytest.FixtureRequest, openai_server: tuple[GuardProvider, str], oai: GuardProvider
) -> Iterator[tuple[str, TokenFence]]:
    """The chat app in a real uvicorn server; its fence lives on the server's loop."""
    prefix = f"tfg{uuid.uuid4().hex[:10]}"
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    fence = TokenFence(redis_url=url, prefix=prefix, plans=PLANS, default_plan="open")
    client = openai.AsyncOpenAI(api_key="k", base_url=f"{openai_server[1]}/v1", max_retries=0)
    try:
        with serve(chat_app(fence, fence.guard(client), owned=True), lifespan="on") as base:
            yield base, fence
    finally:
        if url is not None:
            keys = redis.Redis.from_url(url)
            for key in keys.scan_iter(match=f"{prefix}:*"):
                keys.delete(key)
            keys.close()


def test_a_client_that_disconnects_leaves_nothing_held(
    served: tuple[str, TokenFence], oai: GuardProvider
) -> None:
    base, fence = served
    oai.chunk_delay_s = 0.2
    with httpx.Client(base_url=base, timeout=10) as http:
        with http.stream("POST", "/stream", headers=ACME) as response:
            assert response.status_code == 200
            for text in response.iter_text():
                if text:
                    break  # one word, then the client goes away
        deadline = time.monotonic() + 10
        while True:  # the server settles when it notices the disconnect
            spent = http.get("/spent", headers=ACME).json()
            if Decimal(spent["held"]) == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert Decimal(spent["held"]) == 0
    estimate = fence.prices.bound("gpt-4o-mini", CallShape("chat", tuple(MSGS), output_limit=300))
    assert (
        estimate.cost_of(1) <= Decimal(spent["used"]) <= estimate.cost_of(all_of(fence, oai.words))
    )


async def test_a_store_outage_and_an_anonymous_request_become_503_and_401(
    make_client: Callable[[str], Any], oai: GuardProvider, ant: FakeAnthropic
) -> None:
    down = TokenFence(redis_url=f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    try:
        app = chat_app(down, down.guard(make_client("AsyncOpenAI")))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            outage = await http.post("/chat", headers=ACME)
        assert (outage.status_code, outage.json()["error"]) == (503, "ai_budget_unavailable")
        claude = down.guard(make_client("AsyncAnthropic"), tenant="acme")
        with pytest.raises(StoreUnavailable) as info:
            await claude.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=MSGS)
        assert isinstance(info.value, anthropic.ServiceUnavailableError)
        anonymous_app = Starlette(
            routes=[Route("/chat", app.routes[0].endpoint, methods=["POST"])],
            middleware=[Middleware(TokenFenceMiddleware, fence=down, allow_anonymous=True)],
        )
        transport = httpx.ASGITransport(app=anonymous_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            anonymous = await http.post("/chat")
        assert (anonymous.status_code, anonymous.json()["error"]) == (401, "tenant_required")
        assert (oai.calls, ant.calls) == (0, 0)
    finally:
        await down.aclose()
