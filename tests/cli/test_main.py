"""The ``tokenfence`` command itself: its commands, exit codes, URLs and logs, for every command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from tests.cli.commands import CLOSED_REDIS, SCRIPT, closed_port, run
from tokenfence_asgi.cli import COMMAND_MODULES, main
from tokenfence_asgi.cli.options import ExitCode, redact
from tokenfence_asgi.ops.simulate import delete_prefix


def test_help_lists_every_command() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for command in ("demo", "simulate", "status", "set-plan", "kill", "revive", "plans"):
        assert command in result.stdout


def test_no_command_shows_the_help_as_a_usage_error() -> None:
    result = run()
    assert result.exit_code == ExitCode.USAGE
    assert "Usage" in result.output


def test_main_returns_the_exit_code_instead_of_exiting() -> None:
    assert main(["plans"]) == 0
    assert main(["set-plan", "acme", "pro"]) == ExitCode.USAGE  # no Redis URL


def test_unknown_option_is_a_usage_error() -> None:
    result = run("plans", "--colour")
    assert result.exit_code == ExitCode.USAGE
    assert "No such option" in result.output


def registered_elsewhere() -> list[str]:
    """The commands the modules in COMMAND_MODULES add (report, export, serve)."""
    names = []
    for module in COMMAND_MODULES:
        other = typer.Typer()
        module.register(other)
        names += [
            c.name or (c.callback.__name__ if c.callback else "") for c in other.registered_commands
        ]
    return names


def test_commands_of_other_modules_are_listed() -> None:
    names = registered_elsewhere()
    assert {"report", "export", "serve"} <= set(names)  # cli_ledger and service
    listed = run("--help").stdout
    for name in names:
        assert f" {name} " in listed
        assert run(name, "--help").exit_code == 0


def test_redact_hides_the_password() -> None:
    assert redact("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("redis://:s3cret@host/0") == "redis://:***@host/0"
    assert redact("redis://host:6379/0") == "redis://host:6379/0"


def command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``args`` (the console script or ``python -m``) as a process."""
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.slow
def test_console_script_and_python_m_run_the_same_command(redis_url: str, prefix: str) -> None:
    assert SCRIPT.exists(), "the console script is installed next to the interpreter"
    env = {**os.environ, "COLUMNS": "100"}
    env.pop("TOKENFENCE_REDIS_URL", None)
    for tokenfence in ([str(SCRIPT)], [sys.executable, "-m", "tokenfence_asgi"]):
        listed = command(*tokenfence, "--help", env=env)
        assert listed.returncode == 0, listed.stderr
        for name in ("demo", "simulate", "status", *registered_elsewhere()):
            assert f" {name} " in listed.stdout
        plans = command(*tokenfence, "plans", "--json", env=env)
        assert plans.returncode == 0, plans.stderr
        names = [p["name"] for p in json.loads(plans.stdout)]
        assert names == ["free", "starter", "pro", "enterprise"]
    try:
        with_url = {**env, "TOKENFENCE_REDIS_URL": redis_url}
        done = command(
            str(SCRIPT), "set-plan", "acme", "pro", "--prefix", prefix, "--create", env=with_url
        )
        assert done.returncode == 0, done.stderr
        assert "now on plan 'pro'" in done.stdout
        unknown = command(
            str(SCRIPT), "set-plan", "acme", "gold", "--redis-url", redis_url, env=env
        )
        assert unknown.returncode == ExitCode.UNKNOWN_PLAN
        assert "unknown plan 'gold'" in unknown.stderr
        closed = f"redis://127.0.0.1:{closed_port()}/0"
        down = command(str(SCRIPT), "status", "acme", "--redis-url", closed, env=env)
        assert down.returncode == ExitCode.STORE_UNAVAILABLE
        assert "cannot reach Redis" in down.stderr
        assert down.stdout == ""
    finally:
        asyncio.run(delete_prefix(redis_url, prefix))


SERVICE_TOKEN = "cli-token-0123456789abcdef"


@pytest.mark.parametrize(
    "command",
    [
        ("plans",),
        ("simulate", "--days", "1"),
        ("status", "acme", "--redis-url", CLOSED_REDIS),
        ("set-plan", "acme", "free", "--redis-url", CLOSED_REDIS),
        ("kill", "acme", "--redis-url", CLOSED_REDIS),
        ("report", "--redis-url", CLOSED_REDIS),
        ("serve", "--token", SERVICE_TOKEN),
    ],
)
def test_every_command_exits_7_on_a_bad_plan_file(tmp_path: Path, command: tuple[str, ...]) -> None:
    path = tmp_path / "plans.toml"
    path.write_text("[plans.x\n")
    result = run(*command, "--config", str(path))
    assert result.exit_code == ExitCode.BAD_CONFIG, result.output
    assert "invalid TOML" in result.stderr


def test_serve_exits_as_the_other_commands_on_plan_errors(tmp_path: Path) -> None:
    """An unknown --default-plan is an unknown plan (4); a file without a default plan is a
    bad plan file (7), as for every other command."""
    result = run("serve", "--token", SERVICE_TOKEN, "--default-plan", "gold")
    assert result.exit_code == ExitCode.UNKNOWN_PLAN, result.output
    assert "unknown plan 'gold'" in result.stderr
    path = tmp_path / "plans.toml"
    path.write_text('[plans.team]\nlimits = [{ window = "1d", max_cost = "10" }]\n')
    result = run("serve", "--token", SERVICE_TOKEN, "--config", str(path))
    assert result.exit_code == ExitCode.BAD_CONFIG, result.output
    assert "no plan is named 'free'" in result.stderr


@pytest.mark.parametrize(
    "args",
    [("status", "acme"), ("set-plan", "acme", "pro"), ("kill", "acme"), ("revive", "--all")],
)
def test_operator_commands_refuse_without_a_redis_url(args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.exit_code == ExitCode.USAGE
    assert "pass --redis-url" in result.stderr
    assert "embedded store lives inside one process" in result.stderr


def test_redis_url_from_the_environment(redis_url: str, prefix: str) -> None:
    env = {"TOKENFENCE_REDIS_URL": redis_url, "TOKENFENCE_PREFIX": prefix}
    try:
        assert run("set-plan", "acme", "starter", "--create", env=env).exit_code == 0
        data = json.loads(run("status", "acme", "--json", env=env).stdout)
        assert data["plan"] == "starter"
    finally:
        asyncio.run(delete_prefix(redis_url, prefix))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost:6379", "not a Redis URL: 'http://localhost:6379'"),
        ("localhost:6379", "not a Redis URL"),
        ("redis://localhost:port/0", "Port could not be cast to integer"),
        ("redis://:hunter2@localhost:port/0", "'redis://:***@localhost:port/0'"),
    ],
)
def test_bad_redis_url_exits_3(url: str, message: str) -> None:
    for args in (("status", "acme"), ("simulate", "--days", "1"), ("demo", "--once")):
        result = run(*args, "--redis-url", url)
        assert result.exit_code == ExitCode.BAD_URL, (args, result.output)
        assert message in result.stderr
        assert "hunter2" not in result.output


def test_unreachable_redis_exits_5() -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    simulate = ("simulate", "--days", "1", "--tenants", "2")
    for args in (("status", "acme"), ("set-plan", "acme", "pro"), ("kill", "--all"), simulate):
        result = run(*args, "--redis-url", url)
        assert result.exit_code == ExitCode.STORE_UNAVAILABLE, (args, result.output)
        assert f"cannot reach Redis at {url}" in result.stderr


def test_bad_prefix_is_a_usage_error(redis_url: str) -> None:
    result = run("status", "acme", "--redis-url", redis_url, "--prefix", "a:b")
    assert result.exit_code == ExitCode.USAGE
    assert "1-32 of [A-Za-z0-9_.-]" in result.output


def test_logs_are_quiet_and_restored() -> None:
    import structlog

    before = structlog.get_config()
    assert run("simulate", "--days", "1", "--tenants", "2").exit_code == 0
    assert structlog.get_config() == before


@pytest.mark.parametrize("module", ["tokenfence_asgi.cli.ledger", "tokenfence_asgi.cli.serve"])
def test_a_command_module_runs_on_its_own_without_a_warning(module: str) -> None:
    """``python -m tokenfence_asgi.cli.ledger``: the package does not import the module first
    (runpy would warn that it found it in ``sys.modules`` already)."""
    done = command(
        sys.executable, "-W", "error::RuntimeWarning", "-m", module, "--help", env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout
    assert "RuntimeWarning" not in done.stderr
