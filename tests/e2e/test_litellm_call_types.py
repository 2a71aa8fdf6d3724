"""Every paid LiteLLM call type over real HTTP: refused when killed or over budget (the provider
never hears of it), charged LiteLLM's cost of the response, released when the provider fails.

LiteLLM's openai (and cohere, for rerank) provider talks to the loopback fake provider (fixed
usage: 1,000 input and 200 output tokens); a call type priced per call (images, transcription) is
charged its configured price.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import litellm
import pytest
from litellm.integrations.custom_logger import CustomLogger

from tests.e2e.fake_provider import FakeProvider
from tests.e2e.test_litellm_http import MSGS, window
from tests.litellm.litellm_support import close_litellm_clients, own_client, saved_callbacks
from tokenfence_asgi.config import BUILTIN_PLANS, Limit, Plan
from tokenfence_asgi.context import tenant_scope
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import BudgetExceeded, TenantDisabled
from tokenfence_asgi.litellm import TokenFenceCallback
from tokenfence_asgi.money import from_nanos, to_nanos
from tokenfence_asgi.pricing.book import ModelPrice

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:Items? .* on TypedDict class .* using the `ReadOnly` qualifier:UserWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:Accessing the 'model_(computed_)?fields' attribute on the inst:DeprecationWarning"
    ),
]

OPEN = Plan("open", [Limit("1d", max_cost="10")])
CENTS = Plan("cents", [Limit("1d", max_cost="0.05")])
TRANSCRIPTION = ModelPrice.flat("0.006")  # a minute of whisper-1, the most this app uploads
IMAGE = ModelPrice.flat("0.04")  # a standard 1024x1024 dall-e-3 image


class Costs(CustomLogger):
    """LiteLLM's cost of each successful call."""

    def __init__(self) -> None:
        super().__init__()
        self.costs: list[float] = []

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self.costs.append(kwargs["response_cost"])


@pytest.fixture
def fence(make_fence: Callable[..., TokenFence]) -> TokenFence:
    return make_fence(plans=[*BUILTIN_PLANS, OPEN, CENTS], default_plan="open")


@pytest.fixture
async def costs(fence: TokenFence) -> AsyncIterator[Costs]:
    callback = TokenFenceCallback(fence, prices={"whisper-1": TRANSCRIPTION, "dall-e-3": IMAGE})
    spy = Costs()
    with saved_callbacks():
        litellm.callbacks = [callback, spy]
        try:
            yield spy
        finally:
            callback.close()
            await close_litellm_clients()


def calls(url: str) -> dict[str, Callable[[], Any]]:
    api: dict[str, Any] = {"api_base": url, "api_key": "sk-fake"}
    return {
        "acompletion": lambda: litellm.acompletion(
            model="openai/gpt-4o-mini", messages=MSGS, max_tokens=300, **api
        ),
        "acompletion-stream": lambda: litellm.acompletion(
            model="openai/gpt-4o-mini", messages=MSGS, max_tokens=300, stream=True, **api
        ),
        "aresponses": lambda: litellm.aresponses(
            model="openai/gpt-4o-mini", input="Say hello.", max_output_tokens=300, **api
        ),
        "aresponses-stream": lambda: litellm.aresponses(
            model="openai/gpt-4o-mini",
            input="Say hello.",
            max_output_tokens=300,
            stream=True,
            **api,
        ),
        "atext_completion": lambda: litellm.atext_completion(
            model="openai/gpt-3.5-turbo-instruct",
            prompt="Say hello.",
            max_tokens=300,
            client=own_client(url),
            **api,
        ),
        "aembedding": lambda: litellm.aembedding(
            model="openai/text-embedding-3-small", input=["Say hello."], **api
        ),
        "aspeech": lambda: litellm.aspeech(
            model="openai/tts-1", input="Hello there.", voice="alloy", **api
        ),
        "aimage_generation": lambda: litellm.aimage_generation(
            model="openai/dall-e-3", prompt="a lighthouse", n=2, **api
        ),
        "arerank": lambda: litellm.arerank(
            model="cohere/rerank-english-v3.0",
            query="hello",
            documents=["a", "b"],
            api_key="fake",
            api_base=url.removesuffix("/v1"),
        ),
        "atranscription": lambda: litellm.atranscription(
            model="openai/whisper-1", file=("a.mp3", b"ID3fake-audio", "audio/mpeg"), **api
        ),
    }


NAMES = list(calls(""))


async def run(server: tuple[FakeProvider, str], name: str) -> Any:
    response = await calls(server[1])[name]()
    if hasattr(response, "__aiter__"):
        async for _ in response:
            pass
    return response


async def settled(fence: TokenFence) -> tuple[Decimal, Decimal]:
    for _ in range(500):  # the success event commits after the caller has the response
        used, held = await window(fence)
        if held == 0:
            break
        await asyncio.sleep(0.002)
    return used, held


@pytest.mark.parametrize("name", NAMES)
async def test_refused_when_killed(
    server: tuple[FakeProvider, str],
    provider: FakeProvider,
    fence: TokenFence,
    costs: Costs,
    name: str,
) -> None:
    await fence.kill("acme")
    async with tenant_scope("acme"):
        with pytest.raises(TenantDisabled):
            await run(server, name)
    assert provider.calls == 0


@pytest.mark.parametrize("name", NAMES)
async def test_refused_over_budget(
    server: tuple[FakeProvider, str],
    provider: FakeProvider,
    fence: TokenFence,
    costs: Costs,
    name: str,
) -> None:
    await fence.set_plan("acme", "cents")
    await fence.reserve("acme", "0.049999999")
    async with tenant_scope("acme"):
        with pytest.raises(BudgetExceeded):
            await run(server, name)
    assert provider.calls == 0


@pytest.mark.parametrize("name", NAMES)
async def test_charged_litellms_cost(
    server: tuple[FakeProvider, str],
    provider: FakeProvider,
    fence: TokenFence,
    costs: Costs,
    name: str,
) -> None:
    async with tenant_scope("acme"):
        await run(server, name)
    used, held = await settled(fence)
    assert (provider.calls, held) == (1, 0)
    if name == "atranscription":
        assert used == TRANSCRIPTION.per_call  # the configured price wins
    elif name == "aimage_generation":
        assert used == 2 * IMAGE.per_call  # two images
    else:
        assert used == from_nanos(to_nanos(str(costs.costs[-1]))) > 0


@pytest.mark.parametrize("name", NAMES)
async def test_released_when_the_provider_fails(
    server: tuple[FakeProvider, str],
    provider: FakeProvider,
    fence: TokenFence,
    costs: Costs,
    name: str,
) -> None:
    provider.fail_next = 10  # LiteLLM may retry
    async with tenant_scope("acme"):
        with pytest.raises(Exception):  # noqa: B017, PT011 - each call type raises its own
            await run(server, name)
    assert provider.calls >= 1
    assert await settled(fence) == (0, 0)


async def test_an_abandoned_http_stream_is_charged_what_it_streamed(
    server: tuple[FakeProvider, str], provider: FakeProvider, fence: TokenFence, costs: Costs
) -> None:
    provider.words = tuple(f" w{i}" for i in range(100))
    try:
        async with tenant_scope("acme"):
            stream = await calls(server[1])["acompletion-stream"]()
            seen = 0
            async for _ in stream:
                seen += 1
                if seen == 6:  # the role chunk and five words
                    break
            await stream.aclose()
        used, held = await settled(fence)
    finally:
        provider.words = FakeProvider.words
    gpt = ModelPrice.per_million("0.15", "0.60")
    hold = gpt.cost(1000, 300)  # at most what the fake's usage could be
    assert held == 0
    assert 0 < used < hold / 5  # the input and a handful of tokens, not the hold


async def test_an_abandoned_responses_stream_is_charged_its_hold(
    server: tuple[FakeProvider, str], provider: FakeProvider, fence: TokenFence, costs: Costs
) -> None:
    """LiteLLM shows no chunk of a Responses API stream to a callback: the bound is the hold."""
    async with tenant_scope("acme"):
        stream = await calls(server[1])["aresponses-stream"]()
        held = (await window(fence))[1]
        async for _ in stream:
            break
    used, left = await settled(fence)
    assert (used, left) == (held, 0)
