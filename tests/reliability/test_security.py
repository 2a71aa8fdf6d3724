"""Security: the signed tenant header, tenant isolation through the middleware and the LiteLLM
callback, and the bearer tokens of the admin and service apps.

What exists and is checked: ``signed_tenant_header`` accepts exactly ``t=<time>[,n=<nonce>],s=``
``HMAC-SHA256(secret, tenant, time, nonce)`` in lower-case hex, spelt canonically, for exactly
that tenant and time, and refuses everything else (401); a
request is charged to its own tenant only, whatever else it sends; every admin and service
route but the documented public ones refuses a missing or wrong token (401).

Inside a request, ``metadata["tenant_id"]`` naming another tenant cannot move the charge
(the LiteLLM callback ignores it unless ``trust_metadata_tenant=True``).

A signed pair carries its issue time: a captured one is refused once older than ``max_age_s``
(plus the clock-skew allowance), and cannot be re-stamped; an app that checks the signed nonce
(the documented recipe, with the app's own Redis) refuses even the first replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from decimal import Decimal
from typing import Any, Literal

import httpx
import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Scope

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from tests.conftest import HOSTILE_EXAMPLES, FakeClock
from tests.litellm.litellm_support import CALLBACK_LISTS
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.context import current_context
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import TenantRequired
from tokenfence_asgi.web.middleware import (
    TenantResolver,
    TokenFenceMiddleware,
    sign_tenant,
    signed_tenant_header,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

SECRET = "s3cret-of-the-gateway-32-bytes!!"
OPEN = Plan("open", [Limit("1d", max_cost="10")])
TENANTS = st.text(st.characters(exclude_categories=("C",)), min_size=1, max_size=30)
PROPERTY = settings(
    max_examples=max(100, HOSTILE_EXAMPLES // 20),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# -- the signed tenant header --------------------------------------------------------------


NOW = 1_773_576_000  # 2026-03-15 12:00 UTC, the gateway's and the app's clock


def _signed_app(fence: TokenFence, resolver: TenantResolver) -> Starlette:
    async def whoami(request: Request) -> JSONResponse:
        ctx = current_context()
        assert ctx is not None
        return JSONResponse({"tenant": ctx.tenant_id})

    return Starlette(
        routes=[Route("/", whoami)],
        middleware=[Middleware(TokenFenceMiddleware, fence=fence, tenant=resolver)],
    )


Send = Callable[[list[tuple[str, bytes]]], httpx.Response]


@contextlib.contextmanager
def _serving(
    resolver: TenantResolver, *, closing: Callable[[], Coroutine[Any, Any, object]] | None = None
) -> Iterator[Send]:
    fence = TokenFence(plans=[OPEN], default_plan="open")
    transport = httpx.ASGITransport(app=_signed_app(fence, resolver))
    with asyncio.Runner() as runner:
        client = httpx.AsyncClient(transport=transport, base_url="http://app")

        def send(headers: list[tuple[str, bytes]]) -> httpx.Response:
            return runner.run(client.get("/", headers=headers))

        yield send
        if closing is not None:
            runner.run(closing())
        runner.run(client.aclose())
        runner.run(fence.aclose())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def signed_client(clock: FakeClock) -> Iterator[Send]:
    with _serving(signed_tenant_header(SECRET, max_age_s=60, clock_skew_s=5, clock=clock)) as send:
        yield send


def _mac(tenant: str, issued_at: int, nonce: str = "") -> str:
    message = f"tokenfence-tenant-v1\n{tenant}\n{issued_at}\n{nonce}".encode()
    return hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()


def test_sign_tenant_is_hmac_sha256_hex_of_the_tenant_time_and_nonce() -> None:
    assert sign_tenant(SECRET, "acme", issued_at=NOW) == f"t={NOW},s={_mac('acme', NOW)}"
    nonce = "n0nce-of-22-chars_abcd"
    assert sign_tenant(SECRET, "acme", issued_at=NOW, nonce=nonce) == (
        f"t={NOW},n={nonce},s={_mac('acme', NOW, nonce)}"
    )


@PROPERTY
@given(tenant=TENANTS, other=TENANTS, junk=st.binary(max_size=80))
def test_only_the_exact_signature_of_the_exact_tenant_is_accepted(
    signed_client: Send, tenant: str, other: str, junk: bytes
) -> None:
    raw = tenant.encode()
    good = sign_tenant(SECRET, tenant, issued_at=NOW).encode()
    mac = good.rsplit(b"s=", 1)[1]
    ok = signed_client([("X-Tenant-ID", raw), ("X-Tenant-Signature", good)])
    assert (ok.status_code, ok.json()) == (200, {"tenant": tenant})
    bare_hmac = hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest().encode()
    signatures = [
        b"",
        junk,
        good.upper(),
        good[:-1],
        good + b"0",
        b" " + good,
        good + b" ",
        good.replace(b",", b", "),
        good.replace(b"t=", b"t=0"),  # a leading zero: same number, not the canonical spelling
        good.replace(b"t=", b"t=+"),
        good.replace(b"s=", b"s=" + mac[:1].upper())[: len(good)],
        b"s=" + mac + b",t=" + str(NOW).encode(),  # the fields reordered
        good + b",n=extra-nonce-not-signed",
        good.replace(b",s=", b",n=extra-nonce-not-signed,s="),  # a nonce the MAC does not cover
        bare_hmac,  # the old, never-expiring format
        f"t={NOW + 1},s={mac.decode()}".encode(),  # a MAC moved to another time
        sign_tenant("another-secret-of-16+bytes", tenant, issued_at=NOW).encode(),
    ]
    forged = [[("X-Tenant-ID", raw)]]  # no signature
    forged += [[("X-Tenant-ID", raw), ("X-Tenant-Signature", sig)] for sig in signatures]
    if other != tenant:  # a valid signature, of someone else
        other_sig = sign_tenant(SECRET, other, issued_at=NOW).encode()
        forged.append([("X-Tenant-ID", raw), ("X-Tenant-Signature", other_sig)])
        forged.append([("X-Tenant-ID", other.encode()), ("X-Tenant-Signature", good)])
    for headers in forged:
        if headers[-1][1] == good and headers[0][1] == raw:
            continue  # junk happened to be the right signature
        refused = signed_client(headers)
        assert refused.status_code == 401, headers
        assert refused.json()["error"] == "tenant_required"
    twice = signed_client(
        [("X-Tenant-ID", raw), ("X-Tenant-Signature", good), ("X-Tenant-Signature", good)]
    )
    assert twice.status_code == 400  # a signature header sent twice is refused, not merged


def test_a_replayed_signed_header_is_refused(
    signed_client: Send, clock: FakeClock, redis_url: str, prefix: str
) -> None:
    """A captured pair stops working when it expires; with the documented nonce check in the
    app's resolver, the first replay is refused already."""
    signature = sign_tenant(SECRET, "acme", issued_at=NOW).encode()
    captured = [("X-Tenant-ID", b"acme"), ("X-Tenant-Signature", signature)]
    assert signed_client(captured).status_code == 200
    clock.advance(65)  # max_age_s 60 + clock_skew_s 5: still accepted
    assert signed_client(captured).status_code == 200
    clock.advance(1)
    late = signed_client(captured)  # the same pair, captured and replayed after it expired
    assert (late.status_code, late.json()["header"]) == (401, "X-Tenant-Signature")
    assert "expired" in late.json()["message"]
    # Re-stamping the captured MAC with a fresh time does not revive it.
    mac = captured[1][1].decode().rsplit("s=", 1)[1]
    restamped = [captured[0], ("X-Tenant-Signature", f"t={int(clock())},s={mac}".encode())]
    assert signed_client(restamped).status_code == 401
    # Issued in the future beyond the skew (a gateway clock far ahead): refused too.
    ahead = sign_tenant(SECRET, "acme", issued_at=int(clock()) + 6).encode()
    assert signed_client([captured[0], ("X-Tenant-Signature", ahead)]).status_code == 401

    # Single use: the app records each verified nonce in its Redis for the signature's lifetime.
    store = redis.asyncio.Redis.from_url(redis_url)
    signed = signed_tenant_header(SECRET, require_nonce=True, clock=clock)

    async def once(scope: Scope) -> str | None:
        tenant = signed(scope)
        key = f"{prefix}:nonce:{scope['state']['tenant_nonce']}"
        if tenant is not None and not await store.set(key, 1, nx=True, ex=60 + 2 * 5):
            raise TenantRequired("this tenant signature was used already")
        return tenant

    fresh = sign_tenant(SECRET, "acme", issued_at=int(clock()), nonce=secrets.token_urlsafe(16))
    with _serving(once, closing=store.aclose) as send:
        headers = [captured[0], ("X-Tenant-Signature", fresh.encode())]
        assert send(headers).status_code == 200
        replayed = send(headers)  # the same pair, captured and replayed at once
        assert replayed.status_code == 401
        assert replayed.json()["message"] == "this tenant signature was used already"
        without = sign_tenant(SECRET, "acme", issued_at=int(clock()))
        assert send([captured[0], ("X-Tenant-Signature", without.encode())]).status_code == 401


# -- tenant isolation through the middleware and the LiteLLM callback -----------------------


MSGS = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
async def fenced_app(
    make_fence: Callable[..., TokenFence],
) -> AsyncIterator[tuple[httpx.AsyncClient, TokenFence]]:
    """An app whose endpoint makes a LiteLLM call, passing through whatever metadata the client
    sent (as a proxy-style app does)."""
    import litellm

    from tokenfence_asgi.litellm import TokenFenceCallback

    fence = make_fence(plans=[OPEN], default_plan="open", clock=None)
    saved = {name: list(getattr(litellm, name)) for name in CALLBACK_LISTS}
    callback = TokenFenceCallback(fence)
    litellm.callbacks = [callback]

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        await litellm.acompletion(
            model="gpt-4o-mini",
            messages=MSGS,
            mock_response="hi",
            metadata=body.get("metadata") or {},
        )
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[Route("/chat", chat, methods=["POST"])],
        middleware=[Middleware(TokenFenceMiddleware, fence=fence)],
    )
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client, fence
    finally:
        callback.close()
        for name, value in saved.items():
            setattr(litellm, name, value)


async def _spent(fence: TokenFence, tenant: str) -> tuple[Decimal, Decimal]:
    for _ in range(200):  # the success event commits just after the response
        window = (await fence.status(tenant)).windows[0]
        if window.held == 0:
            break
        await asyncio.sleep(0.005)
    return window.used, window.held


async def test_a_request_is_charged_to_its_own_tenant_only(
    fenced_app: tuple[httpx.AsyncClient, TokenFence],
) -> None:
    client, fence = fenced_app
    victim = "victim"
    reply = await client.post("/chat", headers={"X-Tenant-ID": "attacker"}, json={})
    assert reply.status_code == 200
    assert (await _spent(fence, "attacker"))[0] > 0
    # Look-alikes of the victim's id are other tenants, never the victim.
    for header in ["Victim", "victim ", " victim", "victim\u200b", "vict\u0456m", "victim, x"]:
        response = await client.post("/chat", headers={"X-Tenant-ID": header.encode()}, json={})
        assert response.status_code in (200, 400), header
    # The header sent twice (a client's and a gateway's) is refused, not merged.
    both = await client.post(
        "/chat", headers=[("X-Tenant-ID", "attacker"), ("X-Tenant-ID", victim)], json={}
    )
    assert both.status_code == 400
    # A reservation id smuggled in the metadata does not settle anyone else's call.
    smuggled = {"metadata": {"tokenfence_reservation_id": "victim-call"}}
    assert (
        await client.post("/chat", headers={"X-Tenant-ID": "attacker"}, json=smuggled)
    ).status_code == 200
    assert await _spent(fence, victim) == (0, 0)
    status = await fence.status(victim)
    assert status.open_holds == 0


async def test_a_refusal_shows_only_the_requesting_tenants_numbers(
    fenced_app: tuple[httpx.AsyncClient, TokenFence],
) -> None:
    client, fence = fenced_app
    big = await fence.reserve("victim", "9.99")  # the victim holds almost everything
    await fence.commit(big, "9.99")
    await fence.commit(await fence.reserve("attacker", "10"), "10")  # the attacker spent all
    refused = await client.post("/chat", headers={"X-Tenant-ID": "attacker"}, json={})
    assert refused.status_code == 402
    body = refused.json()
    assert body["used"] == "10.000000"
    assert "9.99" not in refused.text
    assert "victim" not in refused.text


async def test_metadata_cannot_move_a_requests_charge_to_another_tenant(
    fenced_app: tuple[httpx.AsyncClient, TokenFence],
) -> None:
    client, fence = fenced_app
    forged = {"metadata": {"tenant_id": "victim"}}
    response = await client.post("/chat", headers={"X-Tenant-ID": "attacker"}, json=forged)
    assert response.status_code in (200, 400, 401, 403)
    assert await _spent(fence, "victim") == (0, 0)


@pytest.mark.parametrize("unscoped", ["refuse", "allow"])
async def test_an_excluded_path_cannot_make_a_fenced_call(
    make_fence: Callable[..., TokenFence], unscoped: Literal["refuse", "allow"]
) -> None:
    """``exclude_paths`` lifts the tenant check, never the fence: a LiteLLM call made under an
    excluded path is refused (401), even with ``unscoped="allow"`` and a tenant header sent."""
    import litellm

    from tokenfence_asgi.litellm import TokenFenceCallback

    fence = make_fence(plans=[OPEN], default_plan="open", clock=None)
    saved = {name: list(getattr(litellm, name)) for name in CALLBACK_LISTS}
    callback = TokenFenceCallback(fence, unscoped=unscoped)
    litellm.callbacks = [callback]

    async def chat(request: Request) -> JSONResponse:
        await litellm.acompletion(model="gpt-4o-mini", messages=MSGS, mock_response="hi")
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/public/chat", chat, methods=["POST"]),
            Route("/chat", chat, methods=["POST"]),
        ],
        middleware=[Middleware(TokenFenceMiddleware, fence=fence, exclude_paths=["/public"])],
    )
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            for headers in ({}, {"X-Tenant-ID": "victim"}):
                r = await client.post("/public/chat", headers=headers)
                assert (r.status_code, r.json()["error"]) == (401, "tenant_required")
            ok = await client.post("/chat", headers={"X-Tenant-ID": "acme"})
            assert ok.status_code == 200
    finally:
        callback.close()
        for name, value in saved.items():
            setattr(litellm, name, value)
    assert await _spent(fence, "victim") == (0, 0)
    assert (await _spent(fence, "acme"))[0] > 0


# -- bearer tokens of the admin and service apps -------------------------------------------

ADMIN_TOKEN = "admin-token-0123456789abcdef"
WRONG = [
    None,
    "",
    "Bearer",
    "Bearer ",
    f"Bearer {ADMIN_TOKEN[:-1]}",
    f"Bearer {ADMIN_TOKEN}x",
    f"Bearer {ADMIN_TOKEN.upper()}",
    f"Basic {ADMIN_TOKEN}",
    ADMIN_TOKEN,
    f"Bearer {ADMIN_TOKEN} {ADMIN_TOKEN}",
    f"Bearer\t{ADMIN_TOKEN}x",
]


def _routes(app: Starlette) -> list[tuple[str, str]]:
    found = []
    for route in app.routes:
        path = getattr(route, "path", None)
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if path is not None and method != "HEAD":
                found.append(
                    (
                        method,
                        path.replace("{tenant}", "acme")
                        .replace("{pool}", "p")
                        .replace("{approval}", "a"),
                    )
                )
    return found


async def _refuses_without_the_token(app: Starlette, token: str, public: set[str]) -> int:
    checked = 0
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        for method, path in _routes(app):
            if path in public:
                continue
            for header in [*WRONG, *(w.replace(ADMIN_TOKEN, token) for w in WRONG if w)]:
                headers = {} if header is None else {"Authorization": header}
                response = await client.request(method, path, headers=headers, json={})
                assert response.status_code == 401, (method, path, header, response.text)
                checked += 1
            ok = await client.request(
                method, path, headers={"Authorization": f"Bearer {token}"}, json={}
            )
            assert ok.status_code != 401, (method, path)
    return checked


async def test_every_admin_route_refuses_a_missing_or_wrong_token(
    make_fence: Callable[..., TokenFence],
) -> None:
    from tokenfence_asgi.web.admin import admin_app

    app = admin_app(make_fence(plans=[OPEN], default_plan="open"), token=ADMIN_TOKEN, metrics=False)
    public = {"/", "/dashboard.js", "/dashboard.css"}  # documented: no data, no token
    assert await _refuses_without_the_token(app, ADMIN_TOKEN, public) > 0


async def test_every_service_route_refuses_a_missing_or_wrong_token(
    make_fence: Callable[..., TokenFence],
) -> None:
    from tokenfence_asgi.web.service import service_app

    token = "service-token-0123456789"
    app = service_app(make_fence(plans=[OPEN], default_plan="open"), token=token)
    public = {"/openapi.json"}  # documented: the schema only
    assert await _refuses_without_the_token(app, token, public) > 0
