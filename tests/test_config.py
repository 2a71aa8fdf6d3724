"""Tests for tokenfence_asgi.config: Limit, Plan, the built-in plans and TOML plan files."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import pickle
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tokenfence_asgi.config import (
    BUILTIN_PLANS,
    DEFAULT_FEATURE_WEIGHTS,
    ENTERPRISE,
    FEATURE_MODES,
    FREE,
    PRO,
    STARTER,
    WINDOW_SECONDS,
    WINDOWS,
    Limit,
    Plan,
    default_plan_for,
    load_plans,
    plans_from_mapping,
)
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import ConfigError, InvalidAmount, UnknownPlan

# --- Limit -------------------------------------------------------------------------------------


def test_windows() -> None:
    assert WINDOWS == ("1m", "1h", "1d", "7d", "1mo")
    assert dict(WINDOW_SECONDS) == {
        "1m": 60,
        "1h": 3600,
        "1d": 86400,
        "7d": 7 * 86400,
        "1mo": 31 * 86400,
    }
    assert FEATURE_MODES == ("share", "cap")


@pytest.mark.parametrize(
    ("max_cost", "dollars", "nanos"),
    [
        ("0.50", Decimal("0.50"), 500_000_000),
        (Decimal("5"), Decimal(5), 5_000_000_000),
        (5, Decimal(5), 5_000_000_000),
        (0.1, Decimal("0.1"), 100_000_000),
        (" 150 ", Decimal(150), 150_000_000_000),
        ("0.0000000015", Decimal("0.000000002"), 2),  # half-up to the nano-dollar
        ("4000000", Decimal(4_000_000), 4_000_000 * 10**9),
    ],
)
def test_limit_normalizes_max_cost(max_cost: Any, dollars: Decimal, nanos: int) -> None:
    limit = Limit("1d", max_cost=max_cost)
    assert limit.max_cost == dollars
    assert isinstance(limit.max_cost, Decimal)
    assert limit.max_cost_nanos == nanos
    assert limit.max_requests is None
    assert (limit.kind, limit.rollover) == ("calendar", 0.0)


def test_limit_stores_a_plain_decimal() -> None:
    assert str(Limit("1d", max_cost="100.000").max_cost) == "100"
    assert str(Limit("1d", max_cost="0.50").max_cost) == "0.5"


def test_limit_with_requests_only_and_every_option() -> None:
    limit = Limit("1m", max_requests=10, kind="sliding")
    assert (limit.window, limit.max_cost, limit.max_cost_nanos) == ("1m", None, None)
    assert (limit.max_requests, limit.kind) == (10, "sliding")
    rolled = Limit(window="1mo", max_cost="15", max_requests=1, kind="calendar", rollover=1)
    assert rolled.rollover == 1.0
    assert isinstance(rolled.rollover, float)


def test_limit_is_a_frozen_hashable_value() -> None:
    limit = Limit("1d", max_cost="0.50", max_requests=50)
    assert limit == Limit("1d", Decimal("0.5"), 50)
    assert hash(limit) == hash(Limit("1d", "0.500", 50))
    assert limit != Limit("1d", max_cost="0.50", max_requests=51)
    assert "max_cost_nanos" not in repr(limit)
    with pytest.raises(dataclasses.FrozenInstanceError):
        limit.max_cost = Decimal(1)  # type: ignore[misc]
    changed = dataclasses.replace(limit, rollover=0.5)
    assert (changed.rollover, changed.max_cost_nanos) == (0.5, 500_000_000)
    assert pickle.loads(pickle.dumps(limit)) == limit


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"window": "2d", "max_cost": 1},
            "Limit.window: expected one of '1m', '1h', '1d', '7d', '1mo', got '2d'",
        ),
        ({"window": 1, "max_cost": 1}, "Limit.window: expected one of"),
        ({"window": ["1d"], "max_cost": 1}, "Limit.window: expected one of"),
        ({"window": "1d"}, "Limit: window '1d' needs max_cost, max_requests or both"),
        ({"window": "1d", "max_cost": "-1"}, "Limit.max_cost: negative amount '-1'"),
        ({"window": "1d", "max_cost": "abc"}, "Limit.max_cost: not a number 'abc'"),
        ({"window": "1d", "max_cost": "nan"}, "Limit.max_cost: NaN amount 'nan'"),
        ({"window": "1d", "max_cost": math.inf}, "Limit.max_cost: infinite amount inf"),
        (
            {"window": "1d", "max_cost": True},
            "Limit.max_cost: expected Decimal, str, int or float, got bool True",
        ),
        ({"window": "1d", "max_cost": 0}, "Limit.max_cost: expected an amount above 0, got 0"),
        (
            {"window": "1d", "max_cost": "0.0000000001"},
            "Limit.max_cost: expected an amount above 0, got '0.0000000001'",
        ),
        (
            {"window": "1d", "max_cost": "4000000.000000001"},
            "Limit.max_cost: absurd amount '4000000.000000001', above the $4,000,000.00 maximum",
        ),
        (
            {"window": "1d", "max_requests": 0},
            "Limit.max_requests: expected an integer from 1 to 1000000000, got 0",
        ),
        (
            {"window": "1d", "max_requests": 10**9 + 1},
            "Limit.max_requests: expected an integer from 1 to 1000000000, got 1000000001",
        ),
        (
            {"window": "1d", "max_requests": True},
            "Limit.max_requests: expected an integer from 1 to 1000000000, got True",
        ),
        (
            {"window": "1d", "max_requests": "50"},
            "Limit.max_requests: expected an integer from 1 to 1000000000, got '50'",
        ),
        (
            {"window": "1d", "max_requests": 5.0},
            "Limit.max_requests: expected an integer from 1 to 1000000000, got 5.0",
        ),
        (
            {"window": "1d", "max_cost": 1, "kind": "rolling"},
            "Limit.kind: expected 'calendar' or 'sliding', got 'rolling'",
        ),
        (
            {"window": "1d", "max_cost": 1, "rollover": 1.5},
            "Limit.rollover: expected a number from 0 to 1, got 1.5",
        ),
        (
            {"window": "1d", "max_cost": 1, "rollover": -0.1},
            "Limit.rollover: expected a number from 0 to 1, got -0.1",
        ),
        (
            {"window": "1d", "max_cost": 1, "rollover": math.nan},
            "Limit.rollover: expected a number from 0 to 1, got nan",
        ),
        (
            {"window": "1d", "max_cost": 1, "rollover": True},
            "Limit.rollover: expected a number from 0 to 1, got True",
        ),
        (
            {"window": "1d", "max_cost": 1, "rollover": "0.5"},
            "Limit.rollover: expected a number from 0 to 1, got '0.5'",
        ),
        (
            {"window": "1d", "max_cost": 1, "kind": "sliding", "rollover": 0.5},
            "Limit.rollover: only calendar limits roll over, got kind='sliding'",
        ),
        (
            {"window": "1d", "max_requests": 5, "rollover": 0.5},
            "Limit.rollover: only max_cost rolls over, and max_cost is not set",
        ),
    ],
)
def test_limit_rejects(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        Limit(**kwargs)


def test_limit_keeps_the_invalid_amount_as_cause() -> None:
    with pytest.raises(ConfigError) as caught:
        Limit("1d", max_cost="-1")
    assert isinstance(caught.value.__cause__, InvalidAmount)
    assert isinstance(caught.value, ValueError)


# --- Plan --------------------------------------------------------------------------------------


def test_plan_defaults() -> None:
    plan = Plan("basic")
    assert plan.limits == ()
    assert (plan.models, plan.downgrade, plan.features) == (None, None, None)
    assert (plan.max_input_chars, plan.feature_mode, plan.upgrade_url) == (None, "share", None)


def test_plan_normalizes_its_inputs() -> None:
    limits = [Limit("1d", max_cost="1"), Limit("1d", max_requests=5, kind="sliding")]
    models = ["gpt-4o*"]
    downgrade = {"gpt-4o": "gpt-4o-mini"}
    features = {"chat": 0.5, "search": 1 / 4, "classification": 1 / 4}
    plan = Plan(
        "team-1.a_b",
        limits,
        models,
        downgrade,
        max_input_chars=100,
        features=features,
        feature_mode="cap",
        upgrade_url="https://example.com/upgrade",
    )
    assert plan.limits == tuple(limits)
    assert plan.models == ("gpt-4o*",)
    assert dict(plan.downgrade or {}) == downgrade
    assert dict(plan.features or {}) == features
    assert (plan.max_input_chars, plan.feature_mode) == (100, "cap")
    # The plan owns copies: changing the caller's objects changes nothing.
    limits.clear()
    models.append("*")
    downgrade["a"] = "b"
    features["chat"] = 1.0
    assert len(plan.limits) == 2
    assert plan.models == ("gpt-4o*",)
    assert dict(plan.downgrade or {}) == {"gpt-4o": "gpt-4o-mini"}
    assert (plan.features or {})["chat"] == 0.5
    with pytest.raises(TypeError):
        plan.downgrade["x"] = "y"  # type: ignore[index]
    with pytest.raises(TypeError):
        plan.features["x"] = 0.1  # type: ignore[index]


def test_plan_accepts_int_weights_and_float_sums_slightly_above_one() -> None:
    plan = Plan("p", features={"chat": 1})
    assert plan.features == {"chat": 1.0}
    assert isinstance((plan.features or {})["chat"], float)
    Plan("p", features={"a": 0.1, "b": 0.2, "c": 0.7})  # 0.1 + 0.2 + 0.7 > 1 in floats
    Plan("p", features={f"f{i}": 0.1 for i in range(10)})
    Plan("p", features=DEFAULT_FEATURE_WEIGHTS)
    Plan("p", features={"résumé ✓ 文档": 1.0, "x" * 200: 1e-9})


def test_plan_is_a_frozen_hashable_picklable_value() -> None:
    plan = Plan("p", [Limit("1d", max_cost=1)], ["a*"], {"a": "b"}, 10, {"chat": 0.5})
    twin = Plan("p", (Limit("1d", max_cost="1.0"),), ("a*",), {"a": "b"}, 10, {"chat": 0.5})
    assert plan == twin
    assert hash(plan) == hash(twin)
    assert plan != dataclasses.replace(plan, features={"chat": 0.4})
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.name = "q"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(plan)) == plan
    assert copy.deepcopy(plan) == plan
    assert dataclasses.replace(plan, name="q").downgrade_chain("a") == ("a", "b")
    assert {p.name for p in BUILTIN_PLANS} == {"free", "starter", "pro", "enterprise"}
    assert len(set(BUILTIN_PLANS)) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"name": ""},
            "Plan.name: expected 1-64 of [A-Za-z0-9_.-], first a letter or digit, got ''",
        ),
        (
            {"name": "a b"},
            "Plan.name: expected 1-64 of [A-Za-z0-9_.-], first a letter or digit, got 'a b'",
        ),
        ({"name": "-free"}, "Plan.name: expected"),
        ({"name": "free\n"}, "Plan.name: expected"),
        ({"name": "x" * 65}, "Plan.name: expected"),
        ({"name": "café"}, "Plan.name: expected"),
        ({"name": 1}, "Plan.name: expected 1-64 of [A-Za-z0-9_.-], first a letter or digit, got 1"),
        (
            {"limits": Limit("1d", max_cost=1)},
            "Plan.limits: expected a sequence of Limit, got Limit(",
        ),
        ({"limits": "1d"}, "Plan.limits: expected a sequence of Limit, got '1d'"),
        ({"limits": [{"window": "1d"}]}, "Plan.limits[0]: expected a Limit, got {'window': '1d'}"),
        (
            {"limits": [Limit("1d", max_cost=1), Limit("1d", max_requests=5)]},
            "Plan.limits: two calendar limits for window '1d'",
        ),
        ({"models": "gpt-4o"}, "Plan.models: expected a list of model globs or None, got 'gpt-4o'"),
        (
            {"models": {"gpt-4o": 1}},
            "Plan.models: expected a list of model globs or None, got {'gpt-4o': 1}",
        ),
        ({"models": ["gpt-4o", ""]}, "Plan.models[1]: expected a non-empty glob, got ''"),
        ({"models": [None]}, "Plan.models[0]: expected a non-empty glob, got None"),
        (
            {"downgrade": [("a", "b")]},
            "Plan.downgrade: expected a mapping of model to cheaper model, got [('a', 'b')]",
        ),
        ({"downgrade": {"a": ""}}, "Plan.downgrade: expected non-empty model names, got ('a', '')"),
        ({"downgrade": {"a": 1}}, "Plan.downgrade: expected non-empty model names, got ('a', 1)"),
        ({"downgrade": {"a": "a"}}, "Plan.downgrade: 'a' downgrades to itself"),
        ({"downgrade": {"a": "b", "b": "a"}}, "Plan.downgrade: cycle 'a' -> 'b' -> 'a'"),
        (
            {"downgrade": {"x": "a", "a": "b", "b": "c", "c": "a"}},
            "Plan.downgrade: cycle 'a' -> 'b' -> 'c' -> 'a'",
        ),
        ({"max_input_chars": 0}, "Plan.max_input_chars: expected an integer >= 1 or None, got 0"),
        (
            {"max_input_chars": True},
            "Plan.max_input_chars: expected an integer >= 1 or None, got True",
        ),
        (
            {"max_input_chars": 2000.0},
            "Plan.max_input_chars: expected an integer >= 1 or None, got 2000.0",
        ),
        (
            {"features": ["chat"]},
            "Plan.features: expected a mapping of feature id to weight, got ['chat']",
        ),
        (
            {"features": {"": 0.5}},
            "Plan.features: expected feature ids of 1-200 chars, no control chars, got ''",
        ),
        ({"features": {"x" * 201: 0.5}}, "Plan.features: expected feature ids of 1-200 chars"),
        (
            {"features": {"chat\n": 0.5}},
            "Plan.features: expected feature ids of 1-200 chars, no control chars, got 'chat\\n'",
        ),
        ({"features": {"chat\u200b": 0.5}}, "Plan.features: expected feature ids"),
        ({"features": {1: 0.5}}, "Plan.features: expected feature ids"),
        (
            {"features": {"chat": 0}},
            "Plan.features['chat']: expected a weight with 0 < weight <= 1, got 0",
        ),
        (
            {"features": {"chat": -0.1}},
            "Plan.features['chat']: expected a weight with 0 < weight <= 1, got -0.1",
        ),
        (
            {"features": {"chat": 1.5}},
            "Plan.features['chat']: expected a weight with 0 < weight <= 1, got 1.5",
        ),
        (
            {"features": {"chat": math.nan}},
            "Plan.features['chat']: expected a weight with 0 < weight <= 1, got nan",
        ),
        (
            {"features": {"chat": math.inf}},
            "Plan.features['chat']: expected a weight with 0 < weight <= 1, got inf",
        ),
        (
            {"features": {"chat": True}},
            "Plan.features['chat']: expected a weight with 0 < weight <= 1, got True",
        ),
        (
            {"features": {"chat": "0.5"}},
            "Plan.features['chat']: expected a weight with 0 < weight <= 1, got '0.5'",
        ),
        (
            {"features": {"chat": 0.6, "search": 0.5}},
            "Plan.features: weights add up to 1.1, more than 1",
        ),
        ({"feature_mode": "split"}, "Plan.feature_mode: expected 'share' or 'cap', got 'split'"),
        (
            {"upgrade_url": "ftp://example.com"},
            "Plan.upgrade_url: expected a path ('/...') or an http(s):// URL of <= 2048 chars,"
            " without spaces, control characters or backslashes, got 'ftp://example.com'",
        ),
        ({"upgrade_url": "example.com"}, "Plan.upgrade_url: expected a path ('/...') or an"),
        ({"upgrade_url": "https://" + "x" * 2041}, "Plan.upgrade_url: expected a path"),
        ({"upgrade_url": "/" + "x" * 2048}, "Plan.upgrade_url: expected a path"),
        ({"upgrade_url": 1}, "Plan.upgrade_url: expected a path ('/...') or an http(s):// URL"),
    ],
)
def test_plan_rejects(kwargs: dict[str, Any], message: str) -> None:
    kwargs.setdefault("name", "p")
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        Plan(**kwargs)


def test_plan_accepts_the_longest_name_and_url() -> None:
    assert Plan("x" * 64).name == "x" * 64
    assert Plan("p", upgrade_url="https://" + "x" * 2040).upgrade_url is not None
    assert Plan("p", upgrade_url="/" + "x" * 2047).upgrade_url is not None


@pytest.mark.parametrize(
    "url",
    [
        "/settings/billing",
        "/",
        "/billing?plan=pro&from=402#top",
        "/réglages/facturation",
        "/a%20b",
        "https://example.com/upgrade",
        "http://localhost:8000/billing",
        "https://[::1]:8443/billing",
        "HTTPS://Example.com/Upgrade",
    ],
)
def test_plan_accepts_an_upgrade_path_or_http_url(url: str) -> None:
    assert Plan("p", upgrade_url=url).upgrade_url == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "settings/billing",  # relative: resolved against whatever page shows it
        "./billing",
        "//evil.example/upgrade",  # scheme-relative: another host
        "/\\evil.example/upgrade",  # browsers read a backslash as a slash: '//evil.example'
        "\\\\evil.example",
        "/\\/evil.example",
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox(1)",
        "ftp://example.com",
        "mailto:billing@example.com",
        "https://",
        "https:///path",
        "https:evil.example",
        " /settings/billing",
        "/settings/billing ",
        "/settings /billing",
        "/settings\tbilling",
        "/settings\nLocation: https://evil.example",
        "/settings\x00",
        "/settings\u202ebilling",  # a right-to-left override
        "/settings\u2028billing",  # a line separator
        "https://exa mple.com/",
        "https://example.com/\r\n",
        "https://example.com\\@evil.example/",
        "https://[::1/billing",
    ],
)
def test_plan_refuses_an_upgrade_url_that_is_not_a_path_or_http_url(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^Plan\.upgrade_url: expected a path \('/\.\.\.'\)"):
        Plan("p", upgrade_url=url)


def test_plan_file_accepts_an_upgrade_path(tmp_path: Path) -> None:
    path = write(tmp_path, '[plans.free]\nupgrade_url = "/settings/billing"\n')
    (plan,) = load_plans(path)
    assert plan.upgrade_url == "/settings/billing"
    path = write(tmp_path, '[plans.free]\nupgrade_url = "//evil.example"\n')
    with pytest.raises(ConfigError, match=r": plans\.free\.upgrade_url: expected a path"):
        load_plans(path)


def test_downgrade_chain_follows_the_map() -> None:
    plan = Plan("p", downgrade={"gpt-4o": "gpt-4o-mini", "o1": "gpt-4o"})
    assert plan.downgrade_chain("o1") == ("o1", "gpt-4o", "gpt-4o-mini")
    assert plan.downgrade_chain("gpt-4o") == ("gpt-4o", "gpt-4o-mini")
    assert plan.downgrade_chain("gpt-4o-mini") == ("gpt-4o-mini",)
    assert Plan("p").downgrade_chain("gpt-4o") == ("gpt-4o",)
    assert FREE.downgrade_chain("gpt-4o") == ("gpt-4o", "gpt-4o-mini")


@pytest.mark.parametrize(
    ("plan", "model", "allowed"),
    [
        (FREE, "gpt-4o-mini", True),
        (FREE, "gpt-4o", False),
        (FREE, "gpt-4o-mini-2024-07-18", False),
        (STARTER, "gpt-4o", True),
        (STARTER, "gpt-4o-mini", True),
        (STARTER, "o1", False),
        (PRO, "gpt-4o", True),
        (PRO, "gpt-4o-mini", True),
        (PRO, "gpt-4o-2024-08-06", True),
        (PRO, "claude-3-5-sonnet-20241022", True),
        (PRO, "claude-sonnet-4-5", True),
        (PRO, "claude-3-opus-20240229", False),
        (PRO, "GPT-4O", False),  # globs are case-sensitive
        (PRO, "gpt-4", False),
        (PRO, "openai/gpt-4o", False),
        (ENTERPRISE, "anything/at-all", True),
        (Plan("p", models=[]), "gpt-4o", False),
        (Plan("p", models=["gpt-?o", "[ab]*"]), "gpt-4o", True),
        (Plan("p", models=["gpt-?o", "[ab]*"]), "bert", True),
        (Plan("p", models=["gpt-?o", "[ab]*"]), "gpt-40o", False),
    ],
)
def test_model_allowed(plan: Plan, model: str, allowed: bool) -> None:
    assert plan.model_allowed(model) is allowed


# --- built-in plans ----------------------------------------------------------------------------


def test_builtin_plans_match_the_tier_table() -> None:
    assert BUILTIN_PLANS == (FREE, STARTER, PRO, ENTERPRISE)
    table = {
        # name: (per day, requests per day, per month, models, downgrade, max input chars)
        "free": ("0.50", 50, "15", ("gpt-4o-mini",), {"gpt-4o": "gpt-4o-mini"}, 2000),
        "starter": ("5", 500, "150", ("gpt-4o", "gpt-4o-mini"), {"gpt-4o": "gpt-4o-mini"}, 5000),
        "pro": ("25", 2000, "750", ("gpt-4o*", "claude-*sonnet*"), None, 15000),
        "enterprise": ("100", 10000, "3000", None, None, 50000),
    }
    assert [plan.name for plan in BUILTIN_PLANS] == list(table)
    for plan in BUILTIN_PLANS:
        day, requests, month, models, downgrade, max_chars = table[plan.name]
        daily, monthly = plan.limits
        assert (daily.window, daily.kind, daily.rollover) == ("1d", "calendar", 0.0)
        assert daily.max_cost == Decimal(day)
        assert daily.max_cost_nanos == int(Decimal(day) * 10**9)
        assert daily.max_requests == requests
        assert (monthly.window, monthly.kind, monthly.rollover) == ("1mo", "calendar", 0.0)
        assert monthly.max_cost == Decimal(month)
        assert monthly.max_requests is None
        assert plan.models == models
        assert (None if plan.downgrade is None else dict(plan.downgrade)) == downgrade
        assert plan.max_input_chars == max_chars
        assert (plan.features, plan.feature_mode, plan.upgrade_url) == (None, "share", None)


def test_default_feature_weights() -> None:
    assert dict(DEFAULT_FEATURE_WEIGHTS) == {
        "chat": 0.40,
        "document_analysis": 0.30,
        "summarization": 0.15,
        "classification": 0.10,
        "search": 0.05,
    }
    assert math.isclose(math.fsum(DEFAULT_FEATURE_WEIGHTS.values()), 1.0)
    with pytest.raises(TypeError):
        DEFAULT_FEATURE_WEIGHTS["chat"] = 1.0  # type: ignore[index]


# --- plan files --------------------------------------------------------------------------------

_PLAN_KEYS_ALL = tuple(f.name for f in dataclasses.fields(Plan) if f.name != "name")

VALID_TOML = """\
[plans.free]
models = ["gpt-4o-mini"]
downgrade = { "gpt-4o" = "gpt-4o-mini" }
max_input_chars = 2000
upgrade_url = "https://example.com/upgrade"
features = { chat = 0.5, search = 0.5 }
feature_mode = "share"
[[plans.free.limits]]
window = "1d"
max_cost = "0.50"      # string (preferred), int or float accepted
max_requests = 50
kind = "calendar"
rollover = 0.5
[[plans.free.limits]]
window = "1mo"
max_cost = 15

[plans.team]
feature_mode = "cap"
features = { chat = 1 }
[[plans.team.limits]]
window = "1h"
max_cost = 0.1
kind = "sliding"
[[plans.team.limits]]
window = "1h"
max_requests = 100

[plans."unlimited"]
"""


def write(tmp_path: Path, text: str, name: str = "plans.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_plans_reads_a_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, VALID_TOML)
    free, team, unlimited = load_plans(path)
    assert free == Plan(
        "free",
        limits=[
            Limit("1d", max_cost=Decimal("0.50"), max_requests=50, rollover=0.5),
            Limit("1mo", max_cost=Decimal(15)),
        ],
        models=["gpt-4o-mini"],
        downgrade={"gpt-4o": "gpt-4o-mini"},
        max_input_chars=2000,
        features={"chat": 0.5, "search": 0.5},
        upgrade_url="https://example.com/upgrade",
    )
    assert free.limits[0].max_cost_nanos == 500_000_000
    assert team == Plan(
        "team",
        limits=[Limit("1h", max_cost="0.1", kind="sliding"), Limit("1h", max_requests=100)],
        features={"chat": 1.0},
        feature_mode="cap",
    )
    assert unlimited == Plan("unlimited")
    assert load_plans(str(path)) == (free, team, unlimited)


def test_load_plans_reports_toml_syntax_errors_with_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[plans.free]\nmodels = ['a']\nmax input = 3\n")
    with pytest.raises(ConfigError) as caught:
        load_plans(path)
    message = caught.value.message
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "(at line 3, column 5)" in message


def test_load_plans_rejects_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "plans.toml"
    path.write_bytes(b"[plans.free]\nupgrade_url = '\xff'\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: invalid TOML: not UTF-8"):
        load_plans(path)


def test_load_plans_names_unknown_keys(tmp_path: Path) -> None:
    path = write(tmp_path, '[plans.free]\n[[plans.free.limits]]\nwindow = "1d"\nmax_cots = "5"\n')
    expected = f"{path}: plans.free.limits[0]: unknown key 'max_cots'; expected one of window,"
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}"):
        load_plans(path)


def test_load_plans_names_the_negative_amount(tmp_path: Path) -> None:
    path = write(tmp_path, '[plans.free]\n[[plans.free.limits]]\nwindow = "1d"\nmax_cost = "-1"\n')
    expected = f"{path}: plans.free.limits[0].max_cost: negative amount '-1'"
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        load_plans(path)


def test_load_plans_names_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "plans.toml"
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: cannot read plan file"):
        load_plans(path)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(tmp_path))}: cannot read plan file"):
        load_plans(tmp_path)  # a directory


def test_load_plans_names_an_integer_too_long_to_read(tmp_path: Path) -> None:
    digits = sys.get_int_max_str_digits() + 700  # 5,000 by default
    path = write(tmp_path, f"[plans.free]\nmodels = []\nmax_input_chars = {'9' * digits}\n")
    expected = f"{path}: invalid TOML: an integer of more than "
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}.* digits at line 3$"):
        load_plans(path)


@pytest.mark.parametrize(
    ("key", "opening", "closing"),
    [("models", "[", "]"), ("features", "{ a = ", "}"), ("downgrade", "[{ a = ", "}]")],
)
def test_load_plans_names_values_nested_too_deeply(
    tmp_path: Path, key: str, opening: str, closing: str
) -> None:
    path = write(tmp_path, f"[plans.free]\n{key} = {opening * 2000}1{closing * 2000}\n")
    expected = f"{path}: invalid TOML: arrays or inline tables nested too deeply"
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}"):
        load_plans(path)


def test_plans_from_mapping_names_data_nested_too_deeply() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ConfigError, match=r"^deep\.json: nested too deeply"):
        plans_from_mapping({"plans": {"free": {"models": ["a", deep]}}}, source="deep.json")


def _nested(depth: int, inner: str) -> str:
    return "[" * depth + inner + "]" * depth


_DIGITS = st.sampled_from([1, 4300, 4301, 5000]) | st.integers(min_value=1, max_value=6000)
_DEPTHS = st.sampled_from([1, 2, 300, 2000]) | st.integers(min_value=1, max_value=3000)
_TOML_VALUES = st.one_of(
    _DIGITS.map(lambda n: "9" * n),
    _DIGITS.map(lambda n: "0x" + "f" * n),
    _DEPTHS.map(lambda n: _nested(n, "1")),
    _DEPTHS.map(lambda n: "{ a = " * n + "1" + " }" * n),
    st.sampled_from(["1e999", "-1e999", "nan", "inf", "1_000", "0o777", "1979-05-27T07:32:00Z"]),
    st.text(max_size=12).map(json.dumps),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=8,
    ).map(json.dumps),
)
_TOML_KEYS = st.sampled_from([*_PLAN_KEYS_ALL, "typo", "a.b", '"q"', "limits[0]"])
_HOSTILE_FILES = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    st.builds(
        lambda lines: "[plans.free]\n" + "\n".join(f"{k} = {v}" for k, v in lines),
        st.lists(st.tuples(_TOML_KEYS, _TOML_VALUES), max_size=4, unique_by=lambda kv: kv[0]),
    ),
    st.builds(  # a JSON document where TOML is expected, or a TOML table of JSON values
        lambda value, as_json: (
            json.dumps({"plans": {"free": value}})
            if as_json
            else f"[plans]\nfree = {json.dumps(value)}"
        ),
        st.dictionaries(_TOML_KEYS, _TOML_VALUES.map(str), max_size=3),
        st.booleans(),
    ),
)


@settings(deadline=None, max_examples=200)
@given(content=_HOSTILE_FILES)
def test_load_plans_raises_only_config_error_naming_the_file(
    tmp_path_factory: pytest.TempPathFactory, content: str | bytes
) -> None:
    """Whatever a plan file holds, load_plans returns plans or a ConfigError naming the file."""
    path = tmp_path_factory.mktemp("hostile") / "plans.toml"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(content)
    try:
        plans = load_plans(path)
    except ConfigError as exc:
        assert exc.message.startswith(f"{path}: ")  # noqa: PT017
        event(exc.message.removeprefix(f"{path}: ")[:24])
    else:
        event("loaded")
        assert plans
        assert all(isinstance(plan, Plan) for plan in plans)


# --- the default plan: one rule for the library and the command -------------------------------

TWO_PLANS = """\
[plans.team]
limits = [{ window = "1d", max_cost = "10" }]

[plans.pro]
limits = [{ window = "1d", max_cost = "25" }]
"""


def test_a_plan_file_names_its_default_plan(tmp_path: Path) -> None:
    path = write(tmp_path, 'default_plan = "pro"\n' + TWO_PLANS)
    plans = load_plans(path)
    assert [p.name for p in plans] == ["team", "pro"]
    assert plans.default_plan == "pro"
    assert TokenFence(plans=plans).default_plan == "pro"
    assert TokenFence(plans=plans, default_plan="team").default_plan == "team"  # argument wins
    assert pickle.loads(pickle.dumps(plans)).default_plan == "pro"


def test_without_a_named_default_free_is_the_default(tmp_path: Path) -> None:
    plans = load_plans(write(tmp_path, TWO_PLANS + "[plans.free]\n"))
    assert plans.default_plan is None
    assert TokenFence(plans=plans).default_plan == "free"
    assert TokenFence().default_plan == "free"  # the built-in plans
    assert default_plan_for(BUILTIN_PLANS) == "free"


def test_no_default_plan_and_no_free_plan_is_an_error_naming_default_plan(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_PLANS)
    plans = load_plans(path)  # the file alone is fine: an app may name the default itself
    expected = (
        f"{path}: default_plan: not set, and no plan is named 'free' (plans: team, pro); "
        'add default_plan = "..." at the top of the plan file or pass '
        "TokenFence(default_plan=...)"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        TokenFence(plans=plans)
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        default_plan_for(plans)
    with pytest.raises(ConfigError, match=r"^default_plan: not set, and no plan is named 'free'"):
        TokenFence(plans=list(plans))  # plans built in code: no file to name
    assert TokenFence(plans=plans, default_plan="team").default_plan == "team"


def test_an_unknown_default_plan_names_default_plan(tmp_path: Path) -> None:
    with pytest.raises(UnknownPlan, match=r"^default_plan: unknown plan 'gold'; configured plans"):
        TokenFence(default_plan="gold")
    path = write(tmp_path, 'default_plan = "gold"\n' + TWO_PLANS)
    expected = f"{path}: default_plan: expected the name of a plan in the file (team, pro), got"
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)} 'gold'$"):
        load_plans(path)
    with pytest.raises(ConfigError, match=r": default_plan: expected the name of a plan.*got 1$"):
        load_plans(write(tmp_path, "default_plan = 1\n" + TWO_PLANS))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "missing table 'plans'"),
        ([], "top level: expected a table, got []"),
        (
            {"plans": {}, "plan": {}},
            "top level: unknown key 'plan'; expected one of plans, default_plan",
        ),
        ({"plans": {}}, "plans: expected a table of at least one plan, got {}"),
        (
            {"plans": [{"name": "free"}]},
            "plans: expected a table of at least one plan, got [{'name': 'free'}]",
        ),
        ({"plans": {"free": []}}, "plans.free: expected a table, got []"),
        (
            {"plans": {"free": {"name": "free"}}},
            "plans.free: unknown key 'name'; expected one of limits, models,",
        ),
        (
            {"plans": {"free": {"max_cots": 1, "modles": []}}},
            "plans.free: unknown key 'max_cots', 'modles'; expected one of",
        ),
        ({"plans": {"free plan": {}}}, "plans.'free plan'.name: expected 1-64 of [A-Za-z0-9_.-]"),
        (
            {"plans": {"free": {"limits": {"window": "1d"}}}},
            "plans.free.limits: expected an array of tables, got {'window': '1d'}",
        ),
        (
            {"plans": {"free": {"limits": ["1d"]}}},
            "plans.free.limits[0]: expected a table, got '1d'",
        ),
        (
            {"plans": {"free": {"limits": [{"max_cost": "1"}]}}},
            "plans.free.limits[0]: missing key 'window'",
        ),
        (
            {"plans": {"free": {"limits": [{"window": "1d"}]}}},
            "plans.free.limits[0]: window '1d' needs max_cost, max_requests or both",
        ),
        (
            {"plans": {"free": {"limits": [{"window": "1d", "max_requests": "50"}]}}},
            "plans.free.limits[0].max_requests: expected an integer from 1 to 1000000000, got '50'",
        ),
        (
            {
                "plans": {
                    "free": {
                        "limits": [{"window": "1d", "max_cost": 1}, {"window": "1w", "max_cost": 1}]
                    }
                }
            },
            "plans.free.limits[1].window: expected one of",
        ),
        (
            {
                "plans": {
                    "free": {
                        "limits": [{"window": "1d", "max_cost": 1}, {"window": "1d", "max_cost": 2}]
                    }
                }
            },
            "plans.free.limits: two calendar limits for window '1d'",
        ),
        (
            {"plans": {"free": {"models": "gpt-4o"}}},
            "plans.free.models: expected a list of model globs or None, got 'gpt-4o'",
        ),
        (
            {"plans": {"free": {"downgrade": {"a": "b", "b": "a"}}}},
            "plans.free.downgrade: cycle 'a' -> 'b' -> 'a'",
        ),
        (
            {"plans": {"free": {"features": {"chat": 2}}}},
            "plans.free.features['chat']: expected a weight with 0 < weight <= 1, got 2",
        ),
        (
            {"plans": {"ok": {}, "free": {"max_input_chars": "2000"}}},
            "plans.free.max_input_chars: expected an integer >= 1 or None, got '2000'",
        ),
    ],
)
def test_plans_from_mapping_rejects(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape('plans.toml: ' + message)}"):
        plans_from_mapping(data, source="plans.toml")


def test_plans_from_mapping_defaults_the_source_and_accepts_python_sequences() -> None:
    with pytest.raises(ConfigError, match=r"^<config>: missing table 'plans'$"):
        plans_from_mapping({})
    data = {"plans": {"p": {"limits": ({"window": "1d", "max_cost": Decimal("2")},)}}}
    (plan,) = plans_from_mapping(data)
    assert plan == Plan("p", [Limit("1d", max_cost=2)])


def _tables(keys: tuple[str, ...], values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Tables whose keys are the expected ones, with a typo now and then."""
    return st.dictionaries(st.sampled_from((*keys, "typo")), values, max_size=len(keys))


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.decimals()
    | st.datetimes()
    | st.sampled_from(["1d", "1mo", "calendar", "sliding", "share", "cap", "0.5", "gpt-4o"])
)
_ANY = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
_LIMIT_KEYS = ("window", "max_cost", "max_requests", "kind", "rollover")
_PLAN_KEYS = ("limits", "models", "downgrade", "max_input_chars", "features", "feature_mode")
_LIMITS = st.lists(_tables(_LIMIT_KEYS, _SCALARS | _ANY), max_size=3)
_PLANS = st.dictionaries(
    st.sampled_from(["free", "pro", "free plan"]),
    _tables(_PLAN_KEYS, _LIMITS | _SCALARS | _ANY),
    min_size=1,
)


def _load(data: Any) -> tuple[Plan, ...] | ConfigError:
    try:
        return plans_from_mapping(data, source="fuzz.toml")
    except ConfigError as exc:
        return exc


def _check_plans_or_config_error(plans: Any) -> None:
    outcome = _load({"plans": plans})
    if isinstance(outcome, ConfigError):
        assert outcome.message.startswith("fuzz.toml: ")
    else:
        assert outcome
        assert all(isinstance(plan, Plan) for plan in outcome)


@settings(deadline=None, max_examples=300)
@given(_ANY)
def test_plans_from_mapping_raises_only_config_error(plans: Any) -> None:
    """Whatever nested data sits under "plans", the result is plans or a ConfigError."""
    _check_plans_or_config_error(plans)


@settings(deadline=None, max_examples=300)
@given(_PLANS)
def test_plan_shaped_data_raises_only_config_error(plans: Any) -> None:
    """Plan-shaped tables with arbitrary values give plans or a ConfigError, nothing else."""
    _check_plans_or_config_error(plans)


def test_plan_input_tokens_and_price() -> None:
    plan = Plan("p", max_input_tokens=4000, price_per_month="29.99")
    assert plan.max_input_tokens == 4000
    assert plan.price_per_month == Decimal("29.99")
    assert Plan("q").price_per_month is None
    assert pickle.loads(pickle.dumps(plan)) == plan


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_input_tokens": 0}, "max_input_tokens: expected an integer >= 1"),
        ({"max_input_tokens": True}, "max_input_tokens: expected an integer >= 1"),
        ({"max_input_tokens": 1.5}, "max_input_tokens: expected an integer >= 1"),
        ({"price_per_month": "-1"}, "price_per_month: negative amount"),
        ({"price_per_month": "nan"}, "price_per_month"),
        ({"price_per_month": "99999999"}, "price_per_month"),
    ],
)
def test_plan_input_tokens_and_price_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plans_from_mapping({"plans": {"p": options}})


def test_chain_and_allow_keep_a_provider_prefix() -> None:
    plan = Plan("p", models=["gpt-4o-mini"], downgrade={"gpt-4o": "gpt-4o-mini"})
    assert plan.chain_for("gpt-4o") == ("gpt-4o", "gpt-4o-mini")
    assert plan.chain_for("openai/gpt-4o") == ("openai/gpt-4o", "openai/gpt-4o-mini")
    assert plan.chain_for("openai/o1") == ("openai/o1",)
    assert plan.allows("openai/gpt-4o-mini")
    assert plan.allows("gpt-4o-mini")
    assert not plan.allows("openai/gpt-4o")
