"""Service tiers and hosted tool fees: what a call asks for is what it is held and charged at.

A costlier tier (OpenAI's ``service_tier="priority"``, Anthropic's ``speed="fast"``) is held at
the snapshot's price for it, or refused when nothing prices it; hosted tools (web search, file
search) are held at their fee per call times the most calls the call can make.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from tokenfence_asgi.calls.shapes import shape_of
from tokenfence_asgi.errors import ConfigError, InvalidCall, ModelNotPriced
from tokenfence_asgi.money import to_nanos
from tokenfence_asgi.pricing.book import ModelPrice, PriceBook
from tokenfence_asgi.pricing.call import CallShape
from tokenfence_asgi.pricing.variants import (
    DEFAULT_HOSTED_TOOL_CALLS,
    call_tier,
    hosted_calls,
    hosted_tool,
    reported_tier,
)

MSGS = ({"role": "user", "content": "Say hello."},)
WEB = {"type": "web_search"}


def per_m(tokens: int, dollars: str) -> Decimal:
    return tokens * Decimal(dollars) / 1_000_000


def nanos_up(dollars: Decimal) -> int:
    return to_nanos(dollars, rounding="up", field="test")


@pytest.fixture
def book() -> PriceBook:
    return PriceBook()


def chat(tier: tuple[str, str] | None = None, limit: int = 100) -> CallShape:
    return CallShape("chat", messages=MSGS, output_limit=limit, tier=tier)


def test_a_call_asks_for_a_tier_by_its_arguments() -> None:
    assert call_tier({}) is None
    for standard in ("auto", "default", "flex", None):
        assert call_tier({"service_tier": standard}) is None
    assert call_tier({"service_tier": "priority"}) == ("service_tier", "priority")
    assert call_tier({"speed": "fast"}) == ("speed", "fast")
    assert call_tier({"speed": "standard", "service_tier": "standard_only"}) is None
    assert call_tier({"service_tier": "scale"}) == ("service_tier", "scale")
    with pytest.raises(InvalidCall, match="service_tier"):
        call_tier({"service_tier": 3})


def test_the_priority_tier_is_held_at_its_own_price(book: PriceBook) -> None:
    standard = book.bound("gpt-4o-mini", chat())
    priority = book.bound("gpt-4o-mini", chat(("service_tier", "priority")))
    tokens = standard.input_tokens
    assert standard.amount_nanos == nanos_up(per_m(tokens, "0.15") + per_m(100, "0.60"))
    assert priority.amount_nanos == nanos_up(per_m(tokens, "0.25") + per_m(100, "1"))
    assert priority.price is not None
    assert priority.price.cost(1000, 200) == per_m(1000, "0.25") + per_m(200, "1")
    assert priority.tier == ("service_tier", "priority")


def test_a_costlier_tier_nothing_prices_is_refused(book: PriceBook) -> None:
    with pytest.raises(ModelNotPriced, match="service_tier='priority'") as info:
        book.bound("gpt-5-nano", chat(("service_tier", "priority")))
    assert info.value.models == ("gpt-5-nano",)
    with pytest.raises(ModelNotPriced, match="speed='fast'"):
        book.bound("claude-haiku-4-5", chat(("speed", "fast")))
    with pytest.raises(ModelNotPriced, match="service_tier='scale'"):
        book.bound("gpt-4o-mini", chat(("service_tier", "scale")))


def test_anthropic_fast_mode_is_held_at_its_price(book: PriceBook) -> None:
    fast = book.bound("claude-opus-4-8", chat(("speed", "fast")))
    assert fast.amount_nanos == nanos_up(per_m(fast.input_tokens, "10") + per_m(100, "50"))


def test_an_operator_price_wins_for_every_tier() -> None:
    book = PriceBook({"gpt-5-nano": ModelPrice.per_million("1", "2")})
    estimate = book.bound("gpt-5-nano", chat(("service_tier", "priority")))
    assert estimate.amount_nanos == nanos_up(per_m(estimate.input_tokens, "1") + per_m(100, "2"))


def test_a_reported_tier_prices_the_charge(book: PriceBook) -> None:
    assert reported_tier({"service_tier": "priority"}) == ("service_tier", "priority")
    assert reported_tier({"service_tier": "default"}) == ("service_tier", "default")
    assert reported_tier({"usage": {"speed": "fast"}}) == ("speed", "fast")
    assert reported_tier({}) is None
    flex = book.tier_price("gpt-5-mini", ("service_tier", "flex"))
    assert flex.cost(1000, 200) == per_m(1000, "0.125") + per_m(200, "1")
    standard = book.tier_price("gpt-5-mini", ("service_tier", "default"))
    assert standard.cost(1000, 200) == per_m(1000, "0.25") + per_m(200, "2")


def test_hosted_tools_are_named_by_their_fee() -> None:
    assert hosted_tool(WEB) == "web_search"
    assert hosted_tool({"type": "web_search_preview_2025_03_11"}) == "web_search"
    assert hosted_tool({"type": "web_search_20250305", "name": "web_search"}) == "web_search"
    assert hosted_tool({"type": "file_search", "vector_store_ids": ["vs"]}) == "file_search"
    assert hosted_tool({"type": "code_interpreter"}) == "code_interpreter"
    assert hosted_tool({"type": "function", "name": "lookup"}) is None
    assert hosted_tool({"type": "mcp", "server_label": "x"}) is None
    output = [{"type": "web_search_call"}, {"type": "message"}, {"type": "web_search_call"}]
    assert hosted_calls({"output": output}) == {"web_search": 2}
    usage = {"server_tool_use": {"web_search_requests": 3}}
    assert hosted_calls({"usage": usage}) == {"web_search": 3}


def test_web_search_is_held_per_search_the_call_can_make(book: PriceBook) -> None:
    plain = CallShape("responses", messages=MSGS, output_limit=100)
    base = book.bound("gpt-4o-mini", plain)
    capped = book.bound(
        "gpt-4o-mini",
        CallShape("responses", messages=MSGS, output_limit=100, tools=(WEB,), tool_calls=3),
    )
    tool_tokens = capped.input_tokens - base.input_tokens
    search = Decimal("0.01")  # $10 per 1,000 searches
    assert capped.tool_calls == 3
    assert capped.amount_nanos == nanos_up(
        per_m(capped.input_tokens, "0.15") + per_m(100, "0.60") + 3 * search
    )
    assert tool_tokens >= 0
    default = book.bound(
        "gpt-4o-mini", CallShape("responses", messages=MSGS, output_limit=100, tools=(WEB,))
    )
    assert default.tool_calls == DEFAULT_HOSTED_TOOL_CALLS
    assert not default.tool_calls_from_call
    assert default.amount_nanos == nanos_up(
        per_m(default.input_tokens, "0.15")
        + per_m(100, "0.60")
        + DEFAULT_HOSTED_TOOL_CALLS * search
    )
    assert default.hosted_cost({"web_search": 2}) == 2 * search


def test_a_hosted_tool_nothing_prices_is_refused(book: PriceBook) -> None:
    shape = CallShape("responses", messages=MSGS, output_limit=100, tools=(WEB,))
    with pytest.raises(ModelNotPriced, match="web_search") as info:
        book.bound("gpt-4.1-nano", shape)
    assert info.value.models == ("gpt-4.1-nano",)
    code = CallShape(
        "responses", messages=MSGS, output_limit=100, tools=({"type": "code_interpreter"},)
    )
    with pytest.raises(ModelNotPriced, match="code_interpreter"):
        book.bound("gpt-4o-mini", code)
    priced = PriceBook(
        {"gpt-4o-mini": ModelPrice("0", "0", per_tool_call={"code_interpreter": "0.03"})}
    )
    estimate = priced.bound("gpt-4o-mini", CallShape(**{**_fields(code), "tool_calls": 2}))
    assert estimate.amount_nanos == nanos_up(Decimal("0.06"))


def test_an_operator_price_without_a_fee_keeps_the_listed_fee() -> None:
    book = PriceBook({"gpt-4o-mini": ModelPrice("0", "0")})
    shape = CallShape("responses", messages=MSGS, output_limit=100, tools=(WEB,), tool_calls=1)
    assert book.bound("gpt-4o-mini", shape).amount_nanos == nanos_up(Decimal("0.01"))


def test_shapes_read_the_tier_and_the_tool_call_limit() -> None:
    body = {
        "model": "gpt-4o-mini",
        "input": "hi",
        "tools": [WEB],
        "max_tool_calls": 4,
        "service_tier": "priority",
    }
    shape = shape_of("responses", body)
    assert (shape.tier, shape.tool_calls) == (("service_tier", "priority"), 4)
    assert shape_of("chat", {"messages": [], "service_tier": "auto"}).tier is None
    with pytest.raises(InvalidCall, match="max_tool_calls"):
        shape_of("responses", {**body, "max_tool_calls": -1})


def _fields(shape: CallShape) -> dict[str, object]:
    return {name: getattr(shape, name) for name in CallShape.__dataclass_fields__}


def test_the_hosted_tool_allowance_is_configurable() -> None:
    book = PriceBook(default_tool_calls=2)
    shape = CallShape("responses", messages=MSGS, output_limit=100, tools=(WEB,))
    assert book.bound("gpt-4o-mini", shape).tool_calls == 2
    with pytest.raises(ConfigError, match="default_tool_calls"):
        PriceBook(default_tool_calls=0)
    with pytest.raises(ConfigError, match="per_tool_call"):
        ModelPrice("0", "0", per_tool_call={"web_search": "-1"})
