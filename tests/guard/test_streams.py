"""Streams a caller stops reading: charged their input and the output they produced.

The loopback servers stream one word per event, slowly, so that a caller can stop after the
first word. The charge is then the input (the estimate's for OpenAI, which reports usage only at
the end; the provider's for Anthropic, which reports it first) plus the output produced so far,
never more than the hold; nothing stays held. Also: a stream left open is settled when its
``tenant_scope`` ends, a provider error in the middle of a stream, and a sync client used
with no event loop at all.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import anthropic
import anyio
import openai
import pytest
import redis

from tests.e2e.fake_anthropic import FakeAnthropic
from tests.guard.conftest import MSGS, PLANS, PRICES, list_cost
from tests.guard.providers import GuardProvider
from tests.guard.test_matrix import spent
from tokenfence_asgi.context import tenant_scope
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.pricing.call import CallShape, Estimate

pytestmark = pytest.mark.slow

DELAY_S = 0.1


def openai_estimate(fence: TokenFence, limit: int) -> Estimate:
    return fence.prices.bound("gpt-4o-mini", CallShape("chat", tuple(MSGS), output_limit=limit))


def all_of(fence: TokenFence, words: tuple[str, ...], model: str = "gpt-4o-mini") -> int:
    """The output tokens of the whole stream, as the price book counts them (the most an
    abandoned stream can be charged for)."""
    return max(fence.prices.text_tokens(model, "".join(words)), len(words))


def assert_produced(used: Decimal, low: Decimal, high: Decimal, hold: Decimal) -> None:
    """Charged at least one output token, at most what the whole stream holds, below the hold."""
    assert low <= used <= high < hold


async def test_an_abandoned_openai_stream(
    fence: TokenFence, make_client: Callable[[str], Any], oai: GuardProvider
) -> None:
    oai.chunk_delay_s = DELAY_S
    client = fence.guard(make_client("AsyncOpenAI"), tenant="acme")
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MSGS, stream=True, max_tokens=300
    )
    async for chunk in stream:
        if chunk.choices[0].delta.content:
            break
    await stream.close()
    used, held = await spent(fence)
    estimate = openai_estimate(fence, 300)
    hold = Decimal(estimate.amount_nanos) / 10**9
    assert held == 0
    assert_produced(used, estimate.cost_of(1), estimate.cost_of(all_of(fence, oai.words)), hold)


async def test_an_abandoned_sync_openai_stream(
    fence: TokenFence, make_client: Callable[[str], Any], oai: GuardProvider
) -> None:
    oai.chunk_delay_s = DELAY_S
    client = fence.guard(make_client("OpenAI"), tenant="acme")

    def read_one() -> None:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=MSGS, stream=True, max_tokens=300
        )
        for chunk in stream:
            if chunk.choices[0].delta.content:
                break
        stream.close()

    await anyio.to_thread.run_sync(read_one)
    used, held = await spent(fence)
    estimate = openai_estimate(fence, 300)
    assert held == 0
    assert estimate.cost_of(1) <= used <= estimate.cost_of(all_of(fence, oai.words))


@pytest.mark.parametrize("helper", [False, True])
async def test_an_abandoned_anthropic_stream(
    helper: bool, fence: TokenFence, make_client: Callable[[str], Any], ant: FakeAnthropic
) -> None:
    ant.chunk_delay_s = DELAY_S
    client = fence.guard(make_client("AsyncAnthropic"), tenant="acme")
    if helper:
        async with client.messages.stream(
            model="claude-haiku-4-5", max_tokens=300, messages=MSGS
        ) as stream:
            async for text in stream.text_stream:
                assert text
                break
    else:
        events = await client.messages.create(
            model="claude-haiku-4-5", max_tokens=300, messages=MSGS, stream=True
        )
        async for event in events:
            if event.type == "content_block_delta":
                break
        await events.close()
    used, held = await spent(fence)
    assert held == 0
    # Anthropic reports the input first: the provider's 1,000 tokens, not the estimate
    low = list_cost("claude-haiku-4-5", 1000, 1)
    assert (
        low
        <= used
        <= list_cost("claude-haiku-4-5", 1000, all_of(fence, ant.words, "claude-haiku-4-5"))
    )


async def test_a_streaming_response_is_charged_when_read_and_its_hold_when_not(
    fence: TokenFence, make_client: Callable[[str], Any], oai: GuardProvider
) -> None:
    client = fence.guard(make_client("AsyncOpenAI"), tenant="acme")
    create = client.chat.completions.with_streaming_response.create
    async with create(model="gpt-4o-mini", messages=MSGS, max_tokens=300) as response:
        assert (await response.parse()).choices[0].message.content
    chat = list_cost("gpt-4o-mini", 1000, 200)
    assert await spent(fence) == (chat, 0)
    async with create(model="gpt-4o-mini", messages=MSGS, max_tokens=300):
        pass  # the answer was made, and nobody read its usage: the hold is charged
    hold = Decimal(openai_estimate(fence, 300).amount_nanos) / 10**9
    assert await spent(fence) == (chat + hold, 0)


async def test_a_stream_left_open_is_settled_when_its_scope_ends(
    fence: TokenFence, make_client: Callable[[str], Any], oai: GuardProvider
) -> None:
    oai.chunk_delay_s = DELAY_S
    client = fence.guard(make_client("AsyncOpenAI"))
    async with tenant_scope("acme", feature="chat"):
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MSGS, stream=True, max_tokens=300
        )
        await stream.__anext__()
        assert (await spent(fence))[1] > 0  # held while it runs
    used, held = await spent(fence)
    estimate = openai_estimate(fence, 300)
    assert held == 0
    assert estimate.cost_of(1) <= used <= estimate.cost_of(all_of(fence, oai.words))
    await stream.close()  # a late close charges nothing more
    assert await spent(fence) == (used, 0)


async def test_a_provider_error_in_the_middle_of_a_stream(
    fence: TokenFence, make_client: Callable[[str], Any], ant: FakeAnthropic
) -> None:
    ant.fail_midstream = True
    client = fence.guard(make_client("AsyncAnthropic"), tenant="acme")
    stream = await client.messages.create(
        model="claude-haiku-4-5", max_tokens=300, messages=MSGS, stream=True
    )
    with pytest.raises(anthropic.APIStatusError):
        async for _ in stream:
            pass
    used, held = await spent(fence)
    assert held == 0
    produced = fence.prices.text_tokens("claude-haiku-4-5", ant.words[0])  # the one word sent
    assert used == list_cost("claude-haiku-4-5", 1000, produced)  # and its input


def test_a_sync_client_with_no_event_loop_anywhere(
    redis_url: str,
    prefix: str,
    openai_server: tuple[GuardProvider, str],
    anthropic_server: tuple[FakeAnthropic, str],
    oai: GuardProvider,
    ant: FakeAnthropic,
) -> None:
    fence = TokenFence(
        redis_url=redis_url, prefix=prefix, plans=PLANS, default_plan="open", prices=PRICES
    )
    base = openai.OpenAI(api_key="k", base_url=f"{openai_server[1]}/v1", max_retries=0)
    claude_base = anthropic.Anthropic(api_key="k", base_url=anthropic_server[1], max_retries=0)
    try:
        chat = fence.guard(base, tenant="acme")
        claude = fence.guard(claude_base, tenant="acme")  # both use the fence's one portal
        chat.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
        stream = claude.messages.create(
            model="claude-haiku-4-5", max_tokens=50, messages=MSGS, stream=True
        )
        assert [event.type for event in stream][-1] == "message_stop"
        window = fence.run_sync(fence.status, "acme").windows[0]
        expected = list_cost("gpt-4o-mini", 1000, 200) + list_cost("claude-haiku-4-5", 1000, 200)
        assert (window.used, window.held) == (expected, 0)
    finally:
        fence.run_sync(fence.aclose)
        fence.portal.close()
        base.close()
        claude_base.close()
        keys = redis.Redis.from_url(redis_url)
        for key in keys.scan_iter(match=f"{prefix}:*"):
            keys.delete(key)
        keys.close()


async def test_a_stream_read_raw_is_charged_its_hold(
    fence: TokenFence, make_client: Callable[[str], Any], oai: GuardProvider
) -> None:
    """Bytes read raw (``aiter_raw``: before decoding, where the guard reads the usage) pass
    no meter: the call is charged its hold, never only its input."""
    client = fence.guard(make_client("AsyncOpenAI"), tenant="acme")
    create = client.chat.completions.with_streaming_response.create
    async with create(model="gpt-4o-mini", messages=MSGS, max_tokens=300, stream=True) as response:
        read = b"".join([chunk async for chunk in response.http_response.aiter_raw()])
    assert read.rstrip().endswith(b"data: [DONE]")
    hold = Decimal(openai_estimate(fence, 300).amount_nanos) / 10**9
    assert await spent(fence) == (hold, 0)
    sync = fence.guard(make_client("OpenAI"), tenant="acme")

    def read_sync() -> bytes:
        with sync.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MSGS, max_tokens=300, stream=True
        ) as response:
            return b"".join(response.http_response.iter_raw())

    assert (await anyio.to_thread.run_sync(read_sync)).rstrip().endswith(b"data: [DONE]")
    assert await spent(fence) == (2 * hold, 0)
