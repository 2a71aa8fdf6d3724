"""The HTTP reserve / commit API through httpx.ASGITransport, on real Redis and embedded."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from tests.conftest import Backend, FakeClock
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import ConfigError
from tokenfence_asgi.pricing.book import ModelPrice, PriceBook
from tokenfence_asgi.web import service
from tokenfence_asgi.web.api import tokens
from tokenfence_asgi.web.middleware import TokenFenceMiddleware
from tokenfence_asgi.web.service import service_app

TOKEN = "svc-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DAY = Plan(
    "day",
    [Limit("1d", max_cost="1.00", max_requests=1000)],
    upgrade_url="https://example.com/upgrade",
)
FEW = Plan("few", [Limit("1d", max_requests=2)])
MODELS = Plan(
    "models",
    [Limit("1d", max_cost="0.10")],
    models=["gpt-4o*", "openai/gpt-4o*"],
    downgrade={"gpt-4o": "gpt-4o-mini"},
    max_input_chars=1000,
    max_input_tokens=50_000,
)
SHADOW = Plan("shadow", [Limit("1d", max_cost="0.01")], enforce=False)
PLANS = [DAY, FEW, MODELS, SHADOW]
PRICES = PriceBook(
    {
        "gpt-4o": ModelPrice.per_million("2.50", "10", max_output_tokens=16_384),
        "gpt-4o-mini": ModelPrice.per_million("0.15", "0.60", max_output_tokens=16_384),
        "no-max": ModelPrice.per_million("1", "1"),
        "pricey": ModelPrice("1000", "1000"),
    }
)


def _client(app: Any, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://svc", headers=headers
    )


class Svc:
    """An app on the test's backend and a client of it."""

    def __init__(self, fence: TokenFence, app: Starlette, client: httpx.AsyncClient) -> None:
        self.fence = fence
        self.app = app
        self.client = client

    async def reserve(self, expect: int = 200, **body: Any) -> dict[str, Any]:
        body.setdefault("tenant", "acme")
        body.setdefault("candidates", [{"model": "gpt-4o", "estimate": "0.10"}])
        r = await self.client.post("/reserve", json=body)
        assert r.status_code == expect, r.text
        return dict(r.json())

    async def post(self, path: str, expect: int = 200, **body: Any) -> dict[str, Any]:
        r = await self.client.post(path, json=body)
        assert r.status_code == expect, r.text
        return dict(r.json())

    async def used(self, tenant: str = "acme") -> Decimal:
        return (await self.fence.status(tenant)).windows[0].used


async def _makers(backend: Backend, clock: FakeClock) -> AsyncIterator[Callable[..., Svc]]:
    clients: list[httpx.AsyncClient] = []

    def make(plan: str = "day", **options: Any) -> Svc:
        fence_options = options.pop("fence", {})
        fence_options.setdefault("clock", clock)
        fence = backend.fence(plans=PLANS, default_plan=plan, **fence_options)
        options.setdefault("prices", PRICES)
        options.setdefault("clock", clock)
        app = service_app(fence, token=TOKEN, **options)
        client = _client(app, **AUTH)
        clients.append(client)
        return Svc(fence, app, client)

    try:
        yield make
    finally:
        for c in clients:
            await c.aclose()


@pytest.fixture
async def make_svc(backend: Backend, clock: FakeClock) -> AsyncIterator[Callable[..., Svc]]:
    """Apps on the test's backend (real Redis and the embedded store)."""
    async for make in _makers(backend, clock):
        yield make


@pytest.fixture
async def make_local_svc(prefix: str, clock: FakeClock) -> AsyncIterator[Callable[..., Svc]]:
    """Apps on the embedded store only: for what is refused before the store is reached."""
    local = Backend("embedded", prefix, None)
    try:
        async for make in _makers(local, clock):
            yield make
    finally:
        await local.cleanup()


@pytest.fixture
def svc(make_svc: Callable[..., Svc]) -> Svc:
    return make_svc()


@pytest.fixture
def local_svc(make_local_svc: Callable[..., Svc]) -> Svc:
    return make_local_svc()


# -- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789abcdef"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer "},
    ],
    ids=["missing", "wrong", "longer", "basic", "no-scheme", "empty"],
)
async def test_every_route_but_the_schema_needs_the_service_token(
    svc: Svc, headers: dict[str, str]
) -> None:
    token = (await svc.reserve())["id"]
    async with _client(svc.app, **headers) as anon:
        for method, path, body in [
            ("POST", "/reserve", {"tenant": "acme", "candidates": []}),
            ("POST", "/commit", {"id": token, "cost": "0.01"}),
            ("POST", "/release", {"id": token}),
            ("GET", "/status/acme", None),
        ]:
            r = await anon.request(method, path, json=body)
            assert r.status_code == 401, (path, r.text)
            assert r.json() == {
                "error": "unauthorized",
                "message": "a valid service token is required: send "
                "'Authorization: Bearer <token>'",
            }
            assert r.headers["www-authenticate"] == 'Bearer realm="tokenfence"'
        assert (await anon.get("/openapi.json")).status_code == 200
    # nothing was charged or released by the refused calls
    assert await svc.used() == 0
    assert (await svc.fence.status("acme")).open_holds == 1


async def test_unauthenticated_body_is_not_read(svc: Svc) -> None:
    async with _client(svc.app) as anon:
        r = await anon.post("/reserve", content=b"x" * 10_000_000)
    assert r.status_code == 401


# -- reserve, commit, release, status ---------------------------------------------------------


async def test_reserve_commit_status_round_trip(svc: Svc) -> None:
    held = await svc.reserve(
        tenant="acme",
        feature="chat",
        request_id="req-1",
        candidates=[{"model": "gpt-4o", "estimate": "0.0125"}],
    )
    assert held["id"].startswith("tfr1.")
    assert {k: v for k, v in held.items() if k not in ("id", "expires_at")} == {
        "reservation_id": "req-1",
        "tenant": "acme",
        "feature": "chat",
        "model": "gpt-4o",
        "amount": "0.012500000",
        "downgraded": False,
        "degraded": False,
        "plan": "day",
        "pool": None,
        "shadow_refusal": None,
    }
    assert held["expires_at"] == "2026-03-15T12:10:00Z"  # the fence's clock + the 600 s lease
    status = (await svc.client.get("/status/acme")).json()
    assert status["held"] == "0.012500000"
    assert status["open_holds"] == 1

    done = await svc.post(
        "/commit", id=held["id"], cost="0.0101", input_tokens=900, output_tokens=120
    )
    assert done == {
        "reservation_id": "req-1",
        "tenant": "acme",
        "feature": "chat",
        "model": "gpt-4o",
        "cost": "0.010100000",
        "duplicate": False,
        "late": False,
        "recorded": True,
    }
    status = (await svc.client.get("/status/acme")).json()
    assert status == {
        "tenant": "acme",
        "plan": "day",
        "killed": False,
        "killed_features": [],
        "held": "0.000000000",
        "open_holds": 0,
        "pool": None,
        "pool_plan": None,
        "windows": [
            {
                "window": "1d",
                "kind": "calendar",
                "scope": "tenant",
                "used": "0.010100000",
                "held": "0.000000000",
                "limit": "1.000000000",
                "remaining": "0.989900000",
                "carried": "0.000000000",
                "requests": 1,
                "max_requests": 1000,
                "resets_at": "2026-03-16T00:00:00Z",
                "features": {},
            }
        ],
        "pool_windows": [],
    }


async def test_commit_is_idempotent(svc: Svc) -> None:
    held = await svc.reserve()
    first = await svc.post("/commit", id=held["id"], cost="0.05")
    again = await svc.post("/commit", id=held["id"], cost="0.07")  # a retry, even a different one
    assert first["duplicate"] is False
    assert again == {**first, "duplicate": True}  # the same answer: what the first one charged
    released = await svc.post("/release", id=held["id"])
    assert (released["duplicate"], released["released"], released["cost"]) == (
        True,
        False,
        "0.000000000",
    )
    assert await svc.used() == Decimal("0.05")


async def test_release_is_idempotent_and_a_later_commit_charges_nothing(svc: Svc) -> None:
    held = await svc.reserve()
    first = await svc.post("/release", id=held["id"])
    assert (first["released"], first["duplicate"], first["recorded"]) == (True, False, True)
    again = await svc.post("/release", id=held["id"])
    assert (again["released"], again["duplicate"]) == (False, True)
    late = await svc.post("/commit", id=held["id"], cost="0.05")
    assert (late["duplicate"], late["cost"]) == (True, "0.000000000")
    status = await svc.fence.status("acme")
    assert (status.windows[0].used, status.held, status.open_holds) == (0, 0, 0)


async def test_a_repeated_request_id_gets_the_same_hold(svc: Svc) -> None:
    body = {"request_id": "retry-me", "candidates": [{"model": "gpt-4o", "estimate": "0.02"}]}
    first = await svc.reserve(**body)
    second = await svc.reserve(**body)
    assert second["reservation_id"] == first["reservation_id"] == "retry-me"
    assert second["amount"] == first["amount"]
    assert (await svc.fence.status("acme")).open_holds == 1
    # either token settles the one hold, once
    assert (await svc.post("/commit", id=second["id"], cost="0.01"))["duplicate"] is False
    assert (await svc.post("/commit", id=first["id"], cost="0.01"))["duplicate"] is True
    assert await svc.used() == Decimal("0.01")
    settled = await svc.reserve(409, **body)
    assert settled["error"] == "request_id_settled"
    assert settled["field"] == "request_id"


async def test_a_repeated_request_id_with_fewer_candidates_is_a_conflict(svc: Svc) -> None:
    await svc.reserve(
        request_id="two",
        candidates=[{"model": "a", "estimate": "2"}, {"model": "b", "estimate": "0.5"}],
    )
    conflict = await svc.reserve(
        409, request_id="two", candidates=[{"model": "a", "estimate": "0.5"}]
    )
    assert conflict["error"] == "request_id_conflict"


async def test_token_counts_are_priced_and_downgraded_by_the_plan(
    make_svc: Callable[..., Svc],
) -> None:
    svc = make_svc("models")
    # gpt-4o: 10k in at $2.50/M + 5k out at $10/M = $0.075; a second one does not fit $0.10
    big = {"model": "gpt-4o", "input_tokens": 10_000, "max_output_tokens": 5_000}
    first = await svc.reserve(candidates=[big])
    assert (first["model"], first["amount"], first["downgraded"]) == (
        "gpt-4o",
        "0.075000000",
        False,
    )
    second = await svc.reserve(candidates=[big])  # gpt-4o-mini: 0.0015 + 0.003
    assert (second["model"], second["amount"], second["downgraded"]) == (
        "gpt-4o-mini",
        "0.004500000",
        True,
    )
    # with downgrade off, the plan's chain is not offered: refused
    refused = await svc.reserve(402, candidates=[big], downgrade=False)
    assert refused["error"] == "ai_budget_exceeded"
    # a provider prefix keeps its downgrade chain
    prefixed = await svc.reserve(
        candidates=[{"model": "openai/gpt-4o", "input_tokens": 10_000, "max_output_tokens": 100}]
    )
    assert prefixed["model"] in ("openai/gpt-4o", "openai/gpt-4o-mini")
    # commit by token counts, priced with the reserved (downgraded) model
    done = await svc.post("/commit", id=second["id"], input_tokens=1000, output_tokens=1000)
    assert (done["model"], done["cost"]) == ("gpt-4o-mini", "0.000750000")
    # or with the model that really answered
    done = await svc.post(
        "/commit", id=first["id"], input_tokens=1000, output_tokens=1000, model="gpt-4o"
    )
    assert (done["model"], done["cost"]) == ("gpt-4o", "0.012500000")


async def test_a_commit_is_priced_at_no_less_than_the_reserved_model(
    make_svc: Callable[..., Svc],
) -> None:
    """Naming a cheaper model at commit does not lower the price: token counts are priced at
    the dearer of the named and the reserved model."""
    svc = make_svc("models")
    gpt4o = {"model": "gpt-4o", "input_tokens": 1000, "max_output_tokens": 1000}
    held = await svc.reserve(candidates=[gpt4o])
    assert held["model"] == "gpt-4o"
    # 1000 in + 1000 out: gpt-4o $0.0125; gpt-4o-mini would be $0.00075
    usage = {"input_tokens": 1000, "output_tokens": 1000}
    done = await svc.post("/commit", id=held["id"], model="gpt-4o-mini", **usage)
    assert (done["model"], done["cost"]) == ("gpt-4o-mini", "0.012500000")
    assert await svc.used() == Decimal("0.0125")
    # a dearer model that answered instead is charged at its own price
    mini = await svc.reserve(candidates=[{**gpt4o, "model": "gpt-4o-mini"}])
    done = await svc.post("/commit", id=mini["id"], model="gpt-4o", **usage)
    assert (done["model"], done["cost"]) == ("gpt-4o", "0.012500000")
    # a reserved model the service cannot price gives no floor: token counts are refused
    # (the hold stays, to be committed with a cost)
    custom = await svc.reserve(candidates=[{"model": "gpt-4o-in-house", "estimate": "0.05"}])
    problem = await svc.post("/commit", 422, id=custom["id"], model="gpt-4o-mini", **usage)
    assert (problem["error"], problem["field"]) == ("no_price", "model")
    assert "gpt-4o-in-house" in problem["message"]
    assert (await svc.fence.status("acme")).open_holds == 1
    paid = await svc.post("/commit", id=custom["id"], cost="0.01", model="gpt-4o-mini")
    assert paid["cost"] == "0.010000000"  # a cost is charged as given, whatever the model


async def test_the_output_allowance_defaults_to_the_models_maximum(svc: Svc) -> None:
    held = await svc.reserve(candidates=[{"model": "gpt-4o-mini", "input_tokens": 1000}])
    assert held["amount"] == f"{Decimal('0.00015') + 16_384 * Decimal('0.0000006'):.9f}"
    capped = await svc.reserve(
        candidates=[{"model": "gpt-4o-mini", "input_tokens": 0, "max_output_tokens": 10**6}]
    )
    assert capped["amount"] == f"{16_384 * Decimal('0.0000006'):.9f}"
    problem = await svc.reserve(422, candidates=[{"model": "no-max", "input_tokens": 10}])
    assert problem["field"] == "candidates[0].max_output_tokens"
    assert "no maximum output" in problem["message"]


async def test_a_model_without_a_price_is_a_422(svc: Svc) -> None:
    svc_body = {"model": "no-such-model-anywhere", "input_tokens": 10, "max_output_tokens": 10}
    problem = await svc.reserve(422, candidates=[svc_body])
    assert problem["error"] == "no_price"
    assert "no-such-model-anywhere" in problem["message"]
    held = await svc.reserve(candidates=[{"model": "no-such-model-anywhere", "estimate": "0.01"}])
    problem = await svc.post("/commit", 422, id=held["id"], input_tokens=1, output_tokens=1)
    assert (problem["error"], problem["field"]) == ("no_price", "model")
    assert (await svc.fence.status("acme")).open_holds == 1  # the hold is still there to commit
    assert (await svc.post("/commit", id=held["id"], cost="0.002"))["cost"] == "0.002000000"


# -- refusals: the middleware's bodies and status codes ---------------------------------------


async def _middleware_refusal(
    fence: TokenFence, clock: FakeClock, amount: str, **reserve: Any
) -> httpx.Response:
    async def endpoint(request: Request) -> JSONResponse:
        await fence.reserve("acme", amount, **reserve)
        return JSONResponse({})

    app = Starlette(routes=[Route("/", endpoint, methods=["POST"])])
    app.add_middleware(TokenFenceMiddleware, fence=fence, clock=clock, request_id_header=None)
    async with _client(app, **{"X-Tenant-ID": "acme"}) as c:
        return await c.post("/")


async def test_refusals_have_the_middlewares_bodies_and_headers(
    make_svc: Callable[..., Svc], clock: FakeClock
) -> None:
    svc = make_svc()
    await svc.post("/commit", id=(await svc.reserve())["id"], cost="0.95")
    ours = await svc.client.post(
        "/reserve", json={"tenant": "acme", "candidates": [{"model": "m", "estimate": "0.06"}]}
    )
    theirs = await _middleware_refusal(svc.fence, clock, "0.06", model="m")
    assert ours.status_code == theirs.status_code == 402
    assert ours.json() == theirs.json()
    assert ours.json()["upgrade_url"] == "https://example.com/upgrade"
    for header in ("retry-after", "ratelimit-policy", "ratelimit"):
        assert ours.headers[header] == theirs.headers[header]
    assert ours.headers["retry-after"] == "43200"


async def test_request_limit_is_a_429(make_svc: Callable[..., Svc], clock: FakeClock) -> None:
    svc = make_svc("few")
    for _ in range(2):
        await svc.reserve()
    ours = await svc.client.post(
        "/reserve", json={"tenant": "acme", "candidates": [{"model": "m", "estimate": "0.01"}]}
    )
    theirs = await _middleware_refusal(svc.fence, clock, "0.01")
    assert ours.status_code == theirs.status_code == 429
    assert ours.json() == theirs.json()
    assert ours.headers["ratelimit"] == theirs.headers["ratelimit"]


async def test_too_many_open_holds_is_a_429_of_its_own(make_svc: Callable[..., Svc]) -> None:
    svc = make_svc(fence={"max_open_holds": 2})
    held = [await svc.reserve() for _ in range(2)]
    refused = await svc.client.post(
        "/reserve", json={"tenant": "acme", "candidates": [{"model": "m", "estimate": "0.01"}]}
    )
    assert refused.status_code == 429
    body = refused.json()
    assert (body["error"], body["window"]) == ("ai_too_many_open_holds", "open_holds")
    assert int(refused.headers["retry-after"]) > 0  # when the earliest hold's lease ends
    await svc.post("/release", id=held[0]["id"])
    await svc.reserve()  # one settled: room for one more


async def test_a_zero_estimate_is_refused_naming_the_field(svc: Svc) -> None:
    """A hold of $0 limits nothing: an estimate must be above $0 (as ``fence.reserve``)."""
    for estimate in ("0", "0.000", "00"):
        problem = await svc.reserve(422, candidates=[{"model": "m", "estimate": estimate}])
        assert (problem["error"], problem["field"]) == ("invalid_amount", "candidates[0].estimate")
        assert problem["message"].startswith(f"candidates[0].estimate: zero estimate '{estimate}'")
        assert "above $0" in problem["message"]
    second = [{"model": "gpt-4o", "estimate": "0.5"}, {"model": "gpt-4o-mini", "estimate": "0"}]
    problem = await svc.reserve(422, candidates=second)
    assert problem["field"] == "candidates[1].estimate"
    nothing = [{"model": "gpt-4o", "input_tokens": 0, "max_output_tokens": 0}]
    problem = await svc.reserve(422, candidates=nothing)
    assert (problem["error"], problem["field"]) == ("invalid_request", "candidates[0]")
    assert "input_tokens and max_output_tokens are both 0" in problem["message"]
    status = await svc.fence.status("acme")
    assert (status.open_holds, status.windows[0].requests) == (0, 0)  # nothing was held
    await svc.reserve(candidates=[{"model": "m", "estimate": "0.000000001"}])  # one nano-dollar


async def test_token_counts_are_priced_with_the_fences_price_book(backend: Backend) -> None:
    """Without ``prices``, the service prices with ``fence.prices``, as the LiteLLM callback."""
    house = ModelPrice.per_million("1", "2", max_output_tokens=1000)
    fence = backend.fence(plans=PLANS, default_plan="day", prices={"house-model": house})
    app = service_app(fence, token=TOKEN)
    assert app.state.tokenfence_service.prices is fence.prices
    async with _client(app, **AUTH) as c:
        r = await c.post(
            "/reserve",
            json={"tenant": "acme", "candidates": [{"model": "house-model", "input_tokens": 1000}]},
        )
        assert r.status_code == 200, r.text
        assert r.json()["amount"] == "0.003000000"  # 1,000 in at $1/M + 1,000 out at $2/M
        committed = await c.post(
            "/commit", json={"id": r.json()["id"], "input_tokens": 500, "output_tokens": 100}
        )
        assert committed.json()["cost"] == "0.000700000"
    mine = PriceBook({"house-model": ModelPrice.per_million("3", "3", max_output_tokens=1000)})
    assert service_app(fence, token=TOKEN, prices=mine).state.tokenfence_service.prices is mine


async def test_kill_switches_are_a_403(svc: Svc) -> None:
    await svc.fence.kill("acme", feature="chat")
    killed = await svc.reserve(403, feature="chat")
    assert killed["error"] == "ai_disabled"
    assert killed["message"] == "AI feature 'chat' is disabled for tenant 'acme'"
    await svc.reserve(feature="search")
    await svc.fence.kill()
    assert (await svc.reserve(403, feature="search"))["error"] == "ai_disabled"
    await svc.fence.revive()


async def test_plan_rules_are_refused_like_the_litellm_callback(
    make_svc: Callable[..., Svc],
) -> None:
    svc = make_svc("models")
    refused = await svc.reserve(403, candidates=[{"model": "claude-3-opus", "estimate": "0.01"}])
    assert refused == {
        "error": "ai_model_not_allowed",
        "message": "model 'claude-3-opus' is not allowed on plan 'models'",
    }
    # a dollar estimate cannot be priced for the downgrade: the message says what to send
    other = Plan(
        "strict",
        [Limit("1d", max_cost="1")],
        models=["gpt-4o-mini"],
        downgrade={"gpt-4o": "gpt-4o-mini"},
    )
    fence = TokenFence(plans=[other], default_plan="strict")
    async with _client(service_app(fence, token=TOKEN, prices=PRICES), **AUTH) as c:
        r = await c.post(
            "/reserve", json={"tenant": "t", "candidates": [{"model": "gpt-4o", "estimate": "1"}]}
        )
        assert r.status_code == 403
        assert "send input_tokens instead of estimate" in r.json()["message"]
        r = await c.post(
            "/reserve",
            json={
                "tenant": "t",
                "candidates": [{"model": "gpt-4o", "input_tokens": 5, "max_output_tokens": 5}],
            },
        )
        assert (r.status_code, r.json()["model"], r.json()["downgraded"]) == (
            200,
            "gpt-4o-mini",
            True,
        )
    await fence.aclose()
    chars = await svc.reserve(413, input_chars=1001)
    assert chars["error"] == "ai_input_too_long"
    assert chars["message"] == "the prompt has 1001 characters; plan 'models' allows 1000"
    tokens = await svc.reserve(
        413, candidates=[{"model": "gpt-4o", "input_tokens": 50_001, "max_output_tokens": 1}]
    )
    assert tokens["error"] == "ai_input_too_long"
    assert (await svc.fence.status("acme")).windows[0].requests == 0


async def test_store_unavailable_is_a_503() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fence = TokenFence(redis_url=f"redis://127.0.0.1:{port}/0", plans=PLANS, default_plan="day")
    other = TokenFence(plans=PLANS, default_plan="day")
    key = "k" * 32
    token = (await _reserve_on(service_app(other, token=TOKEN, signing_key=key)))["id"]
    async with _client(service_app(fence, token=TOKEN, signing_key=key), **AUTH) as c:
        for method, path, body in [
            (
                "POST",
                "/reserve",
                {"tenant": "acme", "candidates": [{"model": "m", "estimate": "1"}]},
            ),
            ("POST", "/commit", {"id": token, "cost": "0.5"}),
            ("POST", "/release", {"id": token}),
            ("GET", "/status/acme", None),
        ]:
            r = await c.request(method, path, json=body)
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "ai_budget_unavailable"
    await fence.aclose()
    await other.aclose()


async def _reserve_on(app: Starlette, **body: Any) -> dict[str, Any]:
    body.setdefault("tenant", "acme")
    body.setdefault("candidates", [{"model": "m", "estimate": "0.5"}])
    async with _client(app, **AUTH) as c:
        r = await c.post("/reserve", json=body)
        assert r.status_code == 200, r.text
        return dict(r.json())


async def test_fail_open_reservations_are_degraded_and_not_recorded() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fence = TokenFence(
        redis_url=f"redis://127.0.0.1:{port}/0",
        plans=PLANS,
        default_plan="day",
        on_store_error="open",
    )
    app = service_app(fence, token=TOKEN)
    held = await _reserve_on(app)
    assert (held["degraded"], held["expires_at"], held["amount"]) == (True, None, "0.500000000")
    async with _client(app, **AUTH) as c:
        done = (await c.post("/commit", json={"id": held["id"], "cost": "0.1"})).json()
        assert (done["recorded"], done["cost"]) == (False, "0.100000000")
        released = (await c.post("/release", json={"id": held["id"]})).json()
        assert (released["recorded"], released["released"]) == (False, False)
    await fence.aclose()


async def test_shadow_mode_reports_the_refusal_it_did_not_raise(
    make_svc: Callable[..., Svc],
) -> None:
    svc = make_svc("shadow")
    held = await svc.reserve(candidates=[{"model": "m", "estimate": "0.02"}])
    assert held["shadow_refusal"]["error"] == "ai_budget_exceeded"
    assert held["shadow_refusal"]["limit"] == "0.010000"


async def test_a_reservation_follows_its_tenant_out_of_a_pool(svc: Svc) -> None:
    await svc.fence.set_pool("acme", "team", plan="day")
    held = await svc.reserve()
    assert held["pool"] == "team"
    await svc.fence.set_pool("acme", None)
    assert (await svc.post("/commit", id=held["id"], cost="0.03"))["duplicate"] is False
    assert (await svc.post("/commit", id=held["id"], cost="0.03"))["duplicate"] is True
    status = await svc.fence.status("acme")
    assert (status.pool, status.windows[0].used, status.held) == (None, Decimal("0.03"), 0)


# -- forged, altered and expired tokens -------------------------------------------------------


def _parts(token: str) -> tuple[str, dict[str, Any], str]:
    prefix, body, mac = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return prefix, payload, mac


def _encode(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def test_forged_and_altered_tokens_are_refused(svc: Svc, backend: Backend) -> None:
    held = await svc.reserve()
    prefix, payload, mac = _parts(held["id"])
    assert (payload["t"], payload["a"]) == ("acme", 100_000_000)
    other_app = service_app(svc.fence, token=TOKEN)  # another random signing key
    foreign = (await _reserve_on(other_app, tenant="globex"))["id"]
    forged = [
        f"{prefix}.{_encode({**payload, 't': 'globex'})}.{mac}",  # another tenant's budget
        f"{prefix}.{_encode({**payload, 'r': 'some-other-id'})}.{mac}",  # an id never reserved
        f"{prefix}.{_encode({**payload, 'p': 'team'})}.{mac}",
        f"{prefix}.{_encode(payload)}.{mac[:-2]}AA",
        f"{prefix}.{_encode(payload)}",
        f"tfr2.{_encode(payload)}.{mac}",
        held["id"] + "x",
        held["id"].replace(".", "..", 1),
        foreign,
        "",
        "not-a-token",
        "tfr1.!!!.???",
        "tfr1." + "A" * 9000 + ".AA",
        held["reservation_id"],
    ]
    for token in forged:
        for path, extra in (("/commit", {"cost": "0.5"}), ("/release", {})):
            problem = await svc.post(path, 422, id=token, **extra)
            assert problem["error"] == "invalid_reservation", token
            assert problem["field"] == "id"
            assert "not a reservation token issued by this service" in problem["message"]
    for bad in (None, 5, ["x"], {"id": "x"}):
        problem = await svc.post("/commit", 422, id=bad, cost="0.5")
        assert problem["error"] == "invalid_request"
    assert (await svc.used(), await svc.used("globex")) == (0, 0)
    status = await svc.fence.status("acme")
    assert (status.open_holds, status.held) == (1, Decimal("0.1"))


def _mac_siblings(token: str) -> list[str]:
    """The token with its MAC's last character replaced by each other character that decodes
    to the same bytes (the 43rd character of 32 bytes carries 2 unused bits)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    return [token[:-1] + c for i, c in enumerate(alphabet) if i >> 2 == last >> 2 and i != last]


async def test_a_token_in_non_canonical_base64_is_refused(svc: Svc) -> None:
    held = await svc.reserve()
    siblings = _mac_siblings(held["id"])
    assert len(siblings) == 3
    for token in siblings:
        for path, extra in (("/commit", {"cost": "0.5"}), ("/release", {})):
            problem = await svc.post(path, 422, id=token, **extra)
            assert problem["error"] == "invalid_reservation", token
    padded = held["id"] + "="  # padding is not part of a token either
    assert (await svc.post("/commit", 422, id=padded, cost="0.5"))["field"] == "id"
    assert await svc.used() == 0
    assert (await svc.post("/commit", id=held["id"], cost="0.5"))["cost"] == "0.500000000"


TOKEN_CHARS = st.one_of(
    st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.="),
    st.characters(codec="utf-8"),
)


@pytest.fixture
def held_token(prefix: str) -> Iterator[tuple[str, Callable[[str], list[httpx.Response]]]]:
    """One reservation's token, and a function that commits and releases a given token and
    checks that the hold is untouched (an embedded fence; nothing reaches the store)."""
    fence = TokenFence(plans=PLANS, default_plan="day", prefix=prefix)
    app = service_app(fence, token=TOKEN, prices=PRICES)
    with asyncio.Runner() as runner:
        client = _client(app, **AUTH)
        body = {"tenant": "acme", "candidates": [{"model": "gpt-4o", "estimate": "0.1"}]}
        token = runner.run(client.post("/reserve", json=body)).json()["id"]

        async def settle(altered: str) -> list[httpx.Response]:
            answers = [
                await client.post("/commit", json={"id": altered, "cost": "0.05"}),
                await client.post("/release", json={"id": altered}),
            ]
            status = await fence.status("acme")
            assert (status.windows[0].used, status.open_holds) == (0, 1), altered
            return answers

        yield token, lambda altered: runner.run(settle(altered))
        runner.run(client.aclose())
        runner.run(fence.aclose())


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_a_token_altered_in_any_byte_is_refused(
    held_token: tuple[str, Callable[[str], list[httpx.Response]]], data: st.DataObject
) -> None:
    """A reservation token changed in one character (replaced, inserted or deleted) is refused."""
    token, settle = held_token
    last = len(token) - 1
    # the MAC's last character (whose low bits are unused) is drawn often
    at = data.draw(st.one_of(st.just(last), st.integers(0, last)), label="at")
    how = data.draw(st.sampled_from(["replace", "insert", "delete"]), label="how")
    char = data.draw(TOKEN_CHARS, label="char")
    if how == "replace":
        altered = token[:at] + char + token[at + 1 :]
    elif how == "insert":
        altered = token[:at] + char + token[at:]
    else:
        altered = token[:at] + token[at + 1 :]
    assume(altered != token)
    for answer in settle(altered):
        assert answer.status_code == 422, (altered, answer.text)
        assert answer.json()["error"] == "invalid_reservation", answer.text


async def test_a_shared_signing_key_settles_on_any_instance(backend: Backend) -> None:
    a = backend.fence(plans=PLANS, default_plan="day")
    b = backend.fence(plans=PLANS, default_plan="day")
    key = b"0123456789abcdef0123"
    held = await _reserve_on(service_app(a, token=TOKEN, signing_key=key))
    async with _client(service_app(b, token=TOKEN, signing_key=key), **AUTH) as c:
        r = await c.post("/commit", json={"id": held["id"], "cost": "0.25"})
        assert (r.status_code, r.json()["cost"]) == (200, "0.250000000")
    assert (await b.status("acme")).windows[0].used == Decimal("0.25")


async def test_an_expired_token_is_refused_not_charged_again(
    make_svc: Callable[..., Svc], monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = make_svc(token_ttl=60)
    now = [1_900_000_000.0]
    monkeypatch.setattr(tokens, "_wall", lambda: now[0])
    held = await svc.reserve()
    done = await svc.post("/commit", id=held["id"], cost="0.04")
    now[0] += 60
    assert (await svc.post("/commit", id=held["id"], cost="0.04"))["duplicate"] is True
    now[0] += 1
    for path in ("/commit", "/release"):
        expired = (
            await svc.post(path, 410, id=held["id"], cost="0.04")
            if path == "/commit"
            else await svc.post(path, 410, id=held["id"])
        )
        assert expired["error"] == "reservation_expired"
        assert "61 s ago" in expired["message"]
    assert done["cost"] == "0.040000000"
    assert await svc.used() == Decimal("0.04")


# -- strict bodies ----------------------------------------------------------------------------

RESERVE_422 = [
    ({}, "tenant", "missing required field"),
    ({"tenant": "a"}, "candidates", "missing required field"),
    ({"tenant": "a", "candidates": [], "extra": 1}, "extra", "unknown field"),
    ({"tenant": 7, "candidates": []}, "tenant", "expected a string, got integer 7"),
    ({"tenant": "", "candidates": []}, "tenant", "must not be empty"),
    ({"tenant": "a" * 201, "candidates": []}, "tenant", "201 characters long"),
    ({"tenant": "a\x00b", "candidates": []}, "tenant", "control character"),
    ({"tenant": "a", "feature": 1, "candidates": []}, "feature", "expected a string"),
    ({"tenant": "a", "request_id": "", "candidates": []}, "request_id", "must not be empty"),
    ({"tenant": "a", "candidates": []}, "candidates", "1 to 16 candidates, got 0 items"),
    ({"tenant": "a", "candidates": {}}, "candidates", "got object"),
    (
        {"tenant": "a", "candidates": [{"model": "m", "estimate": "1"}] * 17},
        "candidates",
        "got 17 items",
    ),
    ({"tenant": "a", "candidates": ["m"]}, "candidates[0]", "expected a JSON object"),
    ({"tenant": "a", "candidates": [{"estimate": "1"}]}, "candidates[0].model", "missing"),
    ({"tenant": "a", "candidates": [{"model": "m"}]}, "candidates[0]", "needs estimate"),
    (
        {"tenant": "a", "candidates": [{"model": "m", "estimate": "1", "input_tokens": 3}]},
        "candidates[0].input_tokens",
        "not both",
    ),
    (
        {"tenant": "a", "candidates": [{"model": "m", "estimate": 0.5}]},
        "candidates[0].estimate",
        "(JSON numbers are not accepted for money), got number 0.5",
    ),
    (
        {"tenant": "a", "candidates": [{"model": "m", "estimate": 1}]},
        "candidates[0].estimate",
        "got integer 1",
    ),
    (
        {"tenant": "a", "candidates": [{"model": "m", "estimate": "-0.5"}]},
        "candidates[0].estimate",
        "no sign or exponent; got '-0.5'",
    ),
    (
        {"tenant": "a", "candidates": [{"model": "m", "estimate": "NaN"}]},
        "candidates[0].estimate",
        "got 'NaN'",
    ),
    (
        {"tenant": "a", "candidates": [{"model": "m", "estimate": "1e3"}]},
        "candidates[0].estimate",
        "got '1e3'",
    ),
    (
        {"tenant": "a", "candidates": [{"model": "m", "estimate": "2000000"}]},
        "candidates[0].estimate",
        "absurd amount '2000000', above the $1,000,000.00 maximum",
    ),
    (
        {"tenant": "a", "candidates": [{"model": "m", "estimate": "9" * 200}]},
        "candidates[0].estimate",
        "expected a string of dollars",
    ),
    (
        {"tenant": "a", "candidates": [{"model": "m", "input_tokens": -1}]},
        "candidates[0].input_tokens",
        "expected an integer from 0 to 10000000, got integer -1",
    ),
    (
        {"tenant": "a", "candidates": [{"model": "m", "input_tokens": 1.5}]},
        "candidates[0].input_tokens",
        "got number 1.5",
    ),
    (
        {"tenant": "a", "candidates": [{"model": "m", "input_tokens": True}]},
        "candidates[0].input_tokens",
        "got boolean True",
    ),
    (
        {"tenant": "a", "candidates": [{"model": "m", "input_tokens": 10**30}]},
        "candidates[0].input_tokens",
        "expected an integer",
    ),
    (
        {
            "tenant": "a",
            "candidates": [{"model": "m", "input_tokens": 1, "max_output_tokens": "9"}],
        },
        "candidates[0].max_output_tokens",
        "got string '9'",
    ),
    (
        {
            "tenant": "a",
            "candidates": [{"model": "pricey", "input_tokens": 10**7, "max_output_tokens": 10**7}],
        },
        "candidates[0]",
        "absurd amount",
    ),
    (
        {"tenant": "a", "input_chars": -1, "candidates": [{"model": "m", "estimate": "1"}]},
        "input_chars",
        "got integer -1",
    ),
    (
        {"tenant": "a", "downgrade": "no", "candidates": [{"model": "m", "estimate": "1"}]},
        "downgrade",
        "expected true or false",
    ),
]


# Validation happens before the store is reached: the embedded store is enough (local_svc).


@pytest.mark.parametrize(("body", "field", "message"), RESERVE_422)
async def test_bad_reserve_bodies_are_422_naming_the_field(
    local_svc: Svc, body: dict[str, Any], field: str, message: str
) -> None:
    r = await local_svc.client.post("/reserve", json=body)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["field"] == field
    assert problem["message"].startswith(field) or problem["message"].startswith(
        field.split(" ")[0]
    )
    assert message in problem["message"]
    assert problem["error"] in ("invalid_request", "invalid_id", "invalid_amount")


async def test_bad_commit_and_release_bodies_are_422(svc: Svc) -> None:
    token = (await svc.reserve())["id"]
    cases: list[tuple[str, dict[str, Any], str, str]] = [
        ("/commit", {}, "id", "missing required field"),
        ("/commit", {"id": token}, "cost", "give cost (dollars as a string), or input_tokens"),
        ("/commit", {"id": token, "input_tokens": 5}, "cost", "or input_tokens and output_tokens"),
        ("/commit", {"id": token, "cost": "-1"}, "cost", "no sign or exponent"),
        ("/commit", {"id": token, "cost": 0.01}, "cost", "JSON numbers are not accepted"),
        ("/commit", {"id": token, "cost": "1000001"}, "cost", "absurd amount"),
        ("/commit", {"id": token, "cost": "Infinity"}, "cost", "got 'Infinity'"),
        ("/commit", {"id": token, "cost": "1", "input_tokens": -1}, "input_tokens", "got integer"),
        (
            "/commit",
            {"id": token, "cost": "1", "output_tokens": 10**10},
            "output_tokens",
            "from 0 to 1000000000",
        ),
        ("/commit", {"id": token, "cost": "1", "model": ""}, "model", "must not be empty"),
        ("/commit", {"id": token, "cost": "1", "costs": "1"}, "costs", "unknown field"),
        ("/release", {"id": token, "cost": "1"}, "cost", "unknown field; expected id"),
        ("/release", {}, "id", "missing required field"),
    ]
    for path, body, field, message in cases:
        problem = await svc.post(path, 422, **body)
        assert problem["field"] == field, (body, problem)
        assert message in problem["message"], (body, problem)
    # nothing was settled by the refused calls
    assert (await svc.fence.status("acme")).open_holds == 1
    assert await svc.used() == 0


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b"", 422, "body: empty"),
        (b"   ", 422, "body: empty"),
        (b"[1, 2]", 422, "body: expected a JSON object, got array"),
        (b'"acme"', 422, "body: expected a JSON object, got string 'acme'"),
        (b"null", 422, "body: expected a JSON object, got null"),
        (b"{", 422, "body: invalid JSON: Expecting property name enclosed in double quotes"),
        (b'{"tenant": "a", "tenant": "b"}', 422, "duplicate key 'tenant'"),
        (b'{"tenant": NaN}', 422, "NaN is not a JSON number"),
        (b'{"tenant": -Infinity}', 422, "-Infinity is not a JSON number"),
        (b'{"tenant": "\xff"}', 422, "body: not valid UTF-8 at byte 12"),
        (b"[" * 50_000 + b"]" * 50_000, 413, "larger than 65536 bytes"),
        (b"[" * 30_000 + b"]" * 30_000, 422, "body: invalid JSON"),
        (b'{"tenant": 1' + b"0" * 5000 + b"}", 422, "body: invalid JSON"),
        (b'{"tenant": "a", "candidates": [], "\\ud800": 1}', 422, "'\\ud800': unknown field"),
    ],
    ids=lambda v: v[:24] if isinstance(v, bytes) else str(v),
)
async def test_malformed_json_is_422_and_large_bodies_413(
    local_svc: Svc, content: bytes, status: int, message: str
) -> None:
    r = await local_svc.client.post(
        "/reserve", content=content, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert message in r.json()["message"]


async def test_body_limit_without_content_length(make_local_svc: Callable[..., Svc]) -> None:
    svc = make_local_svc(max_body_bytes=1024)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 200

    r = await svc.client.post(
        "/reserve", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in r.request.headers
    assert (r.status_code, r.json()["error"]) == (413, "body_too_large")


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
async def test_bodies_must_be_json(local_svc: Svc, content_type: str | None) -> None:
    svc = local_svc
    headers = {} if content_type is None else {"Content-Type": content_type}
    r = await svc.client.post("/reserve", content=b'{"tenant": "a"}', headers=headers)
    assert (r.status_code, r.json()["error"]) == (415, "unsupported_media_type")
    ok = await svc.client.post(
        "/commit",
        content=b"{}",
        headers={"Content-Type": "application/merge-patch+json; charset=utf-8"},
    )
    assert ok.status_code == 422  # accepted as JSON, then refused for its content


async def test_status_validates_the_tenant(svc: Svc) -> None:
    assert (await svc.client.get("/status/" + "a" * 201)).status_code == 422
    empty = await svc.client.get("/status/")
    assert (empty.status_code, empty.json()["error"]) == (422, "invalid_id")
    slashed = await svc.client.get("/status/team/acme%2Fx")
    assert (slashed.status_code, slashed.json()["tenant"]) == (200, "team/acme/x")
    fresh = (await svc.client.get("/status/nobody")).json()
    assert (fresh["plan"], fresh["windows"][0]["used"]) == ("day", "0.000000000")


async def test_unknown_routes_and_methods_answer_json(local_svc: Svc) -> None:
    svc = local_svc
    r = await svc.client.get("/nowhere")
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    r = await svc.client.get("/reserve")
    assert (r.status_code, r.json()["error"], r.headers["allow"]) == (
        405,
        "method_not_allowed",
        "POST",
    )


# -- the app as a whole -----------------------------------------------------------------------


async def test_mounted_under_a_prefix(backend: Backend) -> None:
    fence = backend.fence(plans=PLANS, default_plan="day")
    app = Starlette(routes=[Mount("/ai-budget", app=service_app(fence, token=TOKEN))])
    async with _client(app, **AUTH) as c:
        r = await c.post(
            "/ai-budget/reserve",
            json={"tenant": "acme", "candidates": [{"model": "m", "estimate": "0.01"}]},
        )
        assert r.status_code == 200
        schema = (await c.get("/ai-budget/openapi.json")).json()
        assert schema["servers"] == [{"url": "/ai-budget"}]
        assert (await c.get("/ai-budget/status/acme")).json()["held"] == "0.010000000"


async def test_the_schema_describes_every_route(svc: Svc) -> None:
    async with _client(svc.app) as anon:
        schema = (await anon.get("/openapi.json")).json()
    assert schema["openapi"] == "3.1.0"
    assert "servers" not in schema
    assert set(schema["paths"]) == {
        "/reserve",
        "/commit",
        "/release",
        "/status/{tenant}",
        "/openapi.json",
    }
    assert schema["paths"]["/openapi.json"]["get"]["security"] == []
    assert schema["security"] == [{"bearer": []}]
    reserve = schema["paths"]["/reserve"]["post"]["responses"]
    assert {"200", "401", "402", "403", "409", "413", "415", "422", "429", "503"} <= set(reserve)
    for code in ("ai_request_limit_exceeded", "ai_too_many_open_holds"):
        assert f"`{code}`" in reserve["429"]["description"]
    estimate = schema["components"]["schemas"]["EstimateCandidate"]["properties"]["estimate"]
    assert "above $0" in estimate["description"]
    assert schema == service.openapi_schema()


async def test_lifespan_pings_and_closes_an_owned_fence(backend: Backend) -> None:
    fence = backend.fence(plans=PLANS, default_plan="day")
    app = service_app(fence, token=TOKEN, owns_fence=True)
    closed: list[bool] = []
    original = fence.aclose

    async def aclose() -> None:
        closed.append(True)
        await original()

    fence.aclose = aclose  # type: ignore[method-assign]
    async with app.router.lifespan_context(app):
        assert not closed
    assert closed == [True]


def test_bad_options_are_config_errors() -> None:
    fence = TokenFence(plans=PLANS, default_plan="day", record_ttl=3600)
    with pytest.raises(ConfigError, match="fence must be a TokenFence"):
        service_app(object(), token=TOKEN)  # type: ignore[arg-type]
    for token in ("short", "has a space in it ok", "x" * 4097, 123):
        with pytest.raises(ConfigError, match="token must be 16-4096"):
            service_app(fence, token=token)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="signing_key must be at least 16 bytes"):
        service_app(fence, token=TOKEN, signing_key="short")
    with pytest.raises(ConfigError, match=r"token_ttl must be in \(0, 3600\]"):
        service_app(fence, token=TOKEN, token_ttl=3601)
    with pytest.raises(ConfigError, match="token_ttl"):
        service_app(fence, token=TOKEN, token_ttl=0)
    with pytest.raises(ConfigError, match="max_body_bytes"):
        service_app(fence, token=TOKEN, max_body_bytes=10)
    with pytest.raises(ConfigError, match="prices must be a PriceBook"):
        service_app(fence, token=TOKEN, prices={})  # type: ignore[arg-type]
    app = service_app(fence, token=TOKEN)
    assert app.state.tokenfence_service.tokens.ttl == 3600 - 300  # record_ttl less the margin
