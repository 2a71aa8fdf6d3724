"""A fence's settings: one frozen value, validated once, naming the field that is wrong."""

from __future__ import annotations

import dataclasses

import pytest

from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.engine.settings import FenceSettings
from tokenfence_asgi.errors import ConfigError, UnknownPlan
from tokenfence_asgi.pricing.book import ModelPrice, PriceBook

DAY = Plan("day", [Limit("1d", max_cost="1.00")])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hold_ttl", 0),
        ("hold_ttl", float("nan")),
        ("hold_ttl", True),
        ("record_ttl", 91 * 86400),
        ("approval_ttl", "60"),
        ("ledger_retention", -1),
        ("kill_cache_s", 61),
        ("reclaim_batch", 0),
        ("cache_size", -1),
        ("usage_days", 3661),
        ("ledger_maxlen", -1),
        ("max_open_holds", 0),
        ("default_output_tokens", 0),
        ("on_store_error", "maybe"),
        ("enforce", "yes"),
        ("clock", 12),
        ("policy", "allow"),
        ("prefix", "a:b"),
        ("timeout_s", 0),
        ("outage_allowance", "-1"),
    ],
)
def test_a_bad_option_is_refused_naming_it(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        TokenFence(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=field):
        FenceSettings.of(**{field: value})  # type: ignore[arg-type]


def test_the_settings_are_frozen_and_carry_the_script_arguments() -> None:
    settings = FenceSettings.of(
        plans=[DAY],
        default_plan="day",
        hold_ttl=1.5,
        record_ttl=10.2,
        ledger_retention=None,
        max_open_holds=None,
    )
    assert settings.default_plan == "day"
    assert (settings.hold_ms_arg, settings.record_ttl_arg) == ("1500", "11")
    assert (settings.ledger_retention_arg, settings.max_open_holds_arg) == ("", "")
    assert settings.ledger_maxlen_arg == "100000"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.hold_ttl = 2  # type: ignore[misc]


def test_a_fence_shows_its_settings() -> None:
    book = PriceBook({"m": ModelPrice("1", "2")})
    fence = TokenFence(plans=[DAY], default_plan="day", prices=book, hold_ttl=30)
    assert fence.settings.prices is fence.prices is book
    assert (fence.hold_ttl, fence.default_plan, list(fence.plans)) == (30.0, "day", ["day"])


def test_settings_built_directly_are_checked_too() -> None:
    day = FenceSettings.of(plans=[DAY], default_plan="day").plans
    with pytest.raises(ConfigError, match="default_plan"):
        FenceSettings(plans=day, default_plan="gold", prices=PriceBook())
    with pytest.raises(ConfigError, match="usage_days"):
        FenceSettings(plans=day, default_plan="day", prices=PriceBook(), usage_days=0)
    with pytest.raises(UnknownPlan):
        FenceSettings.of(plans=[DAY], default_plan="gold")
