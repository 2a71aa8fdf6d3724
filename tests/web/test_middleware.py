"""TokenFenceMiddleware in FastAPI and plain Starlette, through httpx.ASGITransport."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import anyio
import httpx
import pytest
import structlog
from fastapi import Depends, FastAPI, Header, HTTPException, Query
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.conftest import FakeClock, _free_port
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.context import (
    add_fence_context,
    bind_to_structlog,
    current_context,
    tenant_scope,
)
from tokenfence_asgi.endpoints import feature
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import (
    BudgetExceeded,
    ConfigError,
    InputTooLong,
    InvalidId,
    RequestLimitExceeded,
    StoreUnavailable,
    TenantDisabled,
    TenantRequired,
    TokenFenceError,
)
from tokenfence_asgi.web.middleware import (
    TenantResolver,
    TokenFenceMiddleware,
    sign_tenant,
    signed_tenant_header,
)
from tokenfence_asgi.web.problem import limit_headers

MakeFence = Callable[..., TokenFence]
SECRET = "s3cret-shared-with-the-gateway"
TINY = Plan(
    "tiny",
    [Limit("1d", max_cost="0.05", max_requests=3)],
    upgrade_url="https://example.com/upgrade",
)


@pytest.fixture
async def fence() -> AsyncIterator[TokenFence]:
    f = TokenFence()
    yield f
    await f.aclose()


def client(app: ASGIApp, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers
    )


def ctx_dict() -> dict[str, Any]:
    ctx = current_context()
    if ctx is None:
        return {"ctx": None}
    return {
        "tenant": ctx.tenant_id,
        "feature": ctx.feature,
        "request_id": ctx.request_id,
        "thread": threading.current_thread() is threading.main_thread(),
        "log": {
            k: v
            for k, v in structlog.contextvars.get_contextvars().items()
            if k in ("tenant", "feature", "request_id")
        },
    }


# -- the two apps ------------------------------------------------------------------------------


def fastapi_app(fence: TokenFence, **options: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/ctx")
    @feature("chat")
    async def ctx_async() -> dict[str, Any]:
        await asyncio.sleep(0)
        return ctx_dict()

    @app.get("/ctx-sync")
    @feature("classification")
    def ctx_sync() -> dict[str, Any]:
        return ctx_dict()

    @app.get("/plain")
    async def plain() -> dict[str, Any]:
        return ctx_dict()

    @app.post("/spend")
    @feature("chat")
    async def spend(amount: str, cost: str | None = None) -> dict[str, str]:
        ctx = current_context()
        assert ctx is not None
        r = await fence.reserve(ctx.require_tenant(), amount, feature=ctx.feature)
        if cost is not None:
            await fence.commit(r, cost)
        return {"reservation": r.id}

    app.add_middleware(TokenFenceMiddleware, fence=fence, **options)
    return app


def starlette_app(fence: TokenFence, **options: Any) -> Starlette:
    @feature("chat")
    async def ctx_async(request: Request) -> JSONResponse:
        await asyncio.sleep(0)
        return JSONResponse(ctx_dict())

    @feature("classification")
    def ctx_sync(request: Request) -> JSONResponse:
        return JSONResponse(ctx_dict())

    async def plain(request: Request) -> JSONResponse:
        return JSONResponse(ctx_dict())

    @feature("chat")
    async def spend(request: Request) -> JSONResponse:
        ctx = current_context()
        assert ctx is not None
        q = request.query_params
        r = await fence.reserve(ctx.require_tenant(), q["amount"], feature=ctx.feature)
        if "cost" in q:
            await fence.commit(r, q["cost"])
        return JSONResponse({"reservation": r.id})

    app = Starlette(
        routes=[
            Route("/ctx", ctx_async),
            Route("/ctx-sync", ctx_sync),
            Route("/plain", plain),
            Route("/spend", spend, methods=["POST"]),
        ]
    )
    app.add_middleware(TokenFenceMiddleware, fence=fence, **options)
    return app


APPS = {"fastapi": fastapi_app, "starlette": starlette_app}
frameworks = pytest.mark.parametrize("make_app", APPS.values(), ids=list(APPS))


# -- refusals ----------------------------------------------------------------------------------


@frameworks
async def test_budget_exceeded_is_a_402_with_body_and_limit_headers(
    make_app: Callable[..., ASGIApp], make_fence: MakeFence, clock: FakeClock
) -> None:
    fence = make_fence(plans=[TINY], default_plan="tiny")
    app = make_app(fence, clock=clock)
    async with client(app, **{"X-Tenant-ID": "acme", "X-Request-ID": "req-402"}) as c:
        ok = await c.post("/spend", params={"amount": "0.04", "cost": "0.03"})
        assert ok.status_code == 200
        refused = await c.post("/spend", params={"amount": "0.04"})
    assert refused.status_code == 402
    body = refused.json()
    assert body == {
        "error": "ai_budget_exceeded",
        "message": body["message"],
        "reason": "limit",
        "feature": "chat",
        "used": "0.030000",
        "held": "0.000000",
        "limit": "0.050000",
        "window": "1d",
        "resets_at": "2026-03-16T00:00:00Z",
        "upgrade_url": "https://example.com/upgrade",
    }
    assert "acme" in body["message"]
    assert refused.headers["content-type"] == "application/json"
    assert refused.headers["retry-after"] == "43200"  # 12:00 -> midnight UTC on the fence clock
    assert refused.headers["ratelimit-policy"] == '"1d";q=50000;qu="usd-micros";w=86400'
    assert refused.headers["ratelimit"] == '"1d";r=20000;t=43200'
    assert refused.headers["x-request-id"] == "req-402"


async def test_request_limit_is_a_429_with_limit_headers(
    make_fence: MakeFence, clock: FakeClock
) -> None:
    fence = make_fence(plans=[TINY], default_plan="tiny")
    app = fastapi_app(fence, clock=clock)
    async with client(app, **{"X-Tenant-ID": "acme"}) as c:
        for _ in range(3):
            assert (await c.post("/spend", params={"amount": "0.001", "cost": "0"})).is_success
        refused = await c.post("/spend", params={"amount": "0.001"})
    assert refused.status_code == 429
    assert refused.json()["error"] == "ai_request_limit_exceeded"
    assert (refused.json()["used"], refused.json()["limit"]) == ("3", "3")
    assert refused.headers["retry-after"] == "43200"
    assert refused.headers["ratelimit-policy"] == '"1d";q=3;w=86400'
    assert refused.headers["ratelimit"] == '"1d";r=0;t=43200'


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (TenantDisabled(tenant_id="acme", feature=None, scope="tenant"), 403, "ai_disabled"),
        (InputTooLong("prompt too long", tenant_id="acme"), 413, "ai_input_too_long"),
        (StoreUnavailable("redis is down"), 503, "ai_budget_unavailable"),
    ],
)
async def test_other_fence_errors_map_to_their_status(
    fence: TokenFence, error: TokenFenceError, status: int, code: str
) -> None:
    async def endpoint(request: Request) -> Response:
        raise error

    async with client(fenced([Route("/", endpoint)], fence), **{"X-Tenant-ID": "acme"}) as c:
        r = await c.get("/")
    assert (r.status_code, r.json()["error"]) == (status, code)
    assert r.json()["message"] == error.to_dict()["message"]
    assert "retry-after" not in r.headers
    assert "ratelimit" not in r.headers
    assert len(r.headers["x-request-id"]) == 32


async def test_other_exceptions_and_config_errors_propagate(fence: TokenFence) -> None:
    async def boom(request: Request) -> Response:
        raise KeyError("not ours")

    async def bug(request: Request) -> Response:
        raise ConfigError("a misconfigured plan")

    app = Starlette(routes=[Route("/boom", boom), Route("/bug", bug)])
    app.add_middleware(TokenFenceMiddleware, fence=fence)
    async with client(app, **{"X-Tenant-ID": "acme"}) as c:
        with pytest.raises(KeyError):
            await c.get("/boom")
        with pytest.raises(ConfigError):
            await c.get("/bug")


async def test_a_store_outage_503_keeps_the_stores_address_out_of_the_body() -> None:
    port = _free_port()  # nothing listens here: the client gets "Error 111 connecting to ..."
    fence = TokenFence(redis_url=f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
    try:
        with structlog.testing.capture_logs() as logs:
            async with client(fastapi_app(fence), **{"X-Tenant-ID": "acme"}) as c:
                r = await c.post("/spend", params={"amount": "0.01"})
    finally:
        await fence.aclose()
    assert r.status_code == 503
    assert r.json() == {
        "error": "ai_budget_unavailable",
        "message": "the AI budget service is unavailable; try again shortly",
    }
    assert str(port) not in r.text
    assert "127.0.0.1" not in r.text
    # the operator still gets the detail, in the log line of the response
    [line] = [e for e in logs if e["event"] == "fence_error_response"]
    assert (line["status"], line["log_level"]) == (503, "warning")
    assert f"127.0.0.1:{port}" in line["detail"]


def task_group_app(fence: TokenFence) -> Starlette:
    """Endpoints that make the same fenced call bare and inside anyio task groups."""

    async def spend(done: anyio.Event | None = None) -> None:
        ctx = current_context()
        assert ctx is not None
        try:
            await fence.reserve(ctx.require_tenant(), "0.04", feature="chat")
        finally:
            if done is not None:
                done.set()

    async def bare(request: Request) -> Response:
        await spend()
        return PlainTextResponse("ok")

    async def grouped(request: Request) -> Response:
        async with anyio.create_task_group() as tg:
            tg.start_soon(spend)
        return PlainTextResponse("ok")

    async def nested(request: Request) -> Response:
        async def inner() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(spend)

        async with anyio.create_task_group() as tg:
            tg.start_soon(inner)
        return PlainTextResponse("ok")

    async def mixed(request: Request) -> Response:
        done = anyio.Event()

        async def bug() -> None:
            with anyio.CancelScope(shield=True):  # fails too, after the refusal
                await done.wait()
            raise KeyError("not ours")

        async with anyio.create_task_group() as tg:
            tg.start_soon(spend, done)
            tg.start_soon(bug)
        return PlainTextResponse("ok")

    async def ordered(request: Request) -> Response:
        limit = RequestLimitExceeded(
            tenant_id="acme",
            feature=None,
            window="1d",
            requests=3,
            max_requests=3,
            resets_at=datetime(2026, 3, 16, tzinfo=UTC),
        )
        raise ExceptionGroup("two refusals", [ExceptionGroup("inner", [limit]), budget_error()])

    async def with_a_bug(request: Request) -> Response:
        raise ExceptionGroup("a refusal and a bug", [budget_error(), ConfigError("bad plan")])

    routes = [Route(f"/{f.__name__}", f) for f in (bare, grouped, nested, mixed, ordered)]
    return fenced([*routes, Route("/with_a_bug", with_a_bug)], fence)


async def test_a_fence_error_inside_a_task_group_is_answered_as_the_bare_error(
    make_fence: MakeFence, clock: FakeClock
) -> None:
    fence = make_fence(plans=[TINY], default_plan="tiny")
    await fence.commit(await fence.reserve("acme", "0.03"), "0.03")
    app = task_group_app(fence)
    async with client(app, **{"X-Tenant-ID": "acme", "X-Request-ID": "r-tg"}) as c:
        bare = await c.get("/bare")
        assert (bare.status_code, bare.json()["error"]) == (402, "ai_budget_exceeded")
        for path in ("/grouped", "/nested"):
            r = await c.get(path)
            assert (r.status_code, r.json()) == (402, bare.json()), path
            assert r.headers["ratelimit"] == bare.headers["ratelimit"]
            assert r.headers["x-request-id"] == "r-tg"
        # only refusals in the group: the first of them, depth first
        assert (await c.get("/ordered")).json()["error"] == "ai_request_limit_exceeded"
    # a group that also holds another exception is a bug: it propagates whole (a 500)
    async with client(app, **{"X-Tenant-ID": "acme"}) as c:
        for path, other in (("/mixed", KeyError), ("/with_a_bug", ConfigError)):
            with pytest.raises(ExceptionGroup) as raised:
                await c.get(path)
            assert raised.group_contains(BudgetExceeded)
            assert raised.group_contains(other)


@frameworks
async def test_missing_tenant_is_a_401(make_app: Callable[..., ASGIApp], fence: TokenFence) -> None:
    async with client(make_app(fence), **{"X-Request-ID": "r-401"}) as c:
        r = await c.get("/ctx")
        empty = await c.get("/ctx", headers={"X-Tenant-ID": ""})
    assert r.status_code == 401
    assert r.json() == {
        "error": "tenant_required",
        "message": "a tenant id is required for this request: send it in the X-Tenant-ID header",
        "header": "X-Tenant-ID",
    }
    assert r.headers["x-request-id"] == "r-401"
    assert empty.status_code == 401
    assert empty.json()["header"] == "X-Tenant-ID"


@frameworks
@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-tenant-id", b"a" * 201)],
        [(b"x-tenant-id", b"acme\x7f")],
        [(b"x-tenant-id", b"\xff\xfe")],
        [(b"x-tenant-id", "ac\u200bme".encode())],  # a zero-width (format) character
        [(b"x-tenant-id", b"acme"), (b"x-tenant-id", b"evil")],  # a second, appended value
    ],
    ids=["too-long", "control", "not-utf8", "format-char", "duplicate"],
)
async def test_hostile_tenant_header_is_a_400(
    make_app: Callable[..., ASGIApp], fence: TokenFence, headers: list[tuple[bytes, bytes]]
) -> None:
    messages = await call_asgi(make_app(fence), "/ctx", headers)
    start = messages[0]
    assert start["status"] == 400
    body = json.loads(b"".join(m.get("body", b"") for m in messages[1:]))
    assert body["error"] == "invalid_tenant"
    assert body["message"]
    assert dict(start["headers"])[b"x-request-id"]


async def test_anonymous_requests_when_allowed(fence: TokenFence) -> None:
    app = fastapi_app(fence, allow_anonymous=True)
    async with client(app) as c:
        r = await c.get("/ctx")
        spend = await c.post("/spend", params={"amount": "0.01"})
    assert r.status_code == 200
    assert (r.json()["tenant"], r.json()["feature"]) == (None, "chat")
    assert r.json()["log"] == {"feature": "chat", "request_id": r.headers["x-request-id"]}
    assert spend.status_code == 401
    assert spend.json()["error"] == "tenant_required"


def test_limit_headers_for_shares_large_limits_and_other_errors() -> None:
    now = datetime(2026, 3, 15, 12, tzinfo=UTC)
    share = BudgetExceeded(
        tenant_id="acme",
        feature="chat",
        window="1mo",
        total_cost=Decimal("10"),
        max_cost=Decimal("3999999.9999999"),
        resets_at=now + timedelta(seconds=90.2),
        reason="share",
    )
    assert limit_headers(share, now=now) == {
        "Retry-After": "91",
        "RateLimit-Policy": '"1mo";q=3999999999999;qu="usd-micros";w=2678400',
        "RateLimit": '"1mo";r=0;t=91',  # the rest is kept for other features' shares
    }
    assert limit_headers(StoreUnavailable("down"), now=now) == {}
    assert limit_headers(TenantDisabled(tenant_id="a", feature=None, scope="tenant")) == {}


# -- tenant resolvers --------------------------------------------------------------------------


async def test_callable_resolvers_sync_and_async(fence: TokenFence) -> None:
    def from_state(scope: Scope) -> str | None:
        return scope.get("state", {}).get("org")

    async def from_token(scope: Scope) -> str | None:
        await asyncio.sleep(0)
        auth = dict(scope["headers"]).get(b"authorization", b"")
        return auth.removeprefix(b"Bearer org:").decode() or None

    class SetState:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
            scope.setdefault("state", {})["org"] = "org-from-auth"
            await self.app(scope, receive, send)

    app = SetState(fastapi_app(fence, tenant=from_state))
    async with client(app) as c:
        assert (await c.get("/ctx")).json()["tenant"] == "org-from-auth"
    async with client(fastapi_app(fence, tenant=from_token)) as c:
        assert (await c.get("/ctx", headers={"Authorization": "Bearer org:o1"})).json()[
            "tenant"
        ] == "o1"
        assert (await c.get("/ctx")).status_code == 401
        bad = await c.get("/ctx", headers={"Authorization": "Bearer org:" + "x" * 300})
        assert (bad.status_code, bad.json()["error"]) == (400, "invalid_tenant")


async def test_custom_tenant_header(fence: TokenFence) -> None:
    async with client(fastapi_app(fence, tenant="X-Org")) as c:
        assert (await c.get("/ctx", headers={"X-Org": "o2"})).json()["tenant"] == "o2"
        refused = await c.get("/ctx", headers={"X-Tenant-ID": "o2"})
    assert refused.status_code == 401
    assert refused.json()["header"] == "X-Org"  # the 401 names the header it wanted
    assert "X-Org" in refused.json()["message"]


async def test_signed_tenant_header(fence: TokenFence) -> None:
    app = fastapi_app(fence, tenant=signed_tenant_header(SECRET), allow_anonymous=True)
    good = {"X-Tenant-ID": "acme", "X-Tenant-Signature": sign_tenant(SECRET, "acme")}
    async with client(app) as c:
        assert (await c.get("/ctx", headers=good)).json()["tenant"] == "acme"
        forged = {"X-Tenant-ID": "other", "X-Tenant-Signature": good["X-Tenant-Signature"]}
        for headers in (forged, {"X-Tenant-ID": "acme"}):
            r = await c.get("/ctx", headers=headers)
            assert (r.status_code, r.json()["error"]) == (401, "tenant_required")
            assert "signature" in r.json()["message"]
            assert r.json()["header"] == "X-Tenant-Signature"
        # no tenant header at all: anonymous, because this app allows it
        assert (await c.get("/ctx")).json()["tenant"] is None
    async with client(fastapi_app(fence, tenant=signed_tenant_header(SECRET))) as c:
        r = await c.get("/ctx")
    assert (r.status_code, r.json()["header"]) == (401, "X-Tenant-ID")  # the header it wanted


async def test_signed_tenant_header_expires_and_carries_the_nonce(fence: TokenFence) -> None:
    clock = FakeClock(1_773_576_000)
    seen: list[object] = []

    async def endpoint(request: Request) -> JSONResponse:
        seen.append(getattr(request.state, "tenant_nonce", None))
        return JSONResponse(ctx_dict())

    resolver = signed_tenant_header(SECRET, max_age_s=30, clock_skew_s=2, clock=clock)
    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(TokenFenceMiddleware, fence=fence, tenant=resolver)
    now = int(clock())
    nonce = "a-nonce-of-the-gateway"

    async def status(issued_at: int, **options: Any) -> int:
        value = sign_tenant(SECRET, "acme", issued_at=issued_at, **options)
        async with client(app, **{"X-Tenant-ID": "acme", "X-Tenant-Signature": value}) as c:
            return (await c.get("/")).status_code

    assert await status(now - 32) == 200  # 30 s of age plus 2 s of skew
    assert await status(now - 33) == 401
    assert await status(now + 2) == 200  # the gateway's clock a little ahead
    assert await status(now + 3) == 401
    assert await status(now, nonce=nonce) == 200
    assert seen == [None, None, nonce]
    strict = signed_tenant_header(SECRET, require_nonce=True, clock=clock)
    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(TokenFenceMiddleware, fence=fence, tenant=strict)
    assert await status(now) == 401
    assert await status(now, nonce=nonce) == 200


def test_signing_needs_a_real_secret_and_sane_options() -> None:
    with pytest.raises(ConfigError):
        signed_tenant_header("short")
    with pytest.raises(ConfigError):
        sign_tenant(b"", "acme")
    assert sign_tenant(SECRET, "acme", issued_at=7) == sign_tenant(
        SECRET.encode(), "acme", issued_at=7
    )
    for options in (
        {"max_age_s": 0},
        {"max_age_s": float("inf")},
        {"max_age_s": 86401},
        {"clock_skew_s": -1},
        {"clock_skew_s": 301},
        {"require_nonce": "yes"},
        {"clock": 5},
        {"signature_header": "X-Tenant-ID"},
    ):
        with pytest.raises(ConfigError):
            signed_tenant_header(SECRET, **options)
    bad_options: list[dict[str, Any]] = [
        {"issued_at": -1},
        {"issued_at": 10**11},  # past what the app reads (year 5138)
        {"issued_at": 1.5},
        {"issued_at": True},
        {"nonce": "short"},
        {"nonce": "has a space in it, 16+"},
    ]
    for bad in bad_options:
        with pytest.raises(ConfigError):
            sign_tenant(SECRET, "acme", **bad)
    with pytest.raises(InvalidId):  # a tenant the app would refuse is not signed
        sign_tenant(SECRET, "ac\x00me")


def test_bad_options_are_config_errors(fence: TokenFence) -> None:
    app = Starlette()
    for options in (
        {"fence": object()},
        {"fence": fence, "tenant": 42},
        {"fence": fence, "tenant": "bad header"},
        {"fence": fence, "request_id_header": "a:b"},
    ):
        with pytest.raises(ConfigError):
            TokenFenceMiddleware(app, **options)


# -- exclude_paths -----------------------------------------------------------------------------


async def test_excluded_paths_get_no_tenant_check_and_cannot_spend(fence: TokenFence) -> None:
    excluded = ["/plain", "/docs", "/openapi.json/", "/spend"]
    app = fastapi_app(fence, exclude_paths=excluded)
    async with client(app, **{"X-Request-ID": "r-ex"}) as c:
        plain = await c.get("/plain")
        assert plain.status_code == 200
        assert (plain.json()["tenant"], plain.json()["request_id"]) == (None, "r-ex")
        assert (await c.get("/docs")).status_code == 200
        assert (await c.get("/openapi.json")).status_code == 200
        # an excluded path is anonymous, even with a tenant header: a fenced call is refused
        for headers in ({}, {"X-Tenant-ID": "acme"}):
            spend = await c.post("/spend", params={"amount": "0.01"}, headers=headers)
            assert (spend.status_code, spend.json()["error"]) == (401, "tenant_required")
        # segment-wise: neither a longer name nor another path is excluded
        for path in ("/ctx", "/plainx", "/plain-ish", "/docsx", "/", "/Plain"):
            assert (await c.get(path)).status_code == 401, path
        assert (await c.get("/plain/")).status_code != 401  # below /plain: excluded
    assert (await fence.status("acme")).windows[0].held == 0


async def test_excluded_paths_skip_the_resolver_and_honour_root_path(fence: TokenFence) -> None:
    asked: list[str] = []

    def resolve(scope: Scope) -> str | None:
        asked.append(scope["path"])
        return "acme"

    app = starlette_app(fence, tenant=resolve, exclude_paths=["/plain"])
    assert (await call_asgi(app, "/plain", []))[0]["status"] == 200
    assert asked == []
    assert (await call_asgi(app, "/ctx", []))[0]["status"] == 200
    assert asked == ["/ctx"]
    # mounted under /api by a proxy or a parent app: paths are matched below the root path
    messages = await call_asgi(app, "/api/plain", [], root_path="/api")
    assert messages[0]["status"] == 200
    assert asked == ["/ctx"]
    await call_asgi(app, "/api/ctx", [], root_path="/api")
    assert asked == ["/ctx", "/api/ctx"]


async def test_admin_app_mounted_beside_the_middleware(fence: TokenFence) -> None:
    from tokenfence_asgi.web.admin import admin_app

    token = "admin-token-0123456789abcdef"
    auth = {"Authorization": f"Bearer {token}"}
    for options, status in (({}, 401), ({"exclude_paths": ["/admin"]}, 200)):
        app = fastapi_app(fence, **options)
        app.mount("/admin", admin_app(fence, token=token, metrics=False))
        async with client(app) as c:
            r = await c.get("/admin/api/tenants", headers=auth)
            assert r.status_code == status, (options, r.text)
            assert (await c.get("/administrator")).status_code == 401


def test_excluded_websocket_paths(fence: TokenFence) -> None:
    app = websocket_app(fence, websocket=True, exclude_paths=["/ws"])
    with TestClient(app) as tc, tc.websocket_connect("/ws", headers={"X-Request-ID": "w"}) as ws:
        assert ws.receive_json() == [None, "w"]


@pytest.mark.parametrize("paths", ["/admin", 5, ["admin"], ["/"], ["//"], [None], [""]])
def test_bad_exclude_paths_are_config_errors(fence: TokenFence, paths: Any) -> None:
    with pytest.raises(ConfigError, match="exclude_paths"):
        TokenFenceMiddleware(Starlette(), fence=fence, exclude_paths=paths)


# -- a resolver that raises, and a tenant from a FastAPI dependency ----------------------------


async def test_a_resolver_that_raises_is_a_json_500_and_a_log_line(fence: TokenFence) -> None:
    async def from_db(scope: Scope) -> str | None:
        raise RuntimeError("db password=hunter2 rejected")

    resolvers: list[TenantResolver] = [lambda scope: scope["state"]["org_id"], from_db]
    for resolver in resolvers:
        app = starlette_app(fence, tenant=resolver)
        with structlog.testing.capture_logs() as logs:
            async with client(app, **{"X-Request-ID": "r-500"}) as c:
                r = await c.get("/ctx")
        assert r.status_code == 500
        assert r.json() == {
            "error": "tenant_resolver_failed",
            "message": "the tenant of this request could not be resolved",
        }
        assert r.headers["x-request-id"] == "r-500"
        assert "hunter2" not in r.text
        [line] = [e for e in logs if e["event"] == "tenant_resolver_failed"]
        assert (line["log_level"], line["exc_info"], line["request_id"]) == ("error", True, "r-500")


async def test_a_resolver_may_refuse_with_its_own_401(fence: TokenFence) -> None:
    def resolve(scope: Scope) -> str | None:
        raise TenantRequired("log in to use AI features")

    async with client(starlette_app(fence, tenant=resolve)) as c:
        r = await c.get("/ctx")
    assert (r.status_code, r.json()["message"]) == (401, "log in to use AI features")


async def test_the_readme_resolver_reads_state_an_outer_auth_middleware_set(
    fence: TokenFence,
) -> None:
    class Auth:  # stands for the app's own auth middleware
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
            if dict(scope["headers"]).get(b"authorization") == b"Bearer key-of-org-7":
                scope.setdefault("state", {})["org_id"] = "org-7"
            await self.app(scope, receive, send)

    app = fastapi_app(fence, tenant=lambda scope: scope.get("state", {}).get("org_id"))
    app.add_middleware(Auth)  # added last, so it runs first
    async with client(app) as c:
        ok = await c.get("/ctx", headers={"Authorization": "Bearer key-of-org-7"})
        assert (ok.json()["tenant"], ok.json()["feature"]) == ("org-7", "chat")
        assert (await c.get("/ctx")).status_code == 401


async def org_of(authorization: Annotated[str, Header()] = "") -> str:
    """The app's usual auth: the organisation of a verified API key (here a fixed table)."""
    org = {"Bearer key-of-acme": "acme", "Bearer key-of-globex": "globex"}.get(authorization)
    if org is None:
        raise HTTPException(401, "unknown API key")
    return org


async def fenced_org(org: Annotated[str, Depends(org_of)]) -> AsyncIterator[str]:
    """Charge the request's LLM calls to its organisation (an async dependency: a sync one
    would set the context in a worker thread, invisible to the endpoint)."""
    async with tenant_scope(org):
        yield org


async def test_a_tenant_from_a_fastapi_dependency(make_fence: MakeFence) -> None:
    fence = make_fence(plans=[TINY], default_plan="tiny")
    app = FastAPI()
    app.add_middleware(TokenFenceMiddleware, fence=fence, allow_anonymous=True)

    @app.post("/chat")
    @feature("chat")
    async def chat(org: Annotated[str, Depends(fenced_org)]) -> dict[str, Any]:
        ctx = current_context()
        assert ctx is not None
        r = await fence.reserve(ctx.require_tenant(), "0.02", feature=ctx.feature)
        await fence.commit(r, "0.02")
        return ctx_dict()

    @app.post("/unauthenticated")
    async def unauthenticated() -> dict[str, str]:
        ctx = current_context()
        assert ctx is not None
        await fence.reserve(ctx.require_tenant(), "0.02")
        return {}

    async with client(app, **{"X-Request-ID": "r-dep"}) as c:
        r = await c.post("/chat", headers={"Authorization": "Bearer key-of-acme"})
        assert r.status_code == 200
        assert r.json()["log"] == {"tenant": "acme", "feature": "chat", "request_id": "r-dep"}
        assert (await c.post("/chat", headers={"Authorization": "Bearer key-of-acme"})).is_success
        refused = await c.post("/chat", headers={"Authorization": "Bearer key-of-acme"})
        assert (refused.status_code, refused.json()["error"]) == (402, "ai_budget_exceeded")
        assert (await c.post("/chat", headers={"Authorization": "Bearer nope"})).status_code == 401
        anonymous = await c.post("/unauthenticated")
        assert (anonymous.status_code, anonymous.json()["error"]) == (401, "tenant_required")
    assert (await fence.status("acme")).windows[0].used == Decimal("0.04")
    assert (await fence.status("globex")).windows[0].used == 0


# -- @feature above the route decorator --------------------------------------------------------


async def test_feature_above_the_route_decorator_is_reported_once(fence: TokenFence) -> None:
    app = FastAPI()
    app.add_middleware(TokenFenceMiddleware, fence=fence)

    @feature("chat")  # wrong: wraps what @app.get already registered
    @app.get("/above")
    async def above() -> dict[str, Any]:
        return ctx_dict()

    @app.get("/below")
    @feature("chat")
    async def below() -> dict[str, Any]:
        return ctx_dict()

    def sync_endpoint(request: Request) -> JSONResponse:
        return JSONResponse(ctx_dict())

    app.router.routes.append(Route("/starlette", sync_endpoint))
    feature("search")(sync_endpoint)  # wrapped after the route took the function

    with structlog.testing.capture_logs() as logs:
        async with client(app, **{"X-Tenant-ID": "acme"}) as c:
            for _ in range(2):
                assert (await c.get("/above")).json()["feature"] is None
                assert (await c.get("/below")).json()["feature"] == "chat"
                assert (await c.get("/starlette")).json()["feature"] is None
    misplaced = [e for e in logs if e["event"] == "feature_decorator_misplaced"]
    assert [(e["endpoint"], e["feature"]) for e in misplaced] == [
        ("test_feature_above_the_route_decorator_is_reported_once.<locals>.above", "chat"),
        (
            "test_feature_above_the_route_decorator_is_reported_once.<locals>.sync_endpoint",
            "search",
        ),
    ]
    assert all(e["log_level"] == "warning" for e in misplaced)


async def test_an_unhashable_endpoint_is_served_unchanged(fence: TokenFence) -> None:
    class Endpoint:  # an ASGI app object defining __eq__ and hence no __hash__
        def __eq__(self, other: object) -> bool:
            return other is self

        async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
            await PlainTextResponse("ok")(scope, receive, send)

    app = Starlette(routes=[Route("/", Endpoint())])
    app.add_middleware(TokenFenceMiddleware, fence=fence)
    async with client(app, **{"X-Tenant-ID": "acme"}) as c:
        assert (await c.get("/")).text == "ok"


# -- request id --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123_x.y:z", True),
        ("9f1c2d3e-4b5a-6789-abcd-ef0123456789", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("has space", False),
        ("semi;colon", False),
        ("", False),
    ],
)
async def test_request_id_is_kept_when_sane_and_echoed(
    fence: TokenFence, sent: str, kept: bool
) -> None:
    async with client(fastapi_app(fence), **{"X-Tenant-ID": "acme"}) as c:
        r = await c.get("/ctx", headers={"X-Request-ID": sent})
    echoed = r.headers["x-request-id"]
    assert r.json()["request_id"] == echoed
    if kept:
        assert echoed == sent
    else:
        assert len(echoed) == 32
        int(echoed, 16)


async def test_request_id_header_options(fence: TokenFence) -> None:
    async with client(fastapi_app(fence, request_id_header="X-Correlation-ID")) as c:
        r = await c.get("/ctx", headers={"X-Tenant-ID": "a", "X-Correlation-ID": "c-1"})
        assert (r.json()["request_id"], r.headers["x-correlation-id"]) == ("c-1", "c-1")
    async with client(fastapi_app(fence, request_id_header=None)) as c:
        r = await c.get("/ctx", headers={"X-Tenant-ID": "a", "X-Request-ID": "ignored"})
        assert "x-request-id" not in r.headers
        assert len(r.json()["request_id"]) == 32


async def test_a_request_id_set_by_the_app_is_not_duplicated(fence: TokenFence) -> None:
    async def endpoint(request: Request) -> Response:
        return PlainTextResponse("ok", headers={"X-Request-ID": "from-app"})

    messages = await call_asgi(
        fenced([Route("/", endpoint)], fence), "/", [(b"x-tenant-id", b"acme")]
    )
    assert [v for k, v in messages[0]["headers"] if k.lower() == b"x-request-id"] == [b"from-app"]


@pytest.mark.parametrize("name", [b"X-Request-ID", b"x-request-id", b"X-REQUEST-ID"])
async def test_a_request_id_header_of_any_case_from_a_raw_app_is_kept(
    fence: TokenFence, name: bytes
) -> None:
    async def raw(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"2"), (b"x-request-ic", b"near"), (name, b"from-app")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    messages = await call_asgi(
        TokenFenceMiddleware(raw, fence=fence), "/", [(b"x-tenant-id", b"acme")]
    )
    headers = messages[0]["headers"]
    assert headers == [(b"content-length", b"2"), (b"x-request-ic", b"near"), (name, b"from-app")]


# -- the context inside endpoints --------------------------------------------------------------


@frameworks
async def test_context_in_async_and_sync_endpoints(
    make_app: Callable[..., ASGIApp], fence: TokenFence
) -> None:
    async with client(make_app(fence), **{"X-Tenant-ID": "acme", "X-Request-ID": "r1"}) as c:
        a = (await c.get("/ctx")).json()
        s = (await c.get("/ctx-sync")).json()
        p = (await c.get("/plain")).json()
    log = {"tenant": "acme", "request_id": "r1"}
    assert a == {
        "tenant": "acme",
        "feature": "chat",
        "request_id": "r1",
        "thread": True,
        "log": {**log, "feature": "chat"},
    }
    assert s == {  # a sync endpoint runs in the threadpool and still sees the context
        "tenant": "acme",
        "feature": "classification",
        "request_id": "r1",
        "thread": False,
        "log": {**log, "feature": "classification"},
    }
    assert (p["feature"], p["log"]) == (None, log)


async def test_app_log_lines_carry_tenant_feature_and_request_id(fence: TokenFence) -> None:
    app = FastAPI()
    app_log = structlog.get_logger("my_app")

    @app.get("/")
    @feature("chat")
    async def endpoint() -> dict[str, str]:
        app_log.info("answering")
        return {}

    app.add_middleware(TokenFenceMiddleware, fence=fence)
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        async with client(app, **{"X-Tenant-ID": "acme", "X-Request-ID": "r-log"}) as c:
            await c.get("/")
    (line,) = [entry for entry in logs if entry["event"] == "answering"]
    assert (line["tenant"], line["feature"], line["request_id"]) == ("acme", "chat", "r-log")
    assert structlog.contextvars.get_contextvars() == {}


async def test_without_structlog_binding_the_processor_gives_log_lines_the_same_fields(
    fence: TokenFence,
) -> None:
    app = FastAPI()
    app_log = structlog.get_logger("my_app")

    @app.get("/")
    @feature("chat")
    async def endpoint() -> dict[str, object]:
        app_log.info("answering")
        return structlog.contextvars.get_contextvars()

    app.add_middleware(TokenFenceMiddleware, fence=fence)
    bind_to_structlog(False)
    try:
        with structlog.testing.capture_logs(processors=[add_fence_context]) as logs:
            async with client(app, **{"X-Tenant-ID": "acme", "X-Request-ID": "r-log"}) as c:
                r = await c.get("/")
    finally:
        bind_to_structlog(True)
    assert (r.json(), r.headers["x-request-id"]) == ({}, "r-log")  # nothing bound
    (line,) = [entry for entry in logs if entry["event"] == "answering"]
    assert (line["tenant"], line["feature"], line["request_id"]) == ("acme", "chat", "r-log")


async def test_200_concurrent_requests_of_50_tenants_stay_apart(fence: TokenFence) -> None:
    app = FastAPI()

    @app.get("/echo/{n}")
    @feature("chat")
    async def echo(n: int) -> dict[str, Any]:
        seen = []
        for _ in range(5):
            await asyncio.sleep(0)
            ctx = current_context()
            assert ctx is not None
            seen.append([ctx.tenant_id, ctx.feature, ctx.request_id])
        return {"seen": seen}

    app.add_middleware(TokenFenceMiddleware, fence=fence)
    async with client(app) as c:

        async def one(n: int) -> tuple[int, httpx.Response]:
            headers = {"X-Tenant-ID": f"tenant-{n % 50}", "X-Request-ID": f"req-{n}"}
            return n, await c.get(f"/echo/{n}", headers=headers)

        results = await asyncio.gather(*(one(n) for n in range(200)))
    for n, r in results:
        assert r.json()["seen"] == [[f"tenant-{n % 50}", "chat", f"req-{n}"]] * 5
        assert r.headers["x-request-id"] == f"req-{n}"
    assert current_context() is None


# -- FastAPI: dependency injection and OpenAPI unchanged ---------------------------------------


class Item(BaseModel):
    name: str
    price: float


def common(q: str | None = None, limit: Annotated[int, Query(ge=1, le=50)] = 10) -> dict[str, Any]:
    return {"q": q, "limit": limit}


def build_api(decorate: bool) -> FastAPI:
    app = FastAPI(title="same")
    wrap: Callable[[Any], Any] = feature("chat") if decorate else (lambda f: f)

    @app.post("/items/{item_id}", response_model=dict[str, Any], summary="Create an item")
    @wrap
    async def create(
        item_id: int, item: Item, params: Annotated[dict[str, Any], Depends(common)]
    ) -> dict[str, Any]:
        """Create one item."""
        return {"id": item_id, "item": item.model_dump(), "params": params, "ctx": ctx_dict()}

    @app.get("/items")
    @wrap
    def list_items(params: Annotated[dict[str, Any], Depends(common)], tag: str = "x") -> Any:
        return {"params": params, "tag": tag, "ctx": ctx_dict()}

    return app


async def test_feature_leaves_dependency_injection_and_openapi_unchanged(
    fence: TokenFence,
) -> None:
    plain, decorated = build_api(False), build_api(True)
    assert decorated.openapi() == plain.openapi()
    answers = []
    for app in (plain, decorated):
        app.add_middleware(TokenFenceMiddleware, fence=fence)
        async with client(app, **{"X-Tenant-ID": "acme", "X-Request-ID": "r"}) as c:
            created = await c.post(
                "/items/7", params={"q": "z", "limit": 5}, json={"name": "n", "price": 1.5}
            )
            listed = await c.get("/items", params={"tag": "t"})
            invalid = await c.get("/items", params={"limit": 0})
        assert invalid.status_code == 422
        answers.append((created.json(), listed.json()))
    (c0, l0), (c1, l1) = answers
    assert c1["ctx"]["feature"] == l1["ctx"]["feature"] == "chat"
    assert c0["ctx"]["feature"] is None
    for plain_answer, decorated_answer in ((c0, c1), (l0, l1)):
        plain_answer.pop("ctx")
        decorated_answer.pop("ctx")
        assert plain_answer == decorated_answer
    assert c1["params"] == {"q": "z", "limit": 5}


# -- streaming ---------------------------------------------------------------------------------


CHUNKS = [b"data: 1\n\n", bytes(range(256)), "caf\u00e9 \u2615\n".encode(), b"", b"end"]


def streaming_app(fence: TokenFence | None) -> ASGIApp:
    async def agen() -> AsyncIterator[bytes]:
        for chunk in CHUNKS:
            await asyncio.sleep(0)
            yield chunk

    def gen() -> Iterator[bytes]:
        yield from CHUNKS

    @feature("chat")
    async def fenced_stream() -> AsyncIterator[bytes]:
        ctx = current_context()
        yield f"{ctx and ctx.tenant_id}/{ctx and ctx.feature}".encode()

    routes = [
        Route("/async", lambda r: StreamingResponse(agen(), media_type="text/event-stream")),
        Route("/sync", lambda r: StreamingResponse(gen(), media_type="application/x-bytes")),
        Route("/fenced", lambda r: StreamingResponse(fenced_stream())),
    ]
    app = Starlette(routes=routes)
    if fence is not None:
        app.add_middleware(TokenFenceMiddleware, fence=fence)
    return app


@pytest.mark.parametrize("path", ["/async", "/sync"])
async def test_streaming_is_byte_identical(fence: TokenFence, path: str) -> None:
    responses = []
    for app in (streaming_app(None), streaming_app(fence)):
        async with client(app, **{"X-Tenant-ID": "acme"}) as c:
            async with c.stream("GET", path) as r:
                parts = [part async for part in r.aiter_raw()]
            responses.append((r.status_code, dict(r.headers), b"".join(parts)))
    (s0, h0, b0), (s1, h1, b1) = responses
    assert b1 == b0 == b"".join(CHUNKS)
    assert s1 == s0 == 200
    assert h1.pop("x-request-id")
    assert h1 == h0


async def test_streaming_body_decorated_with_feature(fence: TokenFence) -> None:
    async with client(streaming_app(fence), **{"X-Tenant-ID": "acme"}) as c:
        assert (await c.get("/fenced")).content == b"acme/chat"


async def test_fastapi_generator_endpoints_with_feature(fence: TokenFence) -> None:
    app = FastAPI()

    @app.get("/async-lines")
    @feature("chat")
    async def async_lines() -> AsyncIterator[dict[str, Any]]:
        for i in range(3):
            await asyncio.sleep(0)
            yield {"i": i, "ctx": ctx_dict()}

    @app.get("/sync-lines")
    @feature("search")
    def sync_lines() -> Iterator[dict[str, Any]]:
        for i in range(3):
            yield {"i": i, "ctx": ctx_dict()}

    app.add_middleware(TokenFenceMiddleware, fence=fence)
    async with client(app, **{"X-Tenant-ID": "acme", "X-Request-ID": "r-l"}) as c:
        for path, name in (("/async-lines", "chat"), ("/sync-lines", "search")):
            r = await c.get(path)
            lines = [json.loads(line) for line in r.text.splitlines()]
            assert [line["i"] for line in lines] == [0, 1, 2]
            for line in lines:
                ctx = line["ctx"]
                assert (ctx["tenant"], ctx["feature"], ctx["request_id"]) == ("acme", name, "r-l")


def raising_stream_app(fence: TokenFence, error: BaseException) -> ASGIApp:
    async def body() -> AsyncIterator[bytes]:
        yield b"first,"
        yield b"second,"
        raise error

    return fenced([Route("/", lambda r: StreamingResponse(body()))], fence)


def budget_error() -> BudgetExceeded:
    return BudgetExceeded(
        tenant_id="acme",
        feature="chat",
        window="1d",
        total_cost=Decimal("1"),
        max_cost=Decimal("1"),
        resets_at=datetime(2026, 3, 16, tzinfo=UTC),
    )


@pytest.mark.parametrize("spec_version", ["2.0", "2.4"])
async def test_error_mid_stream_ends_the_stream_without_a_second_start(
    fence: TokenFence, spec_version: str
) -> None:
    app = raising_stream_app(fence, budget_error())
    with structlog.testing.capture_logs() as logs:
        messages = await call_asgi(app, "/", [(b"x-tenant-id", b"acme")], spec_version)
    types = [m["type"] for m in messages]
    assert types.count("http.response.start") == 1
    assert messages[0]["status"] == 200
    assert b"".join(m.get("body", b"") for m in messages[1:]) == b"first,second,"
    assert messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert [e["error"] for e in logs if e["event"] == "fence_error_after_response_start"] == [
        "ai_budget_exceeded"
    ]


async def test_error_mid_stream_through_httpx(fence: TokenFence) -> None:
    async with client(raising_stream_app(fence, budget_error()), **{"X-Tenant-ID": "a"}) as c:
        r = await c.get("/")
    assert (r.status_code, r.content) == (200, b"first,second,")


async def test_other_error_mid_stream_propagates(fence: TokenFence) -> None:
    app = raising_stream_app(fence, KeyError("not ours"))
    with pytest.raises(KeyError):
        await call_asgi(app, "/", [(b"x-tenant-id", b"acme")], "2.4")


# -- lifespan and websockets -------------------------------------------------------------------


async def test_lifespan_runs_through_the_middleware(fence: TokenFence) -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, str]]:
        events.append("startup")
        yield {"db": "connected"}
        events.append("shutdown")

    async def endpoint(request: Request) -> Response:
        return PlainTextResponse(request.state.db)

    app = Starlette(routes=[Route("/", endpoint)], lifespan=lifespan)
    app.add_middleware(TokenFenceMiddleware, fence=fence)
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: list[Message] = []

    started = asyncio.Event()

    async def send(message: Message) -> None:
        outbox.append(message)
        started.set()

    state: dict[str, Any] = {}
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    task = asyncio.create_task(app(scope, inbox.get, send))
    await inbox.put({"type": "lifespan.startup"})
    await started.wait()
    assert outbox == [{"type": "lifespan.startup.complete"}]
    assert state == {"db": "connected"}
    await inbox.put({"type": "lifespan.shutdown"})
    await task
    assert outbox[-1] == {"type": "lifespan.shutdown.complete"}
    assert events == ["startup", "shutdown"]


def websocket_app(fence: TokenFence, **options: Any) -> Starlette:
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        ctx = current_context()
        await websocket.send_json(None if ctx is None else [ctx.tenant_id, ctx.request_id])
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", ws)])
    app.add_middleware(TokenFenceMiddleware, fence=fence, **options)
    return app


def test_websockets_pass_through_untouched_by_default(fence: TokenFence) -> None:
    with TestClient(websocket_app(fence)) as tc, tc.websocket_connect("/ws") as ws:
        assert ws.receive_json() is None


def test_websockets_may_opt_in_to_tenant_resolution(fence: TokenFence) -> None:
    app = websocket_app(fence, websocket=True)
    with TestClient(app) as tc:
        headers = {"X-Tenant-ID": "acme", "X-Request-ID": "ws-1"}
        with tc.websocket_connect("/ws", headers=headers) as ws:
            assert ws.receive_json() == ["acme", "ws-1"]
        for bad in ({}, {"X-Tenant-ID": "a\x01"}):
            with (
                pytest.raises(WebSocketDisconnect) as refused,
                tc.websocket_connect("/ws", headers=bad),
            ):
                pass
            assert refused.value.code == 1008


# -- helpers -----------------------------------------------------------------------------------


def fenced(routes: list[Route], fence: TokenFence) -> Starlette:
    """A Starlette app with the middleware added the documented way (inside its error handling)."""
    app = Starlette(routes=routes)
    app.add_middleware(TokenFenceMiddleware, fence=fence)
    return app


async def call_asgi(
    app: ASGIApp,
    path: str,
    headers: list[tuple[bytes, bytes]],
    spec_version: str = "2.4",
    root_path: str = "",
) -> list[Message]:
    """Run one GET through ``app`` with raw headers; return every message it sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": root_path,
        "headers": headers,
        "client": ("127.0.0.1", 12345),
        "server": ("test", 80),
        "state": {},
    }
    messages: list[Message] = []
    done = asyncio.Event()
    requested = False

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await app(scope, receive, send)
    return messages
