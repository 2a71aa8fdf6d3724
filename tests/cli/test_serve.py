"""``tokenfence serve``: options, refusals, and the app its workers build (uvicorn is stubbed)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from tokenfence_asgi.cli import serve

TOKEN = "cli-token-0123456789abcdef"
PLANS_TOML = """
[plans.tiny]
limits = [{ window = "1d", max_cost = "0.05" }]

[plans.big]
limits = [{ window = "1d", max_cost = "100" }]
"""


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """uvicorn.run replaced by a recorder; the environment the workers would get is restored."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(serve, "_run", lambda **options: calls.append(options))
    for name in ("TOKENFENCE_SERVICE_TOKEN", "TOKENFENCE_REDIS_URL", "TOKENFENCE_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    before = os.environ.get(serve._CONFIG_ENV)
    try:
        yield calls
    finally:
        if before is None:
            os.environ.pop(serve._CONFIG_ENV, None)
        else:
            os.environ[serve._CONFIG_ENV] = before


def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """The main CLI, as another module builds it."""

    serve.register(app)
    return app


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli(), ["serve", *args], env=env)


def worker_config() -> dict[str, Any]:
    return dict(json.loads(os.environ[serve._CONFIG_ENV]))


def test_help_lists_the_options() -> None:
    result = CliRunner().invoke(cli(), ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in (
        "--host",
        "--port",
        "--workers",
        "--redis-url",
        "--config",
        "--token",
        "--prefix",
        "--signing-key",
        "--default-plan",
        "TOKENFENCE_SERVICE_TOKEN",
        "TOKENFENCE_REDIS_URL",
    ):
        assert option in result.output


def test_defaults_serve_on_loopback(runs: list[dict[str, Any]]) -> None:
    result = invoke("--token", TOKEN)
    assert result.exit_code == 0, result.output
    assert runs == [
        {
            "host": "127.0.0.1",
            "port": 8787,
            "workers": 1,
            "log_level": "info",
            "lifespan": "on",
            "access_log": False,
            "server_header": False,
            "proxy_headers": False,
        }
    ]
    config = worker_config()
    assert {k: v for k, v in config.items() if k != "signing_key"} == {
        "token": TOKEN,
        "redis_url": None,
        "config": None,
        "default_plan": "free",
        "prefix": "tf",
    }
    assert len(config["signing_key"]) >= 32  # random, and the same for every worker


def test_options_and_environment(runs: list[dict[str, Any]], tmp_path: Path) -> None:
    plans = tmp_path / "plans.toml"
    plans.write_text(PLANS_TOML)
    result = invoke(
        "--host",
        "0.0.0.0",
        "--port",
        "9000",
        "--workers",
        "3",
        "--config",
        str(plans),
        "--prefix",
        "svc",
        "--default-plan",
        "big",
        "--log-level",
        "warning",
        env={
            "TOKENFENCE_SERVICE_TOKEN": TOKEN,
            "TOKENFENCE_REDIS_URL": "redis://r:6379/1",
            "TOKENFENCE_SIGNING_KEY": "k" * 20,
        },
    )
    assert result.exit_code == 0, result.output
    assert (runs[0]["host"], runs[0]["port"], runs[0]["workers"]) == ("0.0.0.0", 9000, 3)
    assert worker_config() == {
        "token": TOKEN,
        "redis_url": "redis://r:6379/1",
        "config": str(plans.resolve()),
        "default_plan": "big",
        "prefix": "svc",
        "signing_key": "k" * 20,
    }


def test_a_builtin_default_plan(runs: list[dict[str, Any]]) -> None:
    assert invoke("--token", TOKEN, "--default-plan", "starter").exit_code == 0
    assert worker_config()["default_plan"] == "starter"


def test_the_default_plan_is_the_files_own(runs: list[dict[str, Any]], tmp_path: Path) -> None:
    """The library's rule (``default_plan_for``): --default-plan, else the file's
    ``default_plan``, else ``free``; never the file's first plan by accident."""
    plans = tmp_path / "plans.toml"
    plans.write_text('default_plan = "big"\n' + PLANS_TOML)
    assert invoke("--token", TOKEN, "--config", str(plans)).exit_code == 0
    assert worker_config()["default_plan"] == "big"
    assert invoke("--token", TOKEN, "--config", str(plans), "--default-plan", "tiny").exit_code == 0
    assert worker_config()["default_plan"] == "tiny"
    with_free = tmp_path / "free.toml"
    free = '[plans.free]\nlimits = [{ window = "1d", max_cost = "1" }]\n'
    with_free.write_text(PLANS_TOML + free)
    assert invoke("--token", TOKEN, "--config", str(with_free)).exit_code == 0
    assert worker_config()["default_plan"] == "free"


def test_a_file_without_free_or_default_plan_is_refused(
    runs: list[dict[str, Any]], tmp_path: Path
) -> None:
    plans = tmp_path / "plans.toml"
    plans.write_text(PLANS_TOML)
    result = invoke("--token", TOKEN, "--config", str(plans))
    assert result.exit_code == 7  # a bad plan file, as for every tokenfence command
    assert f"{plans}: default_plan: not set, and no plan is named 'free'" in result.output
    assert "--default-plan" in result.output
    assert runs == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "a service token is required: --token or TOKENFENCE_SERVICE_TOKEN"),
        (("--token", "short"), "16-4096 printable ASCII characters"),
        (
            ("--token", TOKEN, "--workers", "2"),
            "--workers 2 needs --redis-url: the embedded store lives inside one process",
        ),
        (("--token", TOKEN, "--workers", "0"), "--workers must be at least 1"),
        (("--token", TOKEN, "--port", "70000"), "--port must be in [0, 65535]"),
        (("--token", TOKEN, "--prefix", "bad prefix"), "prefix must match"),
        (("--token", TOKEN, "--signing-key", "short"), "--signing-key must be at least 16"),
    ],
)
def test_refusals_exit_2_before_serving(
    runs: list[dict[str, Any]], args: tuple[str, ...], message: str
) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert runs == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--config", "/nonexistent/plans.toml"), 7, "cannot read plan file"),
        (("--default-plan", "gold"), 4, "--default-plan: unknown plan 'gold'"),
    ],
)
def test_plan_errors_exit_as_every_command_does(
    runs: list[dict[str, Any]], args: tuple[str, ...], code: int, message: str
) -> None:
    """A bad plan file is 7, an unknown plan 4 (the ``tokenfence`` command's exit codes)."""
    result = invoke("--token", TOKEN, *args)
    assert result.exit_code == code
    assert message in result.output
    assert runs == []


def test_several_workers_with_redis_are_fine(runs: list[dict[str, Any]]) -> None:
    result = invoke("--token", TOKEN, "--workers", "4", "--redis-url", "redis://127.0.0.1:6379")
    assert result.exit_code == 0, result.output
    assert runs[0]["workers"] == 4


async def test_the_workers_app_serves_the_configured_plans(
    runs: list[dict[str, Any]], tmp_path: Path
) -> None:
    plans = tmp_path / "plans.toml"
    plans.write_text('default_plan = "tiny"\n' + PLANS_TOML)
    assert invoke("--token", TOKEN, "--config", str(plans)).exit_code == 0
    app = serve._serve_app()  # what each uvicorn worker builds
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://w") as c,
    ):
        body = {"tenant": "acme", "candidates": [{"model": "m", "estimate": "0.04"}]}
        held = await c.post("/reserve", json=body, headers=auth)
        assert (held.status_code, held.json()["plan"]) == (200, "tiny")
        refused = await c.post("/reserve", json=body, headers=auth)
        assert (refused.status_code, refused.json()["limit"]) == (402, "0.050000")
        assert (await c.post("/reserve", json=body)).status_code == 401
