"""Prices read from LiteLLM's price map (``litellm.model_cost``), when LiteLLM is imported.

The price book never imports LiteLLM; once an app has, ``mapped_price`` reads one exact key of
its map (a model, or a Router deployment's id under which the Router registers the prices it
was configured with) as a ``ModelPrice``, remembered while the entry does not change.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, cast

import structlog

from tokenfence_asgi.errors import ConfigError
from tokenfence_asgi.money import MoneyInput
from tokenfence_asgi.pricing._prices.model_price import MAX_TOKENS, ModelPrice

__all__ = ["CACHE_SIZE", "mapped_price"]

log = structlog.get_logger("tokenfence_asgi")

CACHE_SIZE = 4096
"""The most prices a price book remembers in each of its caches."""

MapCache = dict[str, tuple[tuple[object, ...], ModelPrice]]


def _optional_price(entry: Mapping[str, Any], *names: str) -> object:
    for name in names:
        value = entry.get(name)
        if value is not None:
            return value
    return None


def mapped_price(key: str, cache: MapCache) -> ModelPrice | None:
    """The price of one exact key of LiteLLM's map, or ``None`` (also when LiteLLM is not
    imported); ``cache`` remembers it while the entry is unchanged."""
    litellm = sys.modules.get("litellm")
    model_cost = getattr(litellm, "model_cost", None)
    if not isinstance(model_cost, Mapping):
        return None
    entry = model_cost.get(key)
    if not isinstance(entry, Mapping):
        return None
    raw = (
        entry.get("input_cost_per_token"),
        entry.get("output_cost_per_token"),
        entry.get("max_output_tokens") or entry.get("max_tokens"),
        _optional_price(entry, "input_cost_per_query", "output_cost_per_image"),
        entry.get("input_cost_per_character"),
        entry.get("max_input_tokens"),
    )
    cached = cache.get(key)
    if cached is not None and cached[0] == raw:
        return cached[1]
    if raw[0] is None or raw[1] is None:
        if raw[3] is None and raw[4] is None:
            return None
        raw = (raw[0] or 0, raw[1] or 0, *raw[2:])
    max_out = raw[2] if isinstance(raw[2], int) and 0 < raw[2] <= MAX_TOKENS else None
    max_in = raw[5] if isinstance(raw[5], int) and 0 < raw[5] <= MAX_TOKENS else None
    try:
        price = ModelPrice(
            cast("MoneyInput", raw[0]),
            cast("MoneyInput", raw[1]),
            max_output_tokens=max_out,
            per_call=cast("MoneyInput | None", raw[3]),
            per_character=cast("MoneyInput | None", raw[4]),
            max_input_tokens=max_in,
        )
    except ConfigError:
        log.warning("price_map_entry_invalid", model=key)
        return None
    if len(cache) >= CACHE_SIZE:
        cache.clear()
    cache[key] = (raw, price)
    return price
