"""The demo's app: four tenants' fenced FastAPI endpoints and a fake OpenAI-compatible provider."""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at runtime.

import hashlib
import time
import uuid
from decimal import Decimal
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from tokenfence_asgi.context import current_context
from tokenfence_asgi.endpoints import feature
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import TenantRequired
from tokenfence_asgi.web.middleware import TokenFenceMiddleware

__all__ = ["BURNER", "TENANTS", "build_app", "dashboard"]

TENANTS: dict[str, str] = {
    "acme": "free",
    "globex": "starter",
    "initech": "pro",
    "umbrella": "enterprise",
}
"""The demo's tenants and their built-in plans."""

BURNER = "globex"
"""The tenant whose agent spends its whole day budget in the scenario."""

_SYSTEM = "You are a meticulous analyst. Extract every fact, figure and risk from the text."
_FAKE_KEY = "sk-demo-not-a-key"


class ChatRequest(BaseModel):
    message: str = Field(min_length=1, max_length=50_000)
    model: str = Field(default="gpt-4o", min_length=1, max_length=100)


class AnalysisRequest(BaseModel):
    document: str = Field(min_length=1, max_length=200_000)
    model: str = Field(default="gpt-4o", min_length=1, max_length=100)


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=2_000)


def _text_of(messages: list[dict[str, Any]]) -> str:
    return " ".join(m["content"] for m in messages if isinstance(m.get("content"), str))


async def _fake_completions(request: Request) -> JSONResponse:
    """An OpenAI-compatible chat completion with plausible usage and a canned answer.

    Input tokens are about a quarter of the prompt's characters; the answer uses 60-85% of the
    output allowance (``max_tokens``), decided by a hash of the prompt, so runs repeat exactly.
    """
    body = await request.json()
    messages = body.get("messages") or []
    text = _text_of(messages)
    prompt_tokens = max(1, round(len(text) / 4)) + 4 * len(messages)
    allowance = body.get("max_tokens") or body.get("max_completion_tokens") or 1024
    fraction = 0.60 + 0.25 * hashlib.sha256(text.encode()).digest()[0] / 255
    completion_tokens = max(1, int(allowance * fraction))
    model = body.get("model", "unknown")
    snippet = text[-60:].strip()
    answer = f"[fake {model}: a {completion_tokens}-token answer to '...{snippet}']"
    return JSONResponse(
        {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def dashboard(fence: TokenFence) -> tuple[ASGIApp, str] | None:
    """The admin dashboard app and a new admin token, when the admin module is there."""
    try:
        from tokenfence_asgi.web.admin import admin_app
    except ImportError:
        return None
    token = uuid.uuid4().hex
    return admin_app(fence, token=token), token


def _money(amount: Decimal | None) -> str | None:
    return None if amount is None else f"{amount:.6f}"


def build_app(
    fence: TokenFence, provider_url: str, *, dashboard: tuple[ASGIApp, str] | None = None
) -> Starlette:
    """The demo app: the fenced API at ``/``, the fake provider at ``/provider/v1``.

    ``provider_url`` is where LiteLLM reaches the fake provider (this app's own address plus
    ``/provider/v1``). The API's docs (``/docs``, ``/redoc``, ``/openapi.json``) are excluded
    from the fence; every other API route answers 401 ``tenant_required`` without an
    ``X-Tenant-ID`` header. The dashboard is mounted at ``/admin``.
    """
    import litellm
    import openai

    async def complete(
        model: str, messages: list[dict[str, Any]], **options: Any
    ) -> dict[str, Any]:
        response = await litellm.acompletion(
            model=model,
            messages=messages,
            api_base=provider_url,
            api_key=_FAKE_KEY,
            custom_llm_provider="openai",
            **options,
        )
        ctx = current_context()
        usage = response.usage
        cost = response._hidden_params.get("response_cost") or 0
        return {
            "tenant": ctx.tenant_id if ctx else None,
            "feature": ctx.feature if ctx else None,
            "model": response.model,
            "answer": response.choices[0].message.content,
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
            "cost_usd": f"{Decimal(str(cost)):.6f}",
        }

    sdk = fence.guard(  # the official SDK, fenced directly: no LiteLLM on this path
        openai.AsyncOpenAI(api_key=_FAKE_KEY, base_url=provider_url, max_retries=0)
    )

    api = FastAPI(title="tokenfence demo", version="1")
    # The docs need no tenant; every other route does (401 naming the header), before any call.
    api.add_middleware(
        TokenFenceMiddleware, fence=fence, exclude_paths=["/docs", "/redoc", "/openapi.json"]
    )

    @api.post("/chat")
    @feature("chat")
    async def chat(body: ChatRequest) -> dict[str, Any]:
        """A chat turn (asks gpt-4o; the free plan is downgraded to gpt-4o-mini)."""
        messages = [{"role": "user", "content": body.message}]
        return await complete(body.model, messages, max_tokens=600)

    @api.post("/sdk/chat")
    @feature("chat")
    async def sdk_chat(body: ChatRequest) -> dict[str, Any]:
        """A chat turn through ``fence.guard(AsyncOpenAI())``, the OpenAI SDK without LiteLLM."""
        messages: Any = [{"role": "user", "content": body.message}]
        response = await sdk.chat.completions.create(
            model=body.model, messages=messages, max_tokens=600
        )
        ctx = current_context()
        usage = response.usage
        input_tokens = 0 if usage is None else usage.prompt_tokens
        output_tokens = 0 if usage is None else usage.completion_tokens
        cost = fence.prices.actual_cost(
            response.model,
            response_cost=None,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        ) or Decimal(0)
        return {
            "tenant": ctx.tenant_id if ctx else None,
            "feature": ctx.feature if ctx else None,
            "model": response.model,
            "answer": response.choices[0].message.content,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_usd": f"{cost:.6f}",
        }

    @api.post("/document_analysis")
    @feature("document_analysis")
    async def document_analysis(body: AnalysisRequest) -> dict[str, Any]:
        """A long analysis of a document; the output allowance is the model's maximum."""
        messages = [
            {"role": "system", "content": _SYSTEM},
            {"role": "user", "content": body.document},
        ]
        return await complete(body.model, messages)

    @api.post("/search")
    @feature("search")
    async def search(body: SearchRequest) -> dict[str, Any]:
        """A short answer from gpt-4o-mini."""
        messages = [{"role": "user", "content": f"Answer briefly: {body.query}"}]
        return await complete("gpt-4o-mini", messages, max_tokens=200)

    @api.get("/status")
    async def status() -> dict[str, Any]:
        """The calling tenant's plan and spend in each window."""
        ctx = current_context()
        if ctx is None or ctx.tenant_id is None:  # only when mounted without the middleware
            raise TenantRequired(header="X-Tenant-ID")
        s = await fence.status(ctx.tenant_id)
        windows = [
            {
                "window": w.window,
                "used": _money(w.used),
                "held": _money(w.held),
                "limit": _money(w.limit),
                "remaining": _money(w.remaining),
                "requests": w.requests,
                "resets_at": w.resets_at.isoformat(),
            }
            for w in s.windows
        ]
        return {"tenant": s.tenant_id, "plan": s.plan, "killed": s.killed, "windows": windows}

    async def index(request: Request) -> JSONResponse:
        endpoints = [
            "POST /chat",
            "POST /sdk/chat",
            "POST /document_analysis",
            "POST /search",
            "GET /status",
        ]
        return JSONResponse(
            {"tenants": TENANTS, "endpoints": endpoints, "header": "X-Tenant-ID", "docs": "/docs"}
        )

    completions = Route("/chat/completions", _fake_completions, methods=["POST"])
    provider = Mount("/provider/v1", routes=[completions])
    routes: list[Route | Mount] = [Route("/", index), provider]
    if dashboard is not None:
        routes.append(Mount("/admin", app=dashboard[0]))
    routes.append(Mount("/", app=api))
    app = Starlette(routes=routes)
    app.state.sdk_client = sdk  # closed by whoever serves the app
    return app
