"""Service tiers and hosted tool fees through the guarded SDKs, on real Redis and embedded.

A call that asks for the priority tier is held and charged at the priority price (the tier the
response reports prices the charge); one that asks for a costlier tier nothing prices is
refused before it is sent. A Responses call offering web search is held for its
``max_tool_calls`` searches (or the default allowance, written into the call) and charged
the searches its response reports, streamed or not.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import Held
from tests.e2e.fake_anthropic import FakeAnthropic
from tests.guard.conftest import MSGS
from tests.guard.providers import GuardProvider
from tests.guard.test_matrix import spent
from tokenfence_asgi.calls.shapes import shape_of
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import ModelNotPriced
from tokenfence_asgi.money import from_nanos, to_nanos
from tokenfence_asgi.pricing.book import ModelPrice
from tokenfence_asgi.pricing.variants import DEFAULT_HOSTED_TOOL_CALLS

pytestmark = pytest.mark.slow

SEARCH = Decimal("0.01")  # web search: $10 per 1,000 calls
WEB = [{"type": "web_search"}]


def per_m(tokens: int, dollars: str) -> Decimal:
    return tokens * Decimal(dollars) / 1_000_000


def up(dollars: Decimal) -> Decimal:
    return from_nanos(to_nanos(dollars, rounding="up", field="test"))


def input_tokens(fence: TokenFence, model: str, body: dict[str, Any]) -> int:
    """The input tokens the price book counts for a Responses call's ``body``."""
    return fence.prices.shape_tokens(model, shape_of("responses", body))


@pytest.fixture
def fence(make_fence: Callable[..., TokenFence]) -> TokenFence:
    return make_fence(plans=[Plan("any", [Limit("1d", max_cost="100")])], default_plan="any")


@pytest.fixture
def client(fence: TokenFence, make_client: Callable[[str], Any]) -> Any:
    return fence.guard(make_client("AsyncOpenAI"), tenant="acme")


async def test_priority_is_held_and_charged_at_the_priority_price(
    client: Any, fence: TokenFence, held: Held, oai: GuardProvider
) -> None:
    tokens = fence.prices.input_tokens("gpt-4o-mini", MSGS)
    answer = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MSGS, max_tokens=50, service_tier="priority"
    )
    assert answer.service_tier == "priority"
    assert oai.requests[0]["service_tier"] == "priority"
    assert held.reservations[0].amount == up(per_m(tokens, "0.25") + per_m(50, "1"))
    assert await spent(fence) == (per_m(1000, "0.25") + per_m(200, "1"), 0)


async def test_auto_is_standard_and_the_reported_tier_prices_the_charge(
    client: Any, fence: TokenFence, held: Held, oai: GuardProvider
) -> None:
    tokens = fence.prices.input_tokens("gpt-4o-mini", MSGS)
    await client.chat.completions.create(
        model="gpt-4o-mini", messages=MSGS, max_tokens=50, service_tier="auto"
    )
    assert held.reservations[0].amount == up(per_m(tokens, "0.15") + per_m(50, "0.6"))
    standard = per_m(1000, "0.15") + per_m(200, "0.6")
    assert await spent(fence) == (standard, 0)
    oai.served_tier = "priority"  # the project's default tier, chosen by "auto"
    await client.chat.completions.create(
        model="gpt-4o-mini", messages=MSGS, max_tokens=50, service_tier="auto"
    )
    assert await spent(fence) == (standard + per_m(1000, "0.25") + per_m(200, "1"), 0)


async def test_flex_is_held_at_standard_and_charged_at_flex(
    client: Any, fence: TokenFence, held: Held, oai: GuardProvider
) -> None:
    await client.responses.create(
        model="gpt-5-mini", input="Say hello.", max_output_tokens=50, service_tier="flex"
    )
    tokens = held.reservations[0].amount
    assert tokens == up(
        per_m(fence.prices.input_tokens("gpt-5-mini", MSGS), "0.25") + per_m(50, "2")
    )
    assert await spent(fence) == (per_m(1000, "0.125") + per_m(200, "1"), 0)


async def test_a_costlier_tier_nothing_prices_is_refused_before_sending(
    client: Any, fence: TokenFence, oai: GuardProvider, make_fence: Callable[..., TokenFence]
) -> None:
    with pytest.raises(ModelNotPriced, match="service_tier='priority'") as info:
        await client.chat.completions.create(
            model="gpt-5-nano", messages=MSGS, max_tokens=50, service_tier="priority"
        )
    assert isinstance(info.value, openai.UnprocessableEntityError)
    assert oai.calls == 0
    assert await spent(fence) == (0, 0)
    priced = make_fence(
        plans=[Plan("any", [Limit("1d", max_cost="100")])],
        default_plan="any",
        prices={"gpt-5-nano": ModelPrice.per_million("1", "2")},
    )
    guarded = priced.guard(client, tenant="acme")
    await guarded.chat.completions.create(
        model="gpt-5-nano", messages=MSGS, max_tokens=50, service_tier="priority"
    )
    assert await spent(priced) == (per_m(1000, "1") + per_m(200, "2"), 0)


async def test_a_responses_stream_is_charged_at_the_tier_it_reports(
    client: Any, fence: TokenFence, held: Held, oai: GuardProvider
) -> None:
    stream = await client.responses.create(
        model="gpt-4o-mini",
        input="Say hello.",
        max_output_tokens=50,
        service_tier="priority",
        stream=True,
    )
    async for _ in stream:
        pass
    assert await spent(fence) == (per_m(1000, "0.25") + per_m(200, "1"), 0)


async def test_web_search_is_held_per_search_and_charged_per_search_made(
    client: Any, fence: TokenFence, held: Held, oai: GuardProvider
) -> None:
    oai.web_searches = 2
    answer = await client.responses.create(
        model="gpt-4o-mini", input="Weather?", max_output_tokens=50, tools=WEB, max_tool_calls=3
    )
    assert [item.type for item in answer.output].count("web_search_call") == 2
    assert oai.requests[0]["max_tool_calls"] == 3
    tokens_in = input_tokens(fence, "gpt-4o-mini", {"input": "Weather?", "tools": WEB})
    assert held.reservations[0].amount == up(
        per_m(tokens_in, "0.15") + per_m(50, "0.6") + 3 * SEARCH
    )
    tokens = per_m(1000, "0.15") + per_m(200, "0.6")
    assert await spent(fence) == (tokens + 2 * SEARCH, 0)


async def test_web_search_without_a_limit_gets_the_default_allowance_written(
    client: Any, fence: TokenFence, held: Held, oai: GuardProvider
) -> None:
    oai.web_searches = 1
    stream = await client.responses.create(
        model="gpt-4o-mini", input="Weather?", max_output_tokens=50, tools=WEB, stream=True
    )
    async for _ in stream:
        pass
    assert oai.requests[0]["max_tool_calls"] == DEFAULT_HOSTED_TOOL_CALLS
    tokens_in = input_tokens(fence, "gpt-4o-mini", {"input": "Weather?", "tools": WEB})
    assert held.reservations[0].amount == up(
        per_m(tokens_in, "0.15") + per_m(50, "0.6") + DEFAULT_HOSTED_TOOL_CALLS * SEARCH
    )
    tokens = per_m(1000, "0.15") + per_m(200, "0.6")
    assert await spent(fence) == (tokens + SEARCH, 0)


async def test_a_hosted_tool_nothing_prices_is_refused_before_sending(
    client: Any, fence: TokenFence, oai: GuardProvider
) -> None:
    with pytest.raises(ModelNotPriced, match="web_search"):
        await client.responses.create(model="gpt-4.1-nano", input="Weather?", tools=WEB)
    with pytest.raises(ModelNotPriced, match="code_interpreter"):
        await client.responses.create(
            model="gpt-4o-mini",
            input="Sum.",
            tools=[{"type": "code_interpreter", "container": {"type": "auto"}}],
        )
    assert oai.calls == 0


async def test_anthropic_fast_mode_is_refused_where_nothing_prices_it(
    fence: TokenFence, make_client: Callable[[str], Any], ant: FakeAnthropic
) -> None:
    claude = fence.guard(make_client("AsyncAnthropic"), tenant="acme")
    with pytest.raises(ModelNotPriced, match="speed='fast'") as info:
        await claude.messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=MSGS, speed="fast"
        )
    assert isinstance(info.value, anthropic.UnprocessableEntityError)
    assert ant.calls == 0


async def test_anthropic_fast_mode_is_held_and_charged_at_its_price(
    fence: TokenFence, make_client: Callable[[str], Any], held: Held, ant: FakeAnthropic
) -> None:
    claude = fence.guard(make_client("AsyncAnthropic"), tenant="acme")
    await claude.messages.create(
        model="claude-opus-4-8", max_tokens=50, messages=MSGS, speed="fast"
    )
    assert ant.requests[0]["speed"] == "fast"
    tokens = fence.prices.input_tokens("claude-opus-4-8", MSGS)
    assert held.reservations[0].amount == up(per_m(tokens, "10") + per_m(50, "50"))
    assert await spent(fence) == (per_m(1000, "10") + per_m(200, "50"), 0)


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_web_search_is_held_per_use_and_charged_per_search(
    fence: TokenFence,
    make_client: Callable[[str], Any],
    held: Held,
    ant: FakeAnthropic,
    stream: bool,
) -> None:
    claude = fence.guard(make_client("AsyncAnthropic"), tenant="acme")
    ant.web_searches = 2
    tools = [{"type": "web_search_20250305", "name": "web_search"}]
    answer = await claude.messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=MSGS, tools=tools, stream=stream
    )
    if stream:
        async for _ in answer:
            pass
    assert ant.requests[0]["tools"][0]["max_uses"] == DEFAULT_HOSTED_TOOL_CALLS
    tokens = fence.prices.input_tokens("claude-haiku-4-5", MSGS, tools)
    assert held.reservations[0].amount == up(
        per_m(tokens, "1") + per_m(50, "5") + DEFAULT_HOSTED_TOOL_CALLS * SEARCH
    )
    assert await spent(fence) == (per_m(1000, "1") + per_m(200, "5") + 2 * SEARCH, 0)
    limited = [{**tools[0], "max_uses": 3}]
    await claude.messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=MSGS, tools=limited
    )
    assert ant.requests[1]["tools"][0]["max_uses"] == 3
    tokens = fence.prices.input_tokens("claude-haiku-4-5", MSGS, limited)
    assert held.reservations[1].amount == up(per_m(tokens, "1") + per_m(50, "5") + 3 * SEARCH)
