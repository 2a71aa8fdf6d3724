"""The ``tokenfence`` command: every command's output and exit code, bad input included.

Operator commands run against the real Redis of the ``redis_url`` fixture, each test under its
own key prefix, deleted afterwards. An unreachable Redis is a closed loopback port.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tokenfence_asgi.cli import COMMAND_MODULES, app, main
from tokenfence_asgi.cli.options import ExitCode, open_fence, redact
from tokenfence_asgi.config import load_plans
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.ops.simulate import delete_prefix

SCRIPT = Path(sys.executable).with_name("tokenfence")
PLANS_TOML = """\
[plans.team]
limits = [{ window = "1d", max_cost = "10", max_requests = 100, rollover = 0.5 },
          { window = "1mo", max_cost = "200" }]
models = ["gpt-4o*"]
downgrade = { "gpt-4o" = "gpt-4o-mini" }
features = { chat = 0.6, search = 0.2 }
price_per_month = "49"

[plans.free]
limits = [{ window = "1d", max_cost = "0.25" }]
"""


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    """Invoke the command in-process; stdout and stderr are kept apart."""
    env = {"TOKENFENCE_REDIS_URL": "", "TOKENFENCE_PREFIX": "", "TOKENFENCE_CONFIG": "",
           "COLUMNS": "200", **(env or {})}  # fmt: skip
    return CliRunner().invoke(app, list(args), env={k: v or None for k, v in env.items()})


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def operator(redis_url: str, prefix: str) -> Iterator[Any]:
    """Runs an operator command on the test Redis under the test's prefix; cleans up."""

    def invoke(*args: str) -> Any:
        return run(*args, "--redis-url", redis_url, "--prefix", prefix)

    yield invoke
    asyncio.run(delete_prefix(redis_url, prefix))


@pytest.fixture
def plans_file(tmp_path: Path) -> Path:
    path = tmp_path / "plans.toml"
    path.write_text(PLANS_TOML)
    return path


# -- the command itself ----------------------------------------------------------------------


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
        names += [c.name or (c.callback.__name__ if c.callback else "") for c in
                  other.registered_commands]  # fmt: skip
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


@pytest.mark.slow
def test_console_script_and_python_m_run_the_same_command(redis_url: str, prefix: str) -> None:
    assert SCRIPT.exists(), "the console script is installed next to the interpreter"
    env = {**os.environ, "COLUMNS": "100"}
    env.pop("TOKENFENCE_REDIS_URL", None)
    for command in ([str(SCRIPT)], [sys.executable, "-m", "tokenfence_asgi"]):
        listed = subprocess.run([*command, "--help"], capture_output=True, text=True, env=env,
                                timeout=60, check=False)  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        for name in ("demo", "simulate", "status", *registered_elsewhere()):
            assert f" {name} " in listed.stdout
        plans = subprocess.run([*command, "plans", "--json"], capture_output=True, text=True,
                               env=env, timeout=60, check=False)  # fmt: skip
        assert plans.returncode == 0, plans.stderr
        assert [p["name"] for p in json.loads(plans.stdout)] == ["free", "starter", "pro",
                                                                 "enterprise"]  # fmt: skip
    try:
        done = subprocess.run(
            [str(SCRIPT), "set-plan", "acme", "pro", "--prefix", prefix, "--create"],
            capture_output=True, text=True, timeout=60, check=False,
            env={**env, "TOKENFENCE_REDIS_URL": redis_url},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "now on plan 'pro'" in done.stdout
        unknown = subprocess.run(
            [str(SCRIPT), "set-plan", "acme", "gold", "--redis-url", redis_url],
            capture_output=True, text=True, timeout=60, check=False, env=env,
        )  # fmt: skip
        assert unknown.returncode == ExitCode.UNKNOWN_PLAN
        assert "unknown plan 'gold'" in unknown.stderr
        down = subprocess.run(
            [str(SCRIPT), "status", "acme", "--redis-url", f"redis://127.0.0.1:{closed_port()}/0"],
            capture_output=True, text=True, timeout=60, check=False, env=env,
        )  # fmt: skip
        assert down.returncode == ExitCode.STORE_UNAVAILABLE
        assert "cannot reach Redis" in down.stderr
        assert down.stdout == ""
    finally:
        asyncio.run(delete_prefix(redis_url, prefix))


# -- plans -----------------------------------------------------------------------------------


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
    assert data[0]["limits"][0] == {"window": "1d", "kind": "calendar", "rollover": 0.5,
                                    "max_cost": "10.000000", "max_requests": 100}  # fmt: skip
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


SERVICE_TOKEN = "cli-token-0123456789abcdef"
CLOSED_REDIS = "redis://127.0.0.1:1/0"  # never reached: the plan file is read first


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


# -- operator commands -----------------------------------------------------------------------


def test_set_plan_then_status(operator: Any, redis_url: str, prefix: str) -> None:
    result = operator("set-plan", "acme", "pro", "--create")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "tenant 'acme' is now on plan 'pro' (a new tenant)"
    again = operator("set-plan", "acme", "pro")  # known now: no --create needed
    assert again.exit_code == 0, again.output
    assert again.stdout.strip() == "tenant 'acme' is now on plan 'pro'"
    assert again.stderr == ""
    status = operator("status", "acme")
    assert status.exit_code == 0
    assert "acme  plan pro  AI calls enabled" in status.stdout
    assert "$25.00" in status.stdout
    assert "0 / 2,000" in status.stdout
    data = json.loads(operator("status", "acme", "--json").stdout)
    assert data["plan"] == "pro"
    assert [w["window"] for w in data["windows"]] == ["1d", "1mo"]
    assert data["windows"][0]["limit"] == "25.000000"

    async def seen_by_a_fence() -> str:
        fence = TokenFence(redis_url=redis_url, prefix=prefix)
        try:
            return (await fence.status("acme")).plan
        finally:
            await fence.aclose()

    assert asyncio.run(seen_by_a_fence()) == "pro"


def test_status_shows_spend(operator: Any, redis_url: str, prefix: str) -> None:
    async def spend() -> None:
        fence = TokenFence(redis_url=redis_url, prefix=prefix)
        try:
            r = await fence.reserve("acme", "0.30", feature="chat")
            await fence.commit(r, "0.125")
            await fence.reserve("acme", "0.05")  # left open: a hold
        finally:
            await fence.aclose()

    asyncio.run(spend())
    data = json.loads(operator("status", "acme", "--json").stdout)
    day = data["windows"][0]
    assert (day["used"], day["held"], day["remaining"]) == ("0.125000", "0.050000", "0.325000")
    assert data["open_holds"] == 1
    out = operator("status", "acme").stdout
    assert "held now: $0.05 in 1 open hold(s)" in out
    assert "$0.13" in out  # used, in cents
    assert "2 / 50" in out


def test_set_plan_with_a_config_file(operator: Any, plans_file: Path) -> None:
    assert (
        operator("set-plan", "acme", "team", "--config", str(plans_file), "--create").exit_code == 0
    )
    data = json.loads(operator("status", "acme", "--config", str(plans_file), "--json").stdout)
    assert data["plan"] == "team"
    day = data["windows"][0]
    assert (day["limit"], day["carried"]) == ("10.000000", "0.000000")  # a first day carries 0
    # the built-in plans do not have it: said, and the default plan's limits shown
    out = operator("status", "acme").stdout
    assert "plan 'team' is not in the configured plans" in out


def test_status_shows_each_features_use_and_share(
    operator: Any, redis_url: str, prefix: str, plans_file: Path
) -> None:
    """A share refusal is explained by the status: the unused shares kept for other features."""
    from tokenfence_asgi.errors import BudgetExceeded

    async def spend() -> str:
        fence = TokenFence(redis_url=redis_url, prefix=prefix, plans=load_plans(plans_file))
        try:
            await fence.set_plan("acme", "team")
            await fence.commit(await fence.reserve("acme", "2", feature="chat"), "1.25")
            await fence.commit(await fence.reserve("acme", "1", feature="search"), "0.5")
            try:
                await fence.reserve("acme", "3.5", feature="summarize")  # no share of its own
            except BudgetExceeded as exc:
                return exc.reason
            return "admitted"
        finally:
            await fence.aclose()

    # The day's limit is $10 (a first day carries nothing): chat is guaranteed 60% = $6, search
    # 20% = $2, of which $4.75 + $1.50 are unused and kept for them; $1.75 is spent: summarize
    # may use $2.
    assert asyncio.run(spend()) == "share"
    result = operator("status", "acme", "--config", str(plans_file))
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines()]
    rows = {tuple(cells[:2]): cells[2:] for cells in lines if cells[:1] in (["chat"], ["search"])}
    assert rows[("chat", "1d")] == ["$1.25", "$6.00", "60%", "$4.75"]
    assert rows[("search", "1d")] == ["$0.50", "$2.00", "20%", "$1.50"]
    assert rows[("chat", "1mo")] == ["$1.25", "$120.00", "60%", "$118.75"]
    assert "share" in result.stdout
    data = json.loads(operator("status", "acme", "--config", str(plans_file), "--json").stdout)
    assert data["feature_mode"] == "share"
    day = data["windows"][0]
    assert day["features"] == {"chat": "1.250000", "search": "0.500000"}
    assert day["feature_limits"] == {"chat": "6.000000", "search": "2.000000"}


def test_status_shows_feature_caps(operator: Any, tmp_path: Path) -> None:
    path = tmp_path / "plans.toml"
    path.write_text(
        '[plans.capped]\nlimits = [{ window = "1d", max_cost = "10" },'
        ' { window = "1h", max_cost = "1", kind = "sliding" }]\n'
        'features = { chat = 0.25 }\nfeature_mode = "cap"\n[plans.free]\n'
    )
    assert operator("set-plan", "acme", "capped", "--create", "--config", str(path)).exit_code == 0
    out = operator("status", "acme", "--config", str(path)).stdout
    assert "feature caps (no feature spends past its cap)" in one_line(out)
    assert "chat 1d $0.00 $2.50 25% $2.50" in one_line(out)
    assert "chat 1h" not in one_line(out)  # sliding limits have no feature rule
    data = json.loads(operator("status", "acme", "--config", str(path), "--json").stdout)
    assert data["feature_mode"] == "cap"
    assert data["windows"][0]["feature_limits"] == {"chat": "2.500000"}
    assert "feature_limits" not in data["windows"][1]
    assert "feature" not in operator("status", "acme").stdout  # the built-in plans: none


def test_unknown_plan_exits_4(operator: Any, plans_file: Path) -> None:
    result = operator("set-plan", "acme", "platinum")
    assert result.exit_code == ExitCode.UNKNOWN_PLAN
    assert "unknown plan 'platinum'; configured plans: enterprise, free, pro, starter" in (
        result.stderr
    )
    result = operator("set-plan", "acme", "pro", "--config", str(plans_file))
    assert result.exit_code == ExitCode.UNKNOWN_PLAN
    assert "configured plans: free, team" in result.stderr


def app_fence(redis_url: str, prefix: str) -> TokenFence:
    return TokenFence(redis_url=redis_url, prefix=prefix)


def known(redis_url: str, prefix: str, tenant: str) -> bool:
    async def read() -> bool:
        fence = app_fence(redis_url, prefix)
        try:
            return await fence.has_tenant(tenant)
        finally:
            await fence.aclose()

    return asyncio.run(read())


def app_reserves(redis_url: str, prefix: str, tenant: str) -> None:
    """The app's own fence serves a call of ``tenant``: the tenant is known under ``prefix``."""

    async def call() -> None:
        fence = app_fence(redis_url, prefix)
        try:
            await fence.release(await fence.reserve(tenant, "0.01"))
        finally:
            await fence.aclose()

    asyncio.run(call())


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_set_plan_under_a_prefix_with_no_tenants_is_refused_with_a_hint(
    operator: Any, redis_url: str, prefix: str
) -> None:
    """The app runs under one prefix, the operator forgets --prefix: nothing changes silently."""
    app_reserves(redis_url, prefix, "acme")
    empty = prefix + "-other"
    result = run("set-plan", "acme", "pro", "--redis-url", redis_url, "--prefix", empty)
    assert result.exit_code == ExitCode.UNKNOWN_TENANT
    message = one_line(result.stderr)
    assert f"no tenant 'acme' under prefix '{empty}'" in message
    assert f"prefix '{empty}' holds no tenants at all" in message
    assert "pass the app's --prefix" in message
    assert "--create" in message
    assert not known(redis_url, empty, "acme")
    assert operator("set-plan", "acme", "pro").exit_code == 0  # the right prefix: known


def test_create_under_an_empty_prefix_warns(redis_url: str, prefix: str) -> None:
    try:
        options = ("--redis-url", redis_url, "--prefix", prefix)
        result = run("set-plan", "acme", "pro", "--create", *options)
        assert result.exit_code == 0, result.output
        assert "(a new tenant)" in result.stdout
        assert f"warning: prefix '{prefix}' held no tenants" in one_line(result.stderr)
        assert known(redis_url, prefix, "acme")
    finally:
        asyncio.run(delete_prefix(redis_url, prefix))


def test_kill_of_an_unknown_tenant_is_refused_as_the_admin_api_does(
    operator: Any, redis_url: str, prefix: str
) -> None:
    app_reserves(redis_url, prefix, "acme")
    for args in (
        ("kill", "acmee"),
        ("kill", "acmee", "--feature", "chat"),
        ("revive", "acmee"),
        ("status", "acmee"),
        ("status", "acmee", "--json"),
    ):
        result = operator(*args)
        assert result.exit_code == ExitCode.UNKNOWN_TENANT, (args, result.output)
        message = one_line(result.stderr)
        assert f"no tenant 'acmee' under prefix '{prefix}'" in message
        assert "holds no tenants" not in message  # the prefix is in use: a typo
        assert result.stdout == ""
    assert "--create" in operator("kill", "acmee").stderr
    assert "--create" not in operator("revive", "acmee").stderr
    assert not known(redis_url, prefix, "acmee")
    assert operator("kill", "acme").exit_code == 0  # a known tenant
    result = operator("kill", "newcomer", "--create")  # stop a tenant before its first call
    assert result.exit_code == 0, result.output
    assert known(redis_url, prefix, "newcomer")


def test_kill_all_under_an_empty_prefix_warns(redis_url: str, prefix: str) -> None:
    try:
        result = run("kill", "--all", "--redis-url", redis_url, "--prefix", prefix)
        assert result.exit_code == 0, result.output
        assert f"warning: prefix '{prefix}' holds no tenants" in one_line(result.stderr)
        assert run("revive", "--all", "--redis-url", redis_url, "--prefix", prefix).exit_code == 0
    finally:
        asyncio.run(delete_prefix(redis_url, prefix))


def test_unknown_plan_without_config_hints_at_config(operator: Any, plans_file: Path) -> None:
    result = operator("set-plan", "acme", "platinum")
    assert result.exit_code == ExitCode.UNKNOWN_PLAN
    assert "pass the app's plan file with --config" in one_line(result.stderr)
    result = operator("set-plan", "acme", "platinum", "--config", str(plans_file))
    assert result.exit_code == ExitCode.UNKNOWN_PLAN
    assert "--config" not in result.stderr


def test_report_under_an_empty_prefix_warns(redis_url: str, prefix: str) -> None:
    result = run("report", "--redis-url", redis_url, "--prefix", prefix)
    assert result.exit_code == 0, result.output
    assert f"warning: prefix '{prefix}' holds no tenants" in one_line(result.stderr)


@pytest.mark.parametrize("tenant", ["", "a\x01b", "x" * 201])
def test_bad_tenant_id_exits_6(operator: Any, tenant: str) -> None:
    for args in (("status", tenant), ("set-plan", tenant, "pro"), ("kill", tenant)):
        result = operator(*args)
        assert result.exit_code == ExitCode.INVALID_ID, (args, result.output)
        assert "tenant_id" in result.stderr


def test_bad_feature_id_exits_6(operator: Any) -> None:
    result = operator("kill", "acme", "--feature", "")
    assert result.exit_code == ExitCode.INVALID_ID
    assert "feature must not be empty" in result.stderr


def test_kill_and_revive_a_tenant_and_a_feature(operator: Any, redis_url: str, prefix: str) -> None:
    app_reserves(redis_url, prefix, "acme")
    killed = operator("kill", "acme")
    assert killed.exit_code == 0
    assert killed.stdout.strip() == "AI calls are now refused for tenant 'acme'"
    assert json.loads(operator("status", "acme", "--json").stdout)["killed"] is True
    assert "KILLED" in operator("status", "acme").stdout
    assert (
        operator("revive", "acme").stdout.strip() == "AI calls are allowed again for tenant 'acme'"
    )
    assert json.loads(operator("status", "acme", "--json").stdout)["killed"] is False

    result = operator("kill", "acme", "--feature", "document_analysis")
    assert result.stdout.strip() == (
        "AI calls are now refused for feature 'document_analysis' of tenant 'acme'"
    )
    data = json.loads(operator("status", "acme", "--json").stdout)
    assert (data["killed"], data["killed_features"]) == (False, ["document_analysis"])
    assert "features switched off: document_analysis" in operator("status", "acme").stdout
    operator("revive", "acme", "--feature", "document_analysis")
    assert json.loads(operator("status", "acme", "--json").stdout)["killed_features"] == []


def test_kill_all_is_the_global_switch(operator: Any, redis_url: str, prefix: str) -> None:
    assert operator("set-plan", "anyone", "free", "--create").exit_code == 0
    result = operator("kill", "--all")
    assert result.exit_code == 0
    assert "refused for every tenant (every instance sees it within" in result.stdout
    assert json.loads(operator("status", "anyone", "--json").stdout)["killed"] is True
    assert operator("revive", "--all").exit_code == 0
    assert json.loads(operator("status", "anyone", "--json").stdout)["killed"] is False


def test_kill_needs_a_tenant_or_all(operator: Any) -> None:
    for command in ("kill", "revive"):
        result = operator(command)
        assert result.exit_code == ExitCode.USAGE
        assert "name a TENANT, or pass --all" in result.stderr
        result = operator(command, "acme", "--all")
        assert result.exit_code == ExitCode.USAGE
        assert "not both" in result.stderr


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
    for args in (("status", "acme"), ("set-plan", "acme", "pro"), ("kill", "--all"),
                 ("simulate", "--days", "1", "--tenants", "2")):  # fmt: skip
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


# -- simulate --------------------------------------------------------------------------------


def test_simulate_prints_the_table_and_the_comparison() -> None:
    result = run("simulate", "--tenants", "12", "--days", "4", "--seed", "3")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Simulating 12 tenants for 4 days on the embedded store, seed 3" in out
    header = "plan       tenants requests served refused graded     used spend   fence"
    assert header in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split() and line.split()[0] in ("free", "starter", "pro", "enterprise",
                                                    "power", "total")}  # fmt: skip
    assert rows["total"][1] == "12"
    assert rows["power"][1:3] == ["user", "1"]
    assert "The power user, tenant-" in out
    assert "Without tokenfence the bill would have been $" in out
    assert "and other tenants lost" in out
    # the same seed, the same output (but for the run time)
    again = run("simulate", "--tenants", "12", "--days", "4", "--seed", "3").stdout
    assert again.splitlines()[:-1] == out.splitlines()[:-1]


def test_simulate_with_a_config_file(plans_file: Path) -> None:
    result = run("simulate", "--tenants", "6", "--days", "2", "--config", str(plans_file),
                 "--power-plan", "team")  # fmt: skip
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
    result = run("simulate", "--tenants", "5", "--days", "2", "--redis-url", redis_url,
                 "--prefix", prefix)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert asyncio.run(delete_prefix(redis_url, prefix)) == 0


def test_simulate_keep_leaves_the_data_and_says_where(redis_url: str, prefix: str) -> None:
    try:
        result = run("simulate", "--tenants", "5", "--days", "2", "--redis-url", redis_url,
                     "--prefix", prefix, "--keep")  # fmt: skip
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


def test_the_readme_plan_file_example_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "plans.toml"
    path.write_text(example)
    result = run("plans", "--config", str(path))
    assert result.exit_code == 0, result.output
    assert "$10.00 / day, rollover 50%; $0.50 / min sliding; $200.00 / month" in result.stdout
