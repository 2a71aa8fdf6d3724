"""The dashboard in headless Chromium (Debian's, driven by Playwright) against a seeded Redis.

An app with an AI endpoint and the admin app mounted at /admin runs in uvicorn on loopback; the
test spends through it for eight tenants at different levels, signs in on the dashboard, checks
the bars (count, order, widths, colours), kills a tenant with its button (verified through the
API and the store), revives it, and saves a screenshot in the test's temp dir. Tenants named
``..`` and ``.`` are killed with their buttons too: their own switch, never the global one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from tests.e2e.servers import serve
from tokenfence_asgi import Limit, Plan, TokenFence
from tokenfence_asgi.errors import Refused
from tokenfence_asgi.web.admin import admin_app
from tokenfence_asgi.web.problem import http_status

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "dashboard-test-token-5f1e0c9a"
PLANS = [
    Plan("team", [Limit("1d", max_cost="50"), Limit("1h", max_requests=1000)]),
    Plan("pro", [Limit("1d", max_cost="200")]),
    Plan("enterprise"),
]
# tenant, plan, dollars spent today (the plan's daily limit is what the bar measures)
SEED = [
    ("initech", "team", "12"),
    ("acme-corp", "team", "50"),
    ("hooli", "team", "3"),
    ("globex", "team", "36"),
    ("stark-industries", "enterprise", "75"),
    ("northwind", "team", "49.20"),
    ("umbrella", "pro", "180"),
    ("wayne-enterprises", "team", "20"),
]
EXPECTED_ORDER = [  # fullest first; no limit last
    "acme-corp",
    "northwind",
    "umbrella",
    "globex",
    "wayne-enterprises",
    "initech",
    "hooli",
    "stark-industries",
]
HELD = {"initech": Decimal(6)}  # a call in flight: held, not yet committed
LIMITS = {"team": Decimal(50), "pro": Decimal(200)}


def _need_chromium() -> None:
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} is not installed"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            missing = "playwright is not installed"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the dashboard browser test needs Chromium and Playwright: {missing}")
        pytest.skip(missing)


def build_app(fence: TokenFence) -> Starlette:
    """An app of ours: an AI endpoint charged to the fence, and the admin app at /admin."""

    async def spend(request: Request) -> JSONResponse:
        body = await request.json()
        try:
            reservation = await fence.reserve(body["tenant"], body["amount"], feature="chat")
        except Refused as refused:
            return JSONResponse(refused.to_dict(), status_code=http_status(refused))
        await fence.commit(reservation, body["amount"])
        return JSONResponse({"ok": True})

    async def hold(request: Request) -> JSONResponse:
        body = await request.json()
        await fence.reserve(body["tenant"], body["amount"], feature="chat")  # never settled
        return JSONResponse({"ok": True})

    async def set_plan(request: Request) -> JSONResponse:
        body = await request.json()
        await fence.set_plan(body["tenant"], body["plan"])
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await fence.aclose()

    return Starlette(
        lifespan=lifespan,
        routes=[
            Route("/spend", spend, methods=["POST"]),
            Route("/plan", set_plan, methods=["POST"]),
            Route("/hold", hold, methods=["POST"]),
            Mount("/admin", app=admin_app(fence, token=TOKEN)),
        ],
    )


@pytest.fixture
def server(redis_url: str, prefix: str) -> Iterator[tuple[str, TokenFence]]:
    # The server's fence is used only on uvicorn's event loop (its connections live there).
    fence = TokenFence(redis_url=redis_url, prefix=prefix, plans=PLANS, default_plan="team")
    with serve(build_app(fence), lifespan="on") as url:
        yield url, fence


@pytest.fixture
async def store(redis_url: str, prefix: str) -> AsyncIterator[TokenFence]:
    """A second instance on the same Redis, on the test's loop: checks what the server did.

    It reads the global switches on every call (``kill_cache_s=0``), not up to 1 s late."""
    fence = TokenFence(
        redis_url=redis_url, prefix=prefix, plans=PLANS, default_plan="team", kill_cache_s=0
    )
    try:
        yield fence
    finally:
        await fence.aclose()
        client = aioredis.Redis.from_url(redis_url)
        async for key in client.scan_iter(match=f"{prefix}:*", count=5000):
            await client.delete(key)
        await client.aclose()


async def seed(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for tenant, plan, amount in SEED:
            (await http.post("/plan", json={"tenant": tenant, "plan": plan})).raise_for_status()
            (
                await http.post("/spend", json={"tenant": tenant, "amount": amount})
            ).raise_for_status()
        for tenant, amount in HELD.items():
            (
                await http.post("/hold", json={"tenant": tenant, "amount": str(amount)})
            ).raise_for_status()
        for tenant in ("acme-corp", "northwind", "acme-corp"):  # a few refusals for the feed
            refused = await http.post("/spend", json={"tenant": tenant, "amount": "5"})
            assert refused.status_code == 402
        admin = {"Authorization": f"Bearer {TOKEN}"}
        killed = await http.post("/admin/api/tenants/wayne-enterprises/kill", headers=admin)
        killed.raise_for_status()


async def bars(page: Any) -> list[dict[str, Any]]:
    return await page.evaluate(  # type: ignore[no-any-return]
        """() => Array.from(document.querySelectorAll('#tenants li.tenant')).map(li => {
            const meter = li.querySelector('.meter').getBoundingClientRect();
            const fill = li.querySelector('.meter .fill').getBoundingClientRect();
            const held = li.querySelector('.meter .held').getBoundingClientRect();
            const button = li.querySelector('.ops button');
            return {
                tenant: li.dataset.tenant, killed: li.dataset.killed === 'true',
                level: Array.from(li.classList).find(c => c.startsWith('level-')),
                ratio: fill.width / meter.width, held: held.width / meter.width,
                color: getComputedStyle(
                    li.querySelector('.meter .fill')).backgroundColor,
                text: li.querySelector('.figures').innerText,
                button: button ? button.textContent : null,
            };
        })"""
    )


async def test_dashboard_in_chromium(
    server: tuple[str, TokenFence], store: TokenFence, tmp_path: Path
) -> None:
    _need_chromium()
    from playwright.async_api import async_playwright, expect

    url, _ = server
    await seed(url)
    admin = f"{url}/admin/"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert (await store.status("wayne-enterprises")).killed

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(
                viewport={"width": 1440, "height": 1000},
                reduced_motion="reduce",
                device_scale_factor=1,
            )
            context.set_default_timeout(45_000)
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on(
                "console",
                lambda message: errors.append(message.text) if message.type == "error" else None,
            )
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))

            await page.goto(admin)
            await page.wait_for_selector("#login:not([hidden])")
            await page.fill("#token", "not-the-token-at-all")
            await page.click("#login-form button")
            await expect(page.locator("#login-error")).to_contain_text("refused")
            errors.clear()  # the browser logs the refused request (401) as a console error
            await page.fill("#token", TOKEN)
            await page.click("#login-form button")
            await page.wait_for_selector("body[data-state='ready']")
            await page.wait_for_selector("#alerts li")

            # -- the bars: one per tenant, fullest first, widths and colours by fraction -------
            shown = await bars(page)
            assert [b["tenant"] for b in shown] == EXPECTED_ORDER
            spent = {tenant: Decimal(amount) for tenant, _, amount in SEED}
            plans = {tenant: plan for tenant, plan, _ in SEED}
            for bar in shown:
                tenant = bar["tenant"]
                if plans[tenant] == "enterprise":
                    assert (bar["level"], bar["ratio"]) == ("level-none", 0)
                    assert "no limit" in bar["text"]
                    continue
                limit = LIMITS[plans[tenant]]
                held = HELD.get(tenant, Decimal(0))
                assert bar["ratio"] == pytest.approx(float(spent[tenant] / limit), abs=0.01), tenant
                assert bar["held"] == pytest.approx(float(held / limit), abs=0.01), tenant
                fraction = (spent[tenant] + held) / limit
                assert f"{int(fraction * 100)}%" in bar["text"], bar
            levels = {b["tenant"]: b["level"] for b in shown}
            assert levels["acme-corp"] == "level-out"
            assert levels["northwind"] == levels["umbrella"] == "level-hot"
            assert levels["globex"] == "level-warn"
            assert levels["initech"] == levels["hooli"] == "level-ok"
            colors = {b["tenant"]: b["color"] for b in shown}
            assert (
                len({colors["acme-corp"], colors["northwind"], colors["globex"], colors["initech"]})
                == 4
            )
            assert [b["tenant"] for b in shown if b["killed"]] == ["wayne-enterprises"]
            assert "$49.20 of $50.00 per day" in shown[1]["text"]
            assert "$12.00 of $50.00 per day\n+ $6.00 held · resets in" in shown[5]["text"]
            assert await page.inner_text("#stat-tenants") == "8"
            assert await page.inner_text("#stat-out") == "1"
            assert await page.inner_text("#stat-risk") == "3"
            top = await page.eval_on_selector_all(
                "#top li", "els => els.map(e => e.dataset.tenant)"
            )
            assert top[:3] == ["umbrella", "stark-industries", "acme-corp"]
            refusals = await page.inner_text("#refusals")
            assert "acme-corp" in refusals
            assert "budget exceeded" in refusals
            assert "100%" in await page.inner_text("#alerts")

            # -- kill a tenant with its button: two clicks, then it is killed in the store -----
            button = page.locator("li.tenant[data-tenant='globex'] .ops button")
            assert await button.inner_text() == "Kill"
            await button.click()
            assert await button.inner_text() == "Confirm kill"  # armed, nothing sent yet
            assert not (await store.status("globex")).killed
            await button.click()
            await page.wait_for_selector("li.tenant[data-tenant='globex'][data-killed='true']")
            assert (await store.status("globex")).killed
            async with httpx.AsyncClient(base_url=url, headers=auth, timeout=30) as http:
                status = (await http.get("/admin/api/tenants/globex")).json()
                assert status["killed"] is True
                refused = await http.post("/spend", json={"tenant": "globex", "amount": "1"})
                assert (refused.status_code, refused.json()["error"]) == (403, "ai_disabled")
            await page.wait_for_selector("li.tenant[data-tenant='globex'] .pill.killed")

            screenshot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 20_000
            if os.environ.get("TOKENFENCE_SCREENSHOT"):
                shutil.copy(screenshot, os.environ["TOKENFENCE_SCREENSHOT"])

            # -- and revive it ------------------------------------------------------------------
            revive = page.locator("li.tenant[data-tenant='globex'] .ops button")
            assert await revive.inner_text() == "Revive"
            await revive.click()
            await revive.click()
            await page.wait_for_selector("li.tenant[data-tenant='globex'][data-killed='false']")
            assert not (await store.status("globex")).killed
            await store.commit(await store.reserve("globex", "1"), "1")

            # -- the global switch: every tenant stopped, a banner says so; then resumed -------
            stop = page.locator("#global-kill")
            assert await stop.inner_text() == "Stop all AI"
            await stop.click()
            await stop.click()
            await expect(page.locator("#banner")).to_contain_text("All AI calls are stopped")
            await page.wait_for_selector("li.tenant[data-tenant='hooli'] .pill.stopped")
            assert (await store.status("hooli")).killed
            await stop.click()
            await stop.click()
            await expect(page.locator("#banner")).to_be_hidden()
            await expect(page.locator("li.tenant .pill.stopped")).to_have_count(0)
            assert not (await store.status("hooli")).killed
            assert [b["tenant"] for b in await bars(page) if b["killed"]] == ["wayne-enterprises"]

            assert errors == []
            assert all(r.startswith(url) for r in requests), "the page fetched from elsewhere"
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def signed_in(url: str) -> AsyncIterator[tuple[Any, list[str]]]:
    """A headless Chromium page on the dashboard at ``url``/admin/, signed in with the token;
    also the page's errors (uncaught exceptions and console errors)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page.set_default_timeout(45_000)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on(
                "console",
                lambda message: errors.append(message.text) if message.type == "error" else None,
            )
            await page.goto(f"{url}/admin/")
            await page.wait_for_selector("#login:not([hidden])")
            await page.fill("#token", TOKEN)
            await page.click("#login-form button")
            await page.wait_for_selector("body[data-state='ready']")
            errors.clear()  # the page's first request, without the token, is logged as a 401
            yield page, errors
        finally:
            await browser.close()


async def kill_with_button(page: Any, tenant: str) -> None:
    """Click the tenant's Kill button twice (arm, confirm) and wait for the page to show what
    followed: the tenant killed, the global switch on, or the action's failure."""
    row = f"li.tenant[data-tenant={json.dumps(tenant)}]"
    button = page.locator(f"{row} .ops button")
    assert await button.inner_text() == "Kill"
    await button.click()
    assert await button.inner_text() == "Confirm kill"
    await button.click()
    await page.wait_for_function(
        """(row) => {
            const li = document.querySelector(row);
            const banner = document.getElementById('banner');
            return (li && li.dataset.tenantKilled === 'true') || !banner.hidden;
        }""",
        arg=row,
    )


async def test_dot_segment_tenant_ids_kill_their_tenant_not_everyone(
    server: tuple[str, TokenFence], store: TokenFence
) -> None:
    """A tenant id is one path segment: killing ``..`` from the page must not reach ``api/kill``
    (the global switch), and ``.`` must be killable too."""
    _need_chromium()
    url, _ = server
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for tenant in ("..", ".", "acme-corp"):
            (await http.post("/plan", json={"tenant": tenant, "plan": "team"})).raise_for_status()

    async with signed_in(url) as (page, errors):
        await kill_with_button(page, "..")
        assert (await store.global_switches())[0] is False, "the global kill switch was flipped"
        assert (await store.status("..")).killed
        assert not (await store.status("acme-corp")).killed
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            spent = await http.post("/spend", json={"tenant": "acme-corp", "amount": "1"})
            assert spent.status_code == 200, spent.text

        await kill_with_button(page, ".")
        assert await page.locator("#banner").is_hidden(), await page.inner_text("#banner")
        assert (await store.status(".")).killed
        assert (await store.global_switches())[0] is False
        assert not (await store.status("acme-corp")).killed
        killed = await page.eval_on_selector_all(
            "li.tenant[data-tenant-killed='true']", "els => els.map(e => e.dataset.tenant)"
        )
        assert sorted(killed) == [".", ".."]
        assert errors == []
