"""``tokenfence status``, ``set-plan``, ``kill`` and ``revive`` on the real Redis of the
``redis_url`` fixture, each test under its own key prefix (deleted afterwards).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli.commands import run
from tokenfence_asgi.cli.options import ExitCode
from tokenfence_asgi.config import load_plans
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.ops.simulate import delete_prefix


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
