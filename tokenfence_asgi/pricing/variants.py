"""Prices a call's own arguments choose: the service tier it asks for, the hosted tools it offers.

A call may ask to be served faster at a higher price: OpenAI's ``service_tier="priority"``
(and ``"fast"``), Anthropic's ``speed="fast"``. ``call_tier`` reads that choice as a ``Tier``,
a ``(argument, value)`` pair as the price snapshot keys its variants (``{"service_tier":
"priority"}``); a choice that costs no more than the standard price (unset, ``"auto"``,
``"default"``, ``"flex"``, ``"standard"``) is ``None``: such a call is held at the standard
price, an upper bound of what it pays. ``reported_tier`` reads the tier a response says it was
served at (OpenAI's ``service_tier``, Anthropic's ``usage.speed``), which prices the charge.
``variant_price`` is the snapshot's price of a model at a tier, ``None`` when it lists none.

Hosted tools run at the provider and are billed per call on top of tokens: web search
(OpenAI ``web_search``/``web_search_preview``, Anthropic ``web_search_20250305``), file search,
code interpreter or execution, image generation. ``hosted_tool`` names an offered tool's fee
(``None``: a function, MCP or other tool that costs only tokens); ``hosted_calls`` counts the
calls a response reports (``web_search_call`` output items, Anthropic's
``usage.server_tool_use``). A call offering hosted tools is held for its ``max_tool_calls``, or
``DEFAULT_HOSTED_TOOL_CALLS`` written into it when it set none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from decimal import Decimal

from tokenfence_asgi.errors import InvalidCall, ModelNotPriced
from tokenfence_asgi.pricing._prices import snapshot
from tokenfence_asgi.pricing._prices.model_price import ModelPrice, shown, snapshot_price

__all__ = [
    "DEFAULT_HOSTED_TOOL_CALLS",
    "Tier",
    "call_item_tool",
    "call_tier",
    "hosted_calls",
    "hosted_tool",
    "is_standard",
    "reported_tier",
    "shown_tier",
    "tool_fees",
    "unpriced_tier",
    "variant_price",
]

Tier = tuple[str, str]
"""A price variant a call asks for or was served at: ``("service_tier", "priority")``."""

DEFAULT_HOSTED_TOOL_CALLS = 10
"""Hosted tool calls a call that offers hosted tools and sets no ``max_tool_calls`` is held for
(and limited to: the fence writes it into the call)."""

_STANDARD: dict[str, frozenset[str]] = {
    # flex is cheaper than standard: held at the standard price, charged at its own
    "service_tier": frozenset({"auto", "default", "flex", "standard", "standard_only"}),
    "speed": frozenset({"standard"}),
}
"""Tier values that cost no more than the standard price, by argument."""

_HOSTED = ("web_search", "file_search", "code_interpreter", "code_execution", "image_generation")
"""Hosted tools billed per call, as tool types start (``web_search_preview_2025_03_11``)."""

_CALL_ITEMS = {
    "web_search_call": "web_search",
    "file_search_call": "file_search",
    "code_interpreter_call": "code_interpreter",
    "image_generation_call": "image_generation",
}
"""Responses API output items that report one hosted tool call each."""

_SERVER_USE = {"web_search_requests": "web_search", "code_execution_requests": "code_execution"}
"""Anthropic's ``usage.server_tool_use`` counters, by the tool they count."""


def is_standard(tier: Tier | None) -> bool:
    """Whether ``tier`` costs no more than the standard price (``None``: no tier asked)."""
    return tier is None or tier[1] in _STANDARD.get(tier[0], frozenset())


def call_tier(kwargs: Mapping[str, object]) -> Tier | None:
    """The costlier tier a call's arguments ask for (``service_tier``, ``speed``), or ``None``.

    Raises ``InvalidCall`` for a tier that is not a string.
    """
    found: Tier | None = None
    for key in _STANDARD:
        value = kwargs.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise InvalidCall(f"{key} must be a non-empty string, got {value!r}")
        tier = (key, value.lower())
        if not is_standard(tier):
            found = tier
    return found


def reported_tier(body: Mapping[str, object]) -> Tier | None:
    """The tier a response says it was served at (``None``: it does not say)."""
    tier = body.get("service_tier")
    if isinstance(tier, str) and tier:
        return ("service_tier", tier.lower())
    usage = body.get("usage")
    speed = usage.get("speed") if isinstance(usage, Mapping) else None
    if isinstance(speed, str) and speed:
        return ("speed", speed.lower())
    return None


def shown_tier(tier: Tier) -> str:
    """``service_tier='priority'``: a tier as a call writes it, for messages."""
    return f"{tier[0]}={tier[1]!r}"


def hosted_tool(tool: object) -> str | None:
    """The hosted tool an offered tool is billed as (``"web_search"``), or ``None``."""
    kind = tool.get("type") if isinstance(tool, Mapping) else None
    if not isinstance(kind, str):
        return None
    for name in _HOSTED:
        if kind == name or kind.startswith(name + "_"):
            return name
    return None


def hosted_calls(body: Mapping[str, object]) -> dict[str, int]:
    """Hosted tool calls a response (or a completed streamed response) reports, by tool."""
    counts: dict[str, int] = {}
    output = body.get("output")
    for item in output if isinstance(output, list) else ():
        tool = _CALL_ITEMS.get(str(item.get("type"))) if isinstance(item, Mapping) else None
        if tool is not None:
            counts[tool] = counts.get(tool, 0) + 1
    usage = body.get("usage")
    server = usage.get("server_tool_use") if isinstance(usage, Mapping) else None
    if isinstance(server, Mapping):
        for key, tool in _SERVER_USE.items():
            value = server.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                counts[tool] = counts.get(tool, 0) + value
    return counts


def call_item_tool(item_type: object) -> str | None:
    """The hosted tool a Responses output item of ``item_type`` is a call of, or ``None``."""
    return _CALL_ITEMS.get(str(item_type))


def variant_price(model: str, tier: Tier) -> ModelPrice | None:
    """The snapshot's price of ``model`` at ``tier``: its variant's prices over the standard
    ones (a price the variant does not list is the standard one); ``None`` when the snapshot
    does not list the model at that tier."""
    entry = snapshot.find(model)
    if entry is None:
        return None
    for when, prices in entry.variants:
        if dict(when) == {tier[0]: tier[1]}:
            return snapshot_price(replace(entry, prices={**entry.prices, **prices}, variants=()))
    return None


def unpriced_tier(model: str, tier: Tier) -> ModelNotPriced:
    """The refusal of a costlier tier nothing prices for ``model``."""
    return ModelNotPriced(
        f"no price for model {shown(model)} at {shown_tier(tier)}: the price snapshot does not "
        f"list that tier for it, and it costs more than the standard price; pass "
        f"prices={{{shown(model)}: ModelPrice(...)}} with the price you pay for it, or call "
        "without it",
        models=(model,),
    )


def tool_fees(
    model: str, tools: Sequence[object] | None, price: ModelPrice, listed: ModelPrice | None
) -> tuple[tuple[str, Decimal], ...]:
    """The fee per call of each hosted tool in ``tools``: ``price``'s (a configured one wins),
    else the snapshot's (``listed``). Raises ``ModelNotPriced`` for a hosted tool neither
    prices: it would be billed and never charged."""
    fees: dict[str, Decimal] = {}
    for tool in tools or ():
        name = hosted_tool(tool)
        if name is None or name in fees:
            continue
        fee = price.tool_fee(name)
        if fee is None and listed is not None:
            fee = listed.tool_fee(name)
        if fee is None:
            raise ModelNotPriced(
                f"no price for the hosted tool {name!r} on model {shown(model)}: the provider "
                f"bills each call of it; pass prices={{{shown(model)}: ModelPrice(..., "
                f"per_tool_call={{{name!r}: ...}})}} with the price per call you pay, or do "
                "not offer it",
                models=(model,),
            )
        fees[name] = fee
    return tuple(fees.items())
