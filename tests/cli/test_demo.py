"""``tokenfence demo``: the app, its fake provider, the scenario, and the real command over HTTP."""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from starlette.applications import Starlette
from starlette.routing import Route

from tests.e2e.servers import free_port
from tokenfence_asgi.cli.demo import BURNER, TENANTS, build_app, run_demo
from tokenfence_asgi.cli.demo.app import _SYSTEM, _fake_completions
from tokenfence_asgi.cli.demo.story import _chunk
from tokenfence_asgi.config import BUILTIN_PLANS
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.ops.simulate import delete_prefix

SCRIPT = Path(sys.executable).with_name("tokenfence")

pytestmark = [
    # LiteLLM's own use of pydantic warns; nothing to do with this project.
    pytest.mark.filterwarnings(
        "ignore:Items? .* on TypedDict class .* using the `ReadOnly` qualifier:UserWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:Accessing the 'model_(computed_)?fields' attribute on the inst:DeprecationWarning"
    ),
]


def test_four_tenants_on_the_four_built_in_plans() -> None:
    assert sorted(TENANTS.values()) == sorted(p.name for p in BUILTIN_PLANS)
    assert TENANTS[BURNER] == "starter"


def test_the_agents_chunks_fit_the_starter_plans_input_limit() -> None:
    starter = next(p for p in BUILTIN_PLANS if p.name == "starter")
    for number in (1, 7, 99):
        chunk = _chunk(number, 4700)
        assert len(chunk) == 4700
        assert chunk.startswith(f"Section {number}:")
        assert len(chunk) + len(_SYSTEM) <= (starter.max_input_chars or 0)
    assert _chunk(3, 4700) == _chunk(3, 4700)


async def test_the_fake_provider_answers_with_plausible_usage() -> None:
    app = Starlette(routes=[Route("/v1/chat/completions", _fake_completions, methods=["POST"])])
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "x" * 400}],
    }
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://provider") as client:
        first = (await client.post("/v1/chat/completions", json=body)).json()
        again = (await client.post("/v1/chat/completions", json=body)).json()
    usage = first["usage"]
    assert usage["prompt_tokens"] == 100 + 4
    assert 600 <= usage["completion_tokens"] <= 850
    assert usage == again["usage"]  # decided by the prompt: runs repeat
    assert first["model"] == "gpt-4o-mini"
    assert first["choices"][0]["message"]["content"].startswith("[fake gpt-4o-mini: a ")


async def test_docs_are_open_and_every_api_route_wants_a_tenant() -> None:
    """``exclude_paths`` lets the docs in without a tenant; the API routes answer 401 naming the
    header before any LLM call, as the README tells an app to do."""
    fence = TokenFence()
    app = build_app(fence, "http://127.0.0.1:9/provider/v1")  # never reached
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        for path in ("/docs", "/openapi.json", "/redoc", "/"):
            assert (await client.get(path)).status_code == 200, path
        for method, path in (("GET", "/status"), ("POST", "/chat"), ("POST", "/search")):
            body = {"message": "hi"} if path == "/chat" else {"query": "hi"}
            r = await client.request(method, path, json=body if method == "POST" else None)
            assert r.status_code == 401, (path, r.text)
            assert (r.json()["error"], r.json()["header"]) == ("tenant_required", "X-Tenant-ID")
        status = await client.get("/status", headers={"X-Tenant-ID": "acme"})
        assert (status.status_code, status.json()["plan"]) == (200, "free")
    await fence.aclose()


@pytest.mark.slow
async def test_the_scenario_in_process_on_redis(redis_url: str) -> None:
    """``--once`` on Redis: the story as told, and the demo's keys deleted afterwards."""
    output = io.StringIO()
    ok = await run_demo(
        port=0, once=True, redis_url=redis_url, console=Console(file=output, width=120)
    )
    text = output.getvalue()
    assert ok, text
    prefix = re.search(r"keys under (tfdemo-[0-9a-f]{8}):", text)
    assert prefix is not None
    assert await delete_prefix(redis_url, prefix.group(1)) == 0
    assert "1. Every tenant asks something: all are served." in text
    assert re.search(r"\d+ reports by gpt-4o ", text)
    assert re.search(r"\d+ reports by gpt-4o-mini .* downgraded", text)
    assert '"error": "ai_budget_exceeded"' in text
    assert re.search(r"globex spent \$4\.99\d\d of its \$5\.00 day", text)
    last = text.split("3. Meanwhile")[1].splitlines()
    statuses = [line.split()[2] for line in last if line.split()[:1] and line.split()[0] in TENANTS]
    assert statuses == ["200", "200", "200", "402", "402"]
    # umbrella is served through fence.guard(AsyncOpenAI()); globex is refused there too
    assert re.search(r"umbrella\s+/sdk/chat\s+200", text.split("3. Meanwhile")[0])
    assert [line.split()[2] for line in last if "/sdk/chat" in line] == ["200", "402"]


def _read_lines(stream: io.TextIOBase, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)
    into.put("")  # end of output


@pytest.mark.slow
def test_the_demo_command_serves_402_to_the_tenant_that_spent_its_budget() -> None:
    """The README's first command: a spent budget gets 402 over HTTP; the others are served."""
    assert SCRIPT.exists()
    port = free_port()
    env = {**os.environ, "COLUMNS": "120", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [str(SCRIPT), "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while not any(f"/status -H 'X-Tenant-ID: {BURNER}'" in line for line in seen):
            remaining = deadline - time.monotonic()
            assert remaining > 0, "".join(seen)
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line, "the demo exited early:\n" + "".join(seen)
            seen.append(line.lstrip("\n"))
        base = f"http://127.0.0.1:{port}"
        curl = [line for line in seen if "curl" in line and f"X-Tenant-ID: {BURNER}" in line]
        assert curl
        assert f"{base}/chat" in curl[0]
        assert "# 402" in curl[0]

        spent = httpx.post(
            f"{base}/chat", json={"message": "Hello"}, headers={"X-Tenant-ID": BURNER}, timeout=30
        )
        assert spent.status_code == 402, spent.text
        body = spent.json()
        assert body["error"] == "ai_budget_exceeded"
        assert (body["limit"], body["window"]) == ("5.000000", "1d")
        assert int(spent.headers["Retry-After"]) > 0
        assert float(body["used"]) > 4.99

        served = httpx.post(
            f"{base}/chat", json={"message": "Hello"}, headers={"X-Tenant-ID": "acme"}, timeout=30
        )
        assert served.status_code == 200, served.text
        assert served.json()["model"] == "gpt-4o-mini"  # free plan: downgraded
        status = httpx.get(f"{base}/status", headers={"X-Tenant-ID": BURNER}, timeout=30).json()
        assert status["plan"] == "starter"
        assert httpx.get(f"{base}/", timeout=30).json()["tenants"] == TENANTS
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            returncode = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(timeout=10)
        proc.stdout.close()
        stderr = proc.stderr.read() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    assert returncode == 0, stderr  # SIGTERM stops it cleanly
    assert "Traceback" not in stderr
