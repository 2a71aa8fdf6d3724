"""``tokenfence simulate`` and ``tokenfence demo`` as commands (the demo app: test_demo.py)."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest

from tests.cli.commands import closed_port, run
from tokenfence_asgi.cli.options import ExitCode
from tokenfence_asgi.ops.simulate import delete_prefix

# -- simulate --------------------------------------------------------------------------------


def test_simulate_prints_the_table_and_the_comparison() -> None:
    result = run("simulate", "--tenants", "12", "--days", "4", "--seed", "3")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Simulating 12 tenants for 4 days on the embedded store, seed 3" in out
    header = "plan       tenants requests served refused graded     used spend   fence"
    assert header in out
    labels = ("free", "starter", "pro", "enterprise", "power", "total")
    cells = [line.split() for line in out.splitlines()]
    rows = {row[0]: row for row in cells if row and row[0] in labels}
    assert rows["total"][1] == "12"
    assert rows["power"][1:3] == ["user", "1"]
    assert "The power user, tenant-" in out
    assert "Without tokenfence the bill would have been $" in out
    assert "and other tenants lost" in out
    # the same seed, the same output (but for the run time)
    again = run("simulate", "--tenants", "12", "--days", "4", "--seed", "3").stdout
    assert again.splitlines()[:-1] == out.splitlines()[:-1]


def test_simulate_with_a_config_file(plans_file: Path) -> None:
    small = ("--tenants", "6", "--days", "2")
    result = run("simulate", *small, "--config", str(plans_file), "--power-plan", "team")
    assert result.exit_code == 0, result.output
    assert f"plans: the plans of {plans_file}" in result.stdout
    assert "(team)" in result.stdout


def test_simulate_unknown_power_plan_exits_4() -> None:
    result = run("simulate", "--days", "1", "--power-plan", "gold")
    assert result.exit_code == ExitCode.UNKNOWN_PLAN
    assert "unknown plan 'gold'" in result.stderr


def test_simulate_rejects_out_of_range_numbers() -> None:
    assert run("simulate", "--tenants", "0").exit_code == ExitCode.USAGE
    assert run("simulate", "--days", "400").exit_code == ExitCode.USAGE


def test_simulate_on_redis_deletes_its_keys(redis_url: str, prefix: str) -> None:
    result = run(
        "simulate", "--tenants", "5", "--days", "2", "--redis-url", redis_url, "--prefix", prefix
    )
    assert result.exit_code == 0, result.output
    assert asyncio.run(delete_prefix(redis_url, prefix)) == 0


def test_simulate_keep_leaves_the_data_and_says_where(redis_url: str, prefix: str) -> None:
    try:
        on_redis = ("--redis-url", redis_url, "--prefix", prefix)
        result = run("simulate", "--tenants", "5", "--days", "2", *on_redis, "--keep")
        assert result.exit_code == 0, result.output
        assert f"under prefix {prefix!r}" in result.stdout
    finally:
        assert asyncio.run(delete_prefix(redis_url, prefix)) > 0


def test_simulate_keep_on_the_embedded_store_says_nothing_is_kept() -> None:
    result = run("simulate", "--tenants", "3", "--days", "1", "--keep")
    assert result.exit_code == 0
    assert "nothing is kept" in result.stdout


# -- demo ------------------------------------------------------------------------------------


def test_demo_without_its_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)  # not installed
    for name in [m for m in sys.modules if m.startswith("tokenfence_asgi.cli.demo")]:
        monkeypatch.delitem(sys.modules, name)  # imported again, without FastAPI
    result = run("demo", "--once")
    assert result.exit_code == ExitCode.MISSING_EXTRA
    assert "(fastapi is missing): pip install 'tokenfence-asgi[demo]'" in result.stderr


def test_demo_port_in_use_is_a_usage_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("demo", "--once", "--port", str(port))
    assert result.exit_code == ExitCode.USAGE
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_demo_unreachable_redis_exits_5() -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    result = run("demo", "--once", "--port", "0", "--redis-url", url)
    assert result.exit_code == ExitCode.STORE_UNAVAILABLE
    assert "cannot reach Redis" in result.stderr
