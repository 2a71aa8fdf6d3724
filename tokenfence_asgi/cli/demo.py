"""``tokenfence demo``: four tenants share one FastAPI app, and one of them runs out of AI budget.

The app has ``/chat``, ``/document_analysis`` and ``/search`` endpoints behind
``TokenFenceMiddleware``; each calls ``litellm.acompletion`` through ``TokenFenceCallback``;
``/sdk/chat`` calls the official OpenAI SDK's ``AsyncOpenAI`` through ``fence.guard`` instead
(umbrella is served there), on the same budgets. The
LLM is a fake OpenAI-compatible provider served by the same process (``/provider/v1``): it
answers with realistic token counts, so LiteLLM prices every call as it would a real one, and
no API key or network is needed. When the server is up, a scripted scenario runs against it
over HTTP: every tenant is served, then globex's agent is told to "analyse everything" until
the fence downgrades it and then refuses it with a 402, while the other tenants are still
served. Then the server keeps running for curl (``once=True``: it stops instead).

Needs the ``demo`` extra (FastAPI, uvicorn, LiteLLM, openai); LiteLLM is imported with its bundled
price map (``LITELLM_LOCAL_MODEL_COST_MAP=True``), so nothing is downloaded.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at runtime.

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import time
import uuid
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, Field
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from tokenfence_asgi.config import Plan
from tokenfence_asgi.context import current_context
from tokenfence_asgi.endpoints import feature
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import TenantRequired
from tokenfence_asgi.ops.simulate import delete_prefix
from tokenfence_asgi.web.middleware import TokenFenceMiddleware

__all__ = ["BURNER", "TENANTS", "DemoError", "build_app", "run_demo"]

TENANTS: dict[str, str] = {
    "acme": "free",
    "globex": "starter",
    "initech": "pro",
    "umbrella": "enterprise",
}
"""The demo's tenants and their built-in plans."""

BURNER = "globex"
"""The tenant whose agent spends its whole day budget in the scenario."""

_WORKERS = 4  # the agent's concurrent calls
_MAX_BURN_CALLS = 400  # the starter plan refuses long before; a guard against a broken fence
_HELLO = "Hello"  # the short question of the scenario and of the printed curl line
_SYSTEM = "You are a meticulous analyst. Extract every fact, figure and risk from the text."
_WORDS = ("revenue", "margin", "contract", "renewal", "churn", "forecast", "supplier",
          "liability", "clause", "quarter", "region", "pipeline", "headcount", "discount",
          "warranty", "audit", "exposure", "invoice", "backlog", "capacity", "pricing")  # fmt: skip
# LiteLLM's own use of pydantic warns about its TypedDicts; nothing a demo user can act on.
_LITELLM_WARNINGS = (
    r"Items? .* on TypedDict class .* using the `ReadOnly` qualifier",
    r"Accessing the 'model_(computed_)?fields' attribute on the inst",
)
_CALLBACK_LISTS = ("callbacks", "input_callback", "success_callback", "failure_callback",
                   "_async_success_callback", "_async_failure_callback")  # fmt: skip


class DemoError(Exception):
    """The demo could not start (port in use) or its story did not happen."""


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


def _dashboard(fence: TokenFence) -> tuple[ASGIApp, str] | None:
    """The admin dashboard app and a new admin token, when the admin module is there."""
    try:
        from tokenfence_asgi.web.admin import admin_app
    except ImportError:
        return None
    token = uuid.uuid4().hex
    return admin_app(fence, token=token), token


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

    async def complete(
        model: str, messages: list[dict[str, Any]], **options: Any
    ) -> dict[str, Any]:
        response = await litellm.acompletion(
            model=model, messages=messages, api_base=provider_url, api_key="sk-demo-not-a-key",
            custom_llm_provider="openai", **options,
        )  # fmt: skip
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

    import openai

    sdk = fence.guard(  # the official SDK, fenced directly: no LiteLLM on this path
        openai.AsyncOpenAI(api_key="sk-demo-not-a-key", base_url=provider_url, max_retries=0)
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
        messages = [{"role": "system", "content": _SYSTEM},
                    {"role": "user", "content": body.document}]  # fmt: skip
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
        return {
            "tenant": s.tenant_id, "plan": s.plan, "killed": s.killed,
            "windows": [
                {"window": w.window, "used": f"{w.used:.6f}", "held": f"{w.held:.6f}",
                 "limit": None if w.limit is None else f"{w.limit:.6f}",
                 "remaining": None if w.remaining is None else f"{w.remaining:.6f}",
                 "requests": w.requests, "resets_at": w.resets_at.isoformat()}
                for w in s.windows
            ],
        }  # fmt: skip

    async def index(request: Request) -> JSONResponse:
        return JSONResponse({
            "tenants": TENANTS,
            "endpoints": ["POST /chat", "POST /sdk/chat", "POST /document_analysis",
                          "POST /search", "GET /status"],
            "header": "X-Tenant-ID", "docs": "/docs",
        })  # fmt: skip

    completions = Route("/chat/completions", _fake_completions, methods=["POST"])
    provider = Mount("/provider/v1", routes=[completions])
    routes: list[Route | Mount] = [Route("/", index), provider]
    if dashboard is not None:
        routes.append(Mount("/admin", app=dashboard[0]))
    routes.append(Mount("/", app=api))
    app = Starlette(routes=routes)
    app.state.sdk_client = sdk  # closed by whoever serves the app
    return app


@dataclass
class _Reply:
    tenant: str
    path: str
    status: int
    body: dict[str, Any]

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def cost(self) -> Decimal:
        return Decimal(str(self.body.get("cost_usd", "0")))


def _usd(amount: Decimal, places: int = 2) -> str:
    rounded = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return f"${rounded:,.{places}f}"


def _dollars(amount: Decimal) -> str:
    """``$5``, ``$0.50``: cents only when there are some."""
    return _usd(amount, 0 if amount == amount.to_integral_value() else 2)


def _chunk(number: int, length: int) -> str:
    """A deterministic piece of a long document, ``length`` characters."""
    words = [f"Section {number}:"]
    size = len(words[0])
    index = number
    while size < length:
        word = _WORDS[(index * 7 + size) % len(_WORDS)]
        words.append(word)
        size += len(word) + 1
        index += 1
    return " ".join(words)[:length]


class _Scenario:
    """The scripted story, told on ``console`` while it happens against the running app."""

    def __init__(self, client: httpx.AsyncClient, fence: TokenFence, console: Console) -> None:
        self.client = client
        self.fence = fence
        self.console = console

    async def call(self, tenant: str, path: str, payload: dict[str, Any]) -> _Reply:
        response = await self.client.post(path, json=payload, headers={"X-Tenant-ID": tenant})
        return _Reply(tenant, path, response.status_code, response.json())

    async def spent(self, tenant: str) -> tuple[Decimal, Decimal]:
        """The tenant's committed spend and limit today, once its calls are settled."""
        for _ in range(400):  # a commit lands when LiteLLM's success event runs
            day = (await self.fence.status(tenant)).windows[0]
            if day.held == 0:
                break
            await asyncio.sleep(0.005)
        return day.used, day.limit or Decimal(0)

    async def round(self, calls: list[tuple[str, str, dict[str, Any]]]) -> list[_Reply]:
        """Make ``calls`` one after the other and show them as a table."""
        table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), header_style="bold")
        for column in ("tenant", "POST", "HTTP", "model or error", "cost", "spent today"):
            table.add_column(column, justify="right" if column == "cost" else "left",
                             no_wrap=True)  # fmt: skip
        replies = []
        for tenant, path, payload in calls:
            reply = await self.call(tenant, path, payload)
            used, limit = await self.spent(tenant)
            replies.append(reply)
            if reply.status == 200:
                row = ["[green]200[/]", reply.model, _usd(reply.cost, 6)]
            else:
                row = [f"[bold red]{reply.status}[/]", escape(str(reply.body.get("error"))), ""]
            table.add_row(tenant, path, *row, f"{_usd(used, 4)} of {_dollars(limit)}")
        self.console.print(table)
        return replies

    async def run(self) -> bool:
        c = self.console
        c.print("\n[bold]1. Every tenant asks something: all are served.[/]")
        first = await self.round([
            ("acme", "/chat", {"message": "Summarise our refund policy in two lines."}),
            ("globex", "/chat", {"message": "Draft a polite reminder for an overdue invoice."}),
            ("initech", "/search", {"query": "Which contracts renew this quarter?"}),
            ("umbrella", "/sdk/chat", {"message": "List the risks in our supplier agreements."}),
        ])  # fmt: skip
        c.print(
            "  (acme asked for gpt-4o, which the free plan does not have: downgraded; "
            "umbrella is served through fence.guard(AsyncOpenAI()), without LiteLLM)"
        )
        if any(reply.status != 200 for reply in first):
            return False
        if not await self.burn():
            return False
        c.print("\n[bold]3. Meanwhile, on the same app and the same store:[/]")
        last = await self.round([
            ("acme", "/search", {"query": "What is our support email?"}),
            ("initech", "/document_analysis", {"document": _chunk(1, 3000)}),
            ("umbrella", "/sdk/chat", {"message": "Prepare the board summary."}),
            (BURNER, "/chat", {"message": _HELLO}),
            (BURNER, "/sdk/chat", {"message": _HELLO}),
        ])  # fmt: skip
        return [reply.status for reply in last] == [200, 200, 200, 402, 402]

    async def burn(self) -> bool:
        c = self.console
        c.print(
            f"\n[bold]2. {BURNER}'s agent ({TENANTS[BURNER]} plan, $5.00 a day) is told to "
            f'"analyse everything":[/] {_WORKERS} workers send 4,700-character chunks to '
            "POST /document_analysis, asking gpt-4o for a full report on each."
        )
        replies: list[_Reply] = []
        refused: list[_Reply] = []
        numbers = iter(range(1, _MAX_BURN_CALLS + 1))

        async def worker() -> None:
            for number in numbers:
                if refused:
                    return
                reply = await self.call(BURNER, "/document_analysis",
                                        {"document": _chunk(number, 4700)})  # fmt: skip
                if reply.status != 200:
                    refused.append(reply)
                    return
                replies.append(reply)

        await asyncio.gather(*(worker() for _ in range(_WORKERS)))
        for model, count in Counter(r.model for r in replies).items():
            cost = sum((r.cost for r in replies if r.model == model), Decimal(0))
            note = "" if model == "gpt-4o" else "  downgraded: gpt-4o's worst case no longer fits"
            c.print(f"  {count:>3} reports by {model:<12} {_usd(cost):>7}{note}")
        if not refused or refused[0].status != 402:
            c.print(f"[bold red]  {BURNER}'s agent was never refused with a 402[/]")
            return False
        c.print("  then [bold red]HTTP 402[/], the next report does not fit what is left:")
        c.print_json(data=refused[0].body)

        # The agent falls back to short questions, one at a time, until those are refused too.
        answered = 0
        for _ in range(_MAX_BURN_CALLS):
            await self.spent(BURNER)  # settled: a refusal now is final for the day
            reply = await self.call(BURNER, "/chat", {"message": _HELLO})
            if reply.status != 200:
                break
            answered += 1
        used, limit = await self.spent(BURNER)
        c.print(f"  The agent falls back to short questions: {answered} answered, then HTTP "
                f"{reply.status}. {BURNER} spent {_usd(used, 4)} of its {_usd(limit)} day,"
                " and not a cent more.")  # fmt: skip
        return reply.status == 402


def _plans_table(fence: TokenFence) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("tenant", "plan", "per day", "per month", "requests/day", "models"):
        table.add_column(column)
    plans = fence.plans
    for tenant, name in TENANTS.items():
        plan: Plan = plans[name]
        day = next((lim for lim in plan.limits if lim.window == "1d"), None)
        month = next((lim for lim in plan.limits if lim.window == "1mo"), None)
        table.add_row(
            tenant, name,
            _usd(day.max_cost) if day and day.max_cost else "-",
            _usd(month.max_cost, 0) if month and month.max_cost else "-",
            f"{day.max_requests:,}" if day and day.max_requests else "-",
            ", ".join(plan.models) if plan.models else "all",
        )  # fmt: skip
    return table


class _Server(uvicorn.Server):
    """uvicorn's server, minus its signal handling: ``run_demo`` cleans up after a signal.

    uvicorn re-raises a SIGTERM it caught once it has shut down, which would end the process
    before the demo's keys are deleted from a shared Redis.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.contextmanager
def _stop_on_signals(server: uvicorn.Server) -> Iterator[None]:
    """SIGINT and SIGTERM stop ``server`` gracefully (a second SIGINT: at once)."""
    loop = asyncio.get_running_loop()

    def stop(sig: signal.Signals) -> None:
        if server.should_exit and sig == signal.SIGINT:
            server.force_exit = True
        server.should_exit = True

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop, sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            continue
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DemoError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
                        "pass another --port") from exc  # fmt: skip
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _url_host(host: str) -> str:
    """How a client on this machine reaches a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _import_litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch prices
    for message in _LITELLM_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on refusals
    return litellm


@contextlib.asynccontextmanager
async def _litellm_callback(fence: TokenFence) -> AsyncIterator[None]:
    """Install ``TokenFenceCallback(fence)`` as LiteLLM's callback; restore LiteLLM's lists."""
    litellm = _import_litellm()
    from tokenfence_asgi.litellm import TokenFenceCallback

    saved = {name: list(getattr(litellm, name)) for name in _CALLBACK_LISTS}
    callback = TokenFenceCallback(fence)
    litellm.callbacks = [callback]
    try:
        yield
    finally:
        callback.close()
        for name, value in saved.items():
            setattr(litellm, name, value)


async def run_demo(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    redis_url: str | None = None,
    once: bool = False,
    console: Console | None = None,
) -> bool:
    """Serve the demo app, tell the scenario against it, then serve until stopped.

    ``once`` stops after the scenario (``port=0``: any free port). Returns whether the story
    happened as told (a 402 for the tenant that spent its budget, 200 for the others). Raises
    ``DemoError`` when the port cannot be bound, ``StoreUnavailable`` when Redis cannot be
    reached.
    """
    console = console or Console()
    prefix = "tfdemo" if redis_url is None else f"tfdemo-{uuid.uuid4().hex[:8]}"
    fence = TokenFence(redis_url=redis_url, prefix=prefix)
    sock: socket.socket | None = None
    try:
        store = "the embedded store" if redis_url is None else f"Redis (keys under {prefix}:)"
        console.print(f"[bold]tokenfence demo[/]: a FastAPI app on {escape(store)}, four tenants, "
                      "a fake LLM provider (no API key, no network)")  # fmt: skip
        for tenant, plan in TENANTS.items():
            await fence.set_plan(tenant, plan)
        console.print(_plans_table(fence))
        sock = _bind(host, port)
        base = f"http://{_url_host(host)}:{sock.getsockname()[1]}"
        console.print("Loading LiteLLM (it takes a few seconds)...", style="dim")
        with console.status("loading LiteLLM..."):
            installed = _litellm_callback(fence)
            await installed.__aenter__()
        try:
            dashboard = _dashboard(fence)
            app = build_app(fence, f"{base}/provider/v1", dashboard=dashboard)
            config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
            server = _Server(config)
            with _stop_on_signals(server):
                serving = asyncio.create_task(server.serve(sockets=[sock]))
                while not server.started:
                    if serving.done():
                        await serving  # raises what stopped it
                        raise DemoError("the server stopped while starting")
                    await asyncio.sleep(0.01)
                try:
                    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                        ok = await _Scenario(client, fence, console).run()
                    if once:
                        server.should_exit = True
                    else:
                        _print_try_it(console, base, dashboard)
                except BaseException:
                    server.should_exit = True
                    raise
                finally:
                    await serving
                    await app.state.sdk_client.close()
        finally:
            await installed.__aexit__(None, None, None)
    finally:
        if sock is not None:
            sock.close()
        await fence.aclose()
        if redis_url is not None:
            with contextlib.suppress(Exception):
                await delete_prefix(redis_url, prefix)
    return ok


def _print_try_it(console: Console, base: str, dashboard: tuple[ASGIApp, str] | None) -> None:
    lines = [f"\nTry it (the app is at {base}, its API docs at {base}/docs; Ctrl-C stops it):"]
    body = "'" + json.dumps({"message": _HELLO}) + "'"
    for tenant, outcome in ((BURNER, "402: its budget is spent"), ("acme", "200: served")):
        lines.append(f"  curl -s {base}/chat -H 'X-Tenant-ID: {tenant}' "
                     f"-H 'Content-Type: application/json' -d {body}    # {outcome}")  # fmt: skip
    lines.append(f"  curl -s {base}/status -H 'X-Tenant-ID: {BURNER}'")
    if dashboard is not None:
        lines.append(f"  dashboard: {base}/admin/ (admin token {dashboard[1]})")
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    console.file.flush()
