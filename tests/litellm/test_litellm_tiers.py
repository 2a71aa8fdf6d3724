"""Service tiers and hosted tool fees through LiteLLM (``mock_response``), on both stores.

The callback hands the call to the same planner as the SDK guards: a call asking for the
priority tier is held at the priority price, one asking for a costlier tier nothing prices is
refused before it is sent, and a Responses call offering web search is held for its searches
(the default allowance written as ``max_tool_calls`` when it set none).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import litellm
import pytest
from litellm.integrations.custom_logger import CustomLogger

from tests.conftest import Held
from tests.litellm.test_litellm import MSGS, clean_callbacks, used
from tokenfence_asgi.calls.shapes import shape_of
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.context import tenant_scope
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import InvalidCall, ModelNotPriced
from tokenfence_asgi.litellm import TokenFenceCallback
from tokenfence_asgi.money import from_nanos, to_nanos
from tokenfence_asgi.pricing.variants import DEFAULT_HOSTED_TOOL_CALLS

__all__ = ["clean_callbacks"]

pytestmark = pytest.mark.filterwarnings(
    "ignore:Items? .* on TypedDict class .* using the `ReadOnly` qualifier:UserWarning",
    "ignore:Pydantic serializer warnings:UserWarning",
)

SEARCH = Decimal("0.01")  # web search: $10 per 1,000 calls


def per_m(tokens: int, dollars: str) -> Decimal:
    return tokens * Decimal(dollars) / 1_000_000


def up(dollars: Decimal) -> Decimal:
    return from_nanos(to_nanos(dollars, rounding="up", field="test"))


class Sent(CustomLogger):
    """The kwargs each call was sent with (as the fence's hook, before it, left them) and
    LiteLLM's cost of each successful one."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[dict[str, Any]] = []
        self.costs: list[Decimal] = []

    async def async_pre_call_deployment_hook(
        self, kwargs: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        self.sent.append(dict(kwargs))
        return None

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self.costs.append(from_nanos(to_nanos(str(kwargs.get("response_cost")))))


@pytest.fixture
def fence(make_fence: Callable[..., TokenFence]) -> TokenFence:
    return make_fence(plans=[Plan("any", [Limit("1d", max_cost="100")])], default_plan="any")


@pytest.fixture
def sent(fence: TokenFence, clean_callbacks: None) -> Iterator[Sent]:
    callback = TokenFenceCallback(fence)
    seen = Sent()
    litellm.callbacks = [callback, seen]
    try:
        yield seen
    finally:
        callback.close()


async def chat(model: str = "gpt-4o-mini", **options: Any) -> Any:
    """A mocked chat call of tenant acme, 50 output tokens at most, with ``options``."""
    async with tenant_scope("acme"):
        return await litellm.acompletion(
            model=model, messages=MSGS, mock_response="Hello!", max_tokens=50, **options
        )


async def test_priority_is_held_and_charged_at_the_priority_price(
    fence: TokenFence, held: Held, sent: Sent
) -> None:
    tokens = fence.prices.input_tokens("gpt-4o-mini", MSGS)
    async with tenant_scope("acme"):
        answer = await litellm.acompletion(
            model="gpt-4o-mini",
            messages=MSGS,
            mock_response="Hello!",
            max_tokens=50,
            service_tier="priority",
        )
    assert held.reservations[0].amount == up(per_m(tokens, "0.25") + per_m(50, "1"))
    usage = answer.usage
    charged = per_m(usage.prompt_tokens, "0.25") + per_m(usage.completion_tokens, "1")
    assert (await used(fence))[0] == up(charged)


async def test_a_costlier_tier_nothing_prices_is_refused_before_sending(
    fence: TokenFence, sent: Sent
) -> None:
    with pytest.raises(ModelNotPriced, match="service_tier='priority'"):
        await chat("gpt-5-nano", service_tier="priority")
    assert sent.sent == []  # refused before any later hook, or the provider, saw it
    assert await used(fence) == (0, 0)


async def test_web_search_is_held_per_search_and_its_allowance_written(
    fence: TokenFence, held: Held, sent: Sent
) -> None:
    body = {"input": "Weather?", "tools": [{"type": "web_search"}]}
    tokens = fence.prices.shape_tokens("gpt-4o-mini", shape_of("responses", body))
    async with tenant_scope("acme"):
        answer = await litellm.aresponses(
            model="gpt-4o-mini", mock_response="Sunny.", max_output_tokens=50, **body
        )
    assert sent.sent[-1]["max_tool_calls"] == DEFAULT_HOSTED_TOOL_CALLS
    assert held.reservations[0].amount == up(
        per_m(tokens, "0.15") + per_m(50, "0.6") + DEFAULT_HOSTED_TOOL_CALLS * SEARCH
    )
    usage = answer.usage  # no search made: the tokens, at least at the price book's price
    priced = per_m(usage.input_tokens, "0.15") + per_m(usage.output_tokens, "0.6")
    assert (await used(fence))[0] == max(sent.costs[-1], up(priced))
    async with tenant_scope("acme"):
        with pytest.raises(ModelNotPriced, match="web_search"):
            await litellm.aresponses(
                model="gpt-4.1-nano",
                input="Weather?",
                mock_response="Sunny.",
                tools=[{"type": "web_search"}],
            )


async def test_a_chat_calls_server_search_tool_gets_the_searches_held_written_in(
    fence: TokenFence, held: Held, sent: Sent
) -> None:
    """Anthropic's web search tool offered to a chat call through LiteLLM: with no
    ``max_uses``, the allowance held is written into the tool; several without one are refused
    (each search is billed, so their number must be bounded)."""
    search = {"type": "web_search_20250305", "name": "web_search"}
    await chat("claude-haiku-4-5", tools=[search])
    assert sent.sent[-1]["tools"] == [{**search, "max_uses": DEFAULT_HOSTED_TOOL_CALLS}]
    assert held.reservations[0].amount >= DEFAULT_HOSTED_TOOL_CALLS * SEARCH
    await chat("claude-haiku-4-5", tools=[{**search, "max_uses": 2}])
    assert sent.sent[-1]["tools"] == [{**search, "max_uses": 2}]
    assert held.reservations[1].amount < held.reservations[0].amount
    with pytest.raises(InvalidCall, match="max_uses"):
        await chat("claude-haiku-4-5", tools=[search, {**search, "name": "web_search_2"}])


@pytest.mark.parametrize(
    "extra_body",
    [
        {"n": 20},
        {"max_completion_tokens": 100_000},
        {"model": "gpt-4o"},
        {"service_tier": "priority"},
        {"tools": [{"type": "web_search"}]},
    ],
)
async def test_extra_body_cannot_set_what_the_hold_is_made_of(
    fence: TokenFence, sent: Sent, extra_body: dict[str, object]
) -> None:
    """LiteLLM sends ``extra_body`` as it is, after the arguments the hold was made from: one
    that sets the number of choices, an output limit, the model, the tier or the tools would
    make the call dearer than its hold. It is refused before anything is sent."""
    with pytest.raises(InvalidCall, match="extra_body"):
        await chat(extra_body=extra_body)
    assert sent.sent == []
    assert await used(fence) == (0, 0)
    await chat(extra_body={"user_tag": "x"})  # anything else passes as before
