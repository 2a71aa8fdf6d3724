"""Optional dependencies are extras: the core imports without them, and each part that needs one
says which extra to install (``MissingExtra``) when it is missing.

A missing package is simulated in this process with ``sys.modules[name] = None`` (the module
that imports it is dropped from ``sys.modules`` first, so its import runs again), and in a
subprocess by a meta path finder that refuses every optional package, as a plain
``pip install tokenfence-asgi`` would leave them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from datetime import date
from pathlib import Path

import pytest

from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import MissingExtra
from tokenfence_asgi.testing import embedded_fence

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]
SECRET = "s" * 32

# Every package an extra brings that the core never needs, by import name.
OPTIONAL = (
    "fakeredis",
    "lupa",
    "typer",
    "rich",
    "httpx",
    "prometheus_client",
    "uvicorn",
    "fastapi",
    "litellm",
    "openai",
    "anthropic",
    "asyncpg",
    "pydantic",
)

# Run in a subprocess before anything else: every OPTIONAL package is "not installed".
BLOCK = """
import sys
class Blocked:
    names = set(sys.argv[1].split(","))
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocked())
"""


def without(packages: tuple[str, ...], code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter where ``packages`` cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", BLOCK + code, ",".join(packages), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def missing(monkeypatch: pytest.MonkeyPatch, package: str, *importers: str) -> None:
    """Make ``package`` unimportable; drop ``importers`` so their next import runs again."""
    for name in list(sys.modules):
        if name == package or name.startswith(f"{package}."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)
    for name in importers:
        monkeypatch.delitem(sys.modules, name, raising=False)


def names_extra(error: MissingExtra, extra: str) -> None:
    assert isinstance(error, ImportError)
    assert error.extra == extra
    assert f"pip install 'tokenfence-asgi[{extra}]'" in error.message


# -- the declared extras -------------------------------------------------------------------------


def closure(extra: str) -> set[str]:
    """The requirements an extra brings, its own extras' included (names lower-cased)."""
    found: set[str] = set()
    for requirement in EXTRAS[extra]:
        if requirement.startswith("tokenfence-asgi["):
            for inner in requirement.split("[", 1)[1].rstrip("]").split(","):
                found |= closure(inner)
        else:
            found.add(requirement.split(">", 1)[0].split("=", 1)[0].split("<", 1)[0].lower())
    return found


def test_the_core_needs_none_of_the_optional_packages() -> None:
    core = {r.split("[", 1)[0].split(">", 1)[0] for r in PYPROJECT["project"]["dependencies"]}
    assert core == {"redis", "structlog", "starlette", "tiktoken"}
    assert EXTRAS["embedded"] == ["fakeredis[lua]>=2.26,<3"]
    assert closure("cli") == {"typer", "rich"}
    assert closure("metrics") == {"prometheus-client"}
    assert closure("webhooks") == {"httpx"}


def test_the_quick_start_extra_brings_what_the_demo_needs() -> None:
    """README: ``pip install -e '.[demo]' && tokenfence demo`` on a fresh clone."""
    readme = (ROOT / "README.md").read_text()
    assert "pip install -q -e '.[demo]' && .venv/bin/tokenfence demo" in readme
    needed = {"typer", "rich", "fakeredis[lua]", "fastapi", "uvicorn", "litellm", "openai", "httpx"}
    assert needed <= closure("demo")


def test_all_and_dev_bring_every_extra() -> None:
    every = set().union(*(closure(name) for name in EXTRAS if name not in ("all", "dev")))
    assert every <= closure("all")
    assert closure("all") <= closure("dev")


# -- each extra, missing -------------------------------------------------------------------------


@pytest.mark.parametrize("package", ["fakeredis", "lupa"])
def test_the_embedded_store_names_its_extra(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    missing(monkeypatch, package, "tokenfence_asgi.store._embedded")
    with pytest.raises(MissingExtra) as caught:
        TokenFence()
    names_extra(caught.value, "embedded")
    assert "TokenFence() without a Redis URL" in caught.value.message
    with pytest.raises(MissingExtra):
        embedded_fence()


async def test_a_redis_url_needs_no_embedded_store(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    missing(monkeypatch, "fakeredis", "tokenfence_asgi.store._embedded")
    fence = TokenFence(redis_url=redis_url, prefix="tfextras")
    try:
        await fence.ping()  # raises StoreUnavailable when it cannot
        assert (await fence.status("acme")).plan == "free"
    finally:
        await fence.aclose()


def test_the_webhook_sender_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenfence_asgi.ops.webhooks import WebhookSender, sign_payload, verify_signature

    missing(monkeypatch, "httpx")
    with pytest.raises(MissingExtra) as caught:
        WebhookSender("https://example.com/hook", SECRET)
    names_extra(caught.value, "webhooks")
    signature = sign_payload(SECRET, b"{}", 1_700_000_000)  # a receiver needs no HTTP client
    assert verify_signature(SECRET, b"{}", signature, now=1_700_000_000)


def test_fence_metrics_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import tokenfence_asgi

    missing(monkeypatch, "prometheus_client", "tokenfence_asgi.ops.metrics")
    with pytest.raises(MissingExtra) as caught:
        tokenfence_asgi.FenceMetrics  # noqa: B018  (the lazy public name)
    names_extra(caught.value, "metrics")


async def test_the_admin_app_serves_no_metrics_without_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """admin_app's documented default: /metrics when prometheus-client is installed."""
    import httpx

    from tokenfence_asgi.web.admin import admin_app

    missing(monkeypatch, "prometheus_client", "tokenfence_asgi.ops.metrics")
    fence = embedded_fence()
    try:
        token = "t" * 32
        app = admin_app(fence, token=token)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            headers = {"Authorization": f"Bearer {token}"}
            assert (await client.get("/metrics", headers=headers)).status_code == 404
        with pytest.raises(MissingExtra) as caught:
            admin_app(fence, token=token, metrics=True)
        names_extra(caught.value, "metrics")
    finally:
        await fence.aclose()


def test_the_report_table_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenfence_asgi.ops.report import build_report, render_table

    report = build_report([], date(2026, 3, 1), date(2026, 3, 31))
    missing(monkeypatch, "rich")
    with pytest.raises(MissingExtra) as caught:
        render_table(report, console=None)
    names_extra(caught.value, "cli")


def test_the_command_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the ``tokenfence`` script runs it: ``from tokenfence_asgi.cli import main``."""
    code = "from tokenfence_asgi.cli import main; sys.exit(main(sys.argv[2:]))"
    result = without(("typer",), code, "plans")
    assert result.returncode == 8, result.stderr  # ExitCode.MISSING_EXTRA
    assert result.stdout == ""
    assert result.stderr == (
        "error: the tokenfence command needs Typer and Rich (not installed): "
        "pip install 'tokenfence-asgi[cli]'\n"
    )
    result = without(
        ("rich",), "import runpy; runpy.run_module('tokenfence_asgi', run_name='__main__')"
    )
    assert result.returncode == 8, result.stderr
    assert "pip install 'tokenfence-asgi[cli]'" in result.stderr


def test_the_commands_app_names_its_extra() -> None:
    code = "from tokenfence_asgi.cli import app"
    result = without(("typer",), code)
    assert result.returncode == 1
    assert "MissingExtra: the tokenfence command needs Typer and Rich" in result.stderr


# -- nothing optional installed ------------------------------------------------------------------

# What each module that needs an extra is allowed to fail on when nothing optional is installed.
NEEDS_AN_EXTRA = (
    "tokenfence_asgi.__main__",  # the command
    "tokenfence_asgi.cli.",
    "tokenfence_asgi.cli_ledger",
    "tokenfence_asgi.ops.metrics",
    "tokenfence_asgi.metrics",
    "tokenfence_asgi.store._embedded",
    "tokenfence_asgi.litellm",
    "tokenfence_asgi.guard.openai",
    "tokenfence_asgi.guard.anthropic",
    "tokenfence_asgi.web.api",  # the HTTP API: the server extra (pydantic)
    "tokenfence_asgi.web.service",
    "tokenfence_asgi.service",
)

IMPORT_ALL = """
import importlib, json, pkgutil, tokenfence_asgi
failed = {}
for info in pkgutil.walk_packages(tokenfence_asgi.__path__, "tokenfence_asgi."):
    if info.name.startswith(tuple(sys.argv[2].split(","))):
        continue
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        failed[info.name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failed))
"""


@pytest.fixture(scope="module")
def core_imports() -> dict[str, str]:
    """Module -> error, for each module that failed to import with nothing optional installed."""
    result = without(OPTIONAL, IMPORT_ALL, ",".join(NEEDS_AN_EXTRA))
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.mark.slow
def test_every_core_module_imports_without_the_extras(core_imports: dict[str, str]) -> None:
    assert core_imports == {}


CORE_USE = """
import asyncio
from tokenfence_asgi import TokenFence, TokenFenceMiddleware, Plan, Limit, MissingExtra, admin_app
from tokenfence_asgi.webhooks import verify_signature, sign_payload
from starlette.applications import Starlette

async def main():
    fence = TokenFence(redis_url=sys.argv[2], prefix="tfextras-core")
    app = Starlette()
    app.add_middleware(TokenFenceMiddleware, fence=fence)
    admin_app(fence, token="t" * 32)
    print((await fence.status("acme")).plan)
    await fence.aclose()

asyncio.run(main())
assert verify_signature("s" * 32, b"{}", sign_payload("s" * 32, b"{}", 1), now=1)
for make in (lambda: TokenFence(), lambda: __import__("tokenfence_asgi").FenceMetrics,
             lambda: __import__("tokenfence_asgi").WebhookSender("https://x.example/", "s" * 32)):
    try:
        make()
    except MissingExtra as exc:
        print(exc.extra)
"""


@pytest.mark.slow
def test_the_core_runs_without_the_extras(redis_url: str) -> None:
    result = without(OPTIONAL, CORE_USE, redis_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["free", "embedded", "metrics", "webhooks"]
