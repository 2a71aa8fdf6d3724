"""``tokenfence plans`` and the plan files every command reads (``--config``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.cli.commands import run
from tokenfence_asgi.cli.options import ExitCode, open_fence
from tokenfence_asgi.config import load_plans
from tokenfence_asgi.engine.fence import TokenFence


def test_plans_shows_the_built_in_plans() -> None:
    result = run("plans")
    assert result.exit_code == 0
    out = result.stdout
    assert "4 built-in plans; tenants without a plan are on 'free'" in out
    assert "$0.50 + 50 req / day; $15.00 / month" in out
    assert "gpt-4o -> gpt-4o-mini" in out
    assert "$100.00 + 10,000 req / day; $3,000.00 / month" in out


def test_plans_from_a_config_file(plans_file: Path) -> None:
    result = run("plans", "--config", str(plans_file))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"2 plans from {plans_file}" in out
    assert "$10.00 + 100 req / day, rollover 50%; $200.00 / month" in out
    assert "chat 60%, search 20% (shares)" in out
    assert "$49.00 a month" in out
    data = json.loads(run("plans", "--config", str(plans_file), "--json").stdout)
    assert data[0]["name"] == "team"
    assert data[0]["limits"][0] == {
        "window": "1d",
        "kind": "calendar",
        "rollover": 0.5,
        "max_cost": "10.000000",
        "max_requests": 100,
    }
    assert data[0]["price_per_month"] == "49.00"


def test_plans_config_from_the_environment(plans_file: Path) -> None:
    result = run("plans", "--json", env={"TOKENFENCE_CONFIG": str(plans_file)})
    assert [p["name"] for p in json.loads(result.stdout)] == ["team", "free"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read plan file"),
        ("[plans.x\n", "invalid TOML"),
        ('[plans.x]\nlimits = [{ window = "2d", max_cost = "1" }]\n', "plans.x.limits[0].window"),
        ("[plans.x]\ncolour = 1\n", "unknown key 'colour'"),
        ("[plans.x]\nmax_input_chars = " + "9" * 5000, "an integer of more than 4,300 digits"),
        ("[plans.x]\nmodels = " + "[" * 2000 + "]" * 2000, "nested too deeply"),
    ],
)
def test_a_bad_plan_file_exits_7(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "plans.toml"
    if content is not None:
        path.write_text(content)
    result = run("plans", "--config", str(path))
    assert result.exit_code == ExitCode.BAD_CONFIG
    assert f"error: {path}: " in result.stderr
    assert message in result.stderr
    assert result.stdout == ""


TEAM_AND_PRO = """\
[plans.team]
limits = [{ window = "1d", max_cost = "10" }]

[plans.pro]
limits = [{ window = "1d", max_cost = "25" }]
"""


def test_the_plan_file_names_the_default_plan(tmp_path: Path, redis_url: str) -> None:
    path = tmp_path / "plans.toml"
    path.write_text('default_plan = "pro"\n' + TEAM_AND_PRO)
    result = run("plans", "--config", str(path))
    assert result.exit_code == 0, result.output
    assert "tenants without a plan are on 'pro'" in result.stdout
    assert "\npro (default)" in result.stdout
    fence = open_fence(redis_url, "tf", path)
    assert fence.default_plan == "pro"  # what the app's TokenFence(plans=load_plans(...)) uses
    asyncio.run(fence.aclose())
    assert TokenFence(plans=load_plans(path)).default_plan == "pro"


def test_without_free_or_default_plan_the_command_says_so(tmp_path: Path, redis_url: str) -> None:
    path = tmp_path / "plans.toml"
    path.write_text(TEAM_AND_PRO)  # the command used to pick 'team', the library 'free'
    expected = f"error: {path}: default_plan: not set, and no plan is named 'free'"
    for args in (
        ("plans",),
        ("plans", "--json"),
        ("set-plan", "acme", "team", "--redis-url", redis_url),
    ):
        result = run(*args, "--config", str(path))
        assert result.exit_code == ExitCode.BAD_CONFIG, (args, result.output)
        assert expected in " ".join(result.stderr.split())
        assert 'add default_plan = "..."' in result.stderr


def test_the_readme_plan_file_example_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "plans.toml"
    path.write_text(example)
    result = run("plans", "--config", str(path))
    assert result.exit_code == 0, result.output
    assert "$10.00 / day, rollover 50%; $0.50 / min sliding; $200.00 / month" in result.stdout
