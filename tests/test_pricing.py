"""Prices, worst-case estimates and actual costs: LiteLLM's price map, overrides, no free models."""

from __future__ import annotations

import os
from collections.abc import Callable
from decimal import Decimal

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from tokenfence_asgi.engine import TokenFence
from tokenfence_asgi.errors import ConfigError
from tokenfence_asgi.money import to_nanos
from tokenfence_asgi.pricing import ModelPrice, PriceBook

MSGS = [{"role": "user", "content": "How many tokens is this prompt?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Look up an order by its id and return its status. " * 20,
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
        },
    }
]


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook()


def test_map_price_is_litellms_bundled_price(book: PriceBook) -> None:
    price = book.price("gpt-4o-mini")
    entry = litellm.model_cost["gpt-4o-mini"]
    assert price.input_per_token == Decimal(str(entry["input_cost_per_token"]))
    assert price.output_per_token == Decimal(str(entry["output_cost_per_token"]))
    assert price.max_output_tokens == entry["max_output_tokens"]
    assert book.price("openai/gpt-4o-mini") == price  # a provider prefix finds the same entry


def test_estimate_is_input_tokens_plus_allowance_rounded_up(book: PriceBook) -> None:
    est = book.estimate("gpt-4o-mini", MSGS, max_output_tokens=256)
    tokens = litellm.token_counter(model="gpt-4o-mini", messages=MSGS)
    assert (est.input_tokens, est.output_tokens, est.from_call) == (tokens, 256, True)
    exact = tokens * Decimal("1.5e-7") + 256 * Decimal("6e-7")
    assert est.amount_nanos == to_nanos(exact, rounding="up")


def test_tools_count_as_input(book: PriceBook) -> None:
    plain = book.estimate("gpt-4o-mini", MSGS, max_output_tokens=1)
    with_tools = book.estimate("gpt-4o-mini", MSGS, tools=TOOLS, max_output_tokens=1)
    assert with_tools.input_tokens > plain.input_tokens + 100


def test_allowance_call_then_default_then_model_maximum() -> None:
    assert PriceBook().estimate("gpt-4o-mini", MSGS).output_tokens == 16384
    assert not PriceBook().estimate("gpt-4o-mini", MSGS).from_call
    book = PriceBook(default_output_tokens=500)
    assert book.estimate("gpt-4o-mini", MSGS).output_tokens == 500
    assert book.estimate("gpt-4o-mini", MSGS, max_output_tokens=64).output_tokens == 64
    # never more than the model can produce
    assert book.estimate("gpt-4o-mini", MSGS, max_output_tokens=10**6).output_tokens == 16384


def test_unknown_model_is_never_free() -> None:
    with pytest.raises(ConfigError, match="no price for model 'acme-llm-7b'"):
        PriceBook().price("acme-llm-7b")
    fallback = ModelPrice.per_million("1", "2", max_output_tokens=1000)
    assert PriceBook(default_price=fallback).price("acme-llm-7b") is fallback


def test_override_wins_over_the_map_and_matches_without_prefix() -> None:
    negotiated = ModelPrice.per_million("2", "8")
    book = PriceBook({"gpt-4o": negotiated})
    assert book.price("gpt-4o") is negotiated
    assert book.price("openai/gpt-4o") is negotiated
    assert negotiated.input_per_token == Decimal("0.000002")
    # its maximum output still comes from the map
    assert (
        book.estimate("gpt-4o", MSGS).output_tokens
        == litellm.model_cost["gpt-4o"]["max_output_tokens"]
    )


def test_self_hosted_model_without_maximum_needs_an_allowance() -> None:
    book = PriceBook({"my-llama": ModelPrice("0.0000001", "0.0000002")})
    with pytest.raises(ConfigError, match="no output allowance for model 'my-llama'"):
        book.estimate("my-llama", MSGS)
    assert book.estimate("my-llama", MSGS, max_output_tokens=100).output_tokens == 100


def test_a_trusted_deployment_price_comes_after_the_configured_ones() -> None:
    deployment = ModelPrice("0.000001", "0.000002")
    book = PriceBook({"gpt-4o": ModelPrice.per_million("2", "8")})
    assert book.price("acme-llm-7b", deployment) is deployment  # before the map and default
    assert book.price("gpt-4o", deployment) == ModelPrice.per_million("2", "8")


def test_per_call_and_per_character_prices() -> None:
    image = ModelPrice.flat("0.04")
    assert image.cost(0, 0, units=3) == Decimal("0.12")
    speech = PriceBook().price("tts-1")  # LiteLLM's map: $15 per million characters
    assert speech.per_character == Decimal("0.000015")
    assert speech.cost(0, 0, characters=1000) == Decimal("0.015")


def test_actual_cost_prefers_override_then_litellms_cost() -> None:
    book = PriceBook({"gpt-4o": ModelPrice.per_million("2", "8")})
    assert book.actual_cost(
        "gpt-4o", response_cost=0.5, input_tokens=1000, output_tokens=100
    ) == Decimal("0.0028")
    assert book.actual_cost(
        "gpt-4o-mini", response_cost=0.00026999999999999995, input_tokens=0, output_tokens=0
    ) == Decimal("0.00026999999999999995")
    # no cost from LiteLLM: the map price times the usage
    assert book.actual_cost(
        "gpt-4o-mini", response_cost=None, input_tokens=1000, output_tokens=200
    ) == Decimal("0.00027")
    assert book.actual_cost("acme", response_cost=None, input_tokens=1, output_tokens=1) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "must be in"),
        ("abc", "must be a number"),
        (float("nan"), "must be in"),
        (True, "got True"),
    ],
)
def test_bad_prices_are_refused(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelPrice(value, 0)  # type: ignore[arg-type]


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="default_output_tokens"):
        PriceBook(default_output_tokens=0)
    with pytest.raises(ConfigError, match="must be a ModelPrice"):
        PriceBook({"x": (1, 2)})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="max_output_tokens"):
        ModelPrice(0, 0, max_output_tokens=-5)


def test_text_tokens_counts_what_a_stream_produced(book: PriceBook) -> None:
    assert book.text_tokens("gpt-4o-mini", "") == 0
    assert 3 <= book.text_tokens("gpt-4o-mini", "Hello from the fake provider.") <= 10


async def test_the_fence_has_one_price_book_the_callback_shares(
    make_fence: Callable[..., TokenFence],
) -> None:
    negotiated = ModelPrice.per_million("2", "8")
    fence = make_fence(prices={"gpt-4o": negotiated}, default_price=ModelPrice.flat("1"))
    assert fence.prices.price("gpt-4o") is negotiated
    assert fence.prices.price("acme-llm-7b") == ModelPrice.flat("1")
    from tokenfence_asgi.litellm import TokenFenceCallback

    callback = TokenFenceCallback(fence)
    try:
        assert callback.prices is fence.prices
    finally:
        callback.close()
