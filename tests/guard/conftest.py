"""Fixtures of the guard tests: the loopback OpenAI and Anthropic servers, a fence per store
(real Redis and the embedded store), and the real SDK clients pointed at the servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.fake_anthropic import FakeAnthropic
from tests.e2e.fake_provider import serve
from tests.guard.providers import GuardProvider
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.pricing.book import ModelPrice

MODELS = (
    "gpt-3.5-turbo-instruct",
    "gpt-4o-mini",
    "gpt-4.1-mini",
    "text-embedding-3-small",
    "claude-haiku-4-5",
    "gpt-image-1",
    "tts-1",
    "whisper-1",
)
OPEN = Plan("open", [Limit("1d", max_cost="100")], models=MODELS)
TINY = Plan("tiny", [Limit("1d", max_cost="0.000000001")], models=MODELS)  # one nano-dollar
PLANS = [OPEN, TINY]
PRICES = {
    "gpt-image-1": ModelPrice.flat("0.04"),  # per image
    "dall-e-3": ModelPrice.flat("0.08"),
    "whisper-1": ModelPrice.flat("0.006"),  # a minute, the most this app uploads
}
MSGS = [{"role": "user", "content": "Say hello."}]

# List prices in dollars per million tokens (input, output), as the providers publish them.
LIST_PRICES: dict[str, tuple[str, str]] = {
    "gpt-3.5-turbo-instruct": ("1.50", "2.00"),
    "gpt-4o-mini": ("0.15", "0.60"),
    "gpt-4.1-mini": ("0.40", "1.60"),
    "text-embedding-3-small": ("0.02", "0"),
    "claude-haiku-4-5": ("1", "5"),
}


def list_cost(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    """What ``input_tokens`` and ``output_tokens`` cost on ``model`` at its list price."""
    per_in, per_out = LIST_PRICES[model]
    return (input_tokens * Decimal(per_in) + output_tokens * Decimal(per_out)) / 1_000_000


@pytest.fixture(scope="session")
def openai_server() -> Iterator[tuple[GuardProvider, str]]:
    provider = GuardProvider()
    with serve(provider.app()) as url:
        yield provider, url


@pytest.fixture(scope="session")
def anthropic_server() -> Iterator[tuple[FakeAnthropic, str]]:
    provider = FakeAnthropic()
    with serve(provider.app()) as url:
        yield provider, url


@pytest.fixture
def oai(openai_server: tuple[GuardProvider, str]) -> GuardProvider:
    """The OpenAI server, reset."""
    openai_server[0].reset()
    return openai_server[0]


@pytest.fixture
def ant(anthropic_server: tuple[FakeAnthropic, str]) -> FakeAnthropic:
    """The Anthropic server, reset."""
    anthropic_server[0].reset()
    return anthropic_server[0]


@pytest.fixture
def fence(make_fence: Callable[..., TokenFence]) -> TokenFence:
    return make_fence(plans=PLANS, default_plan="open", prices=PRICES)


CLIENT_KINDS = (
    "AsyncOpenAI",
    "OpenAI",
    "AsyncAzureOpenAI",
    "AzureOpenAI",
    "AsyncAnthropic",
    "Anthropic",
)


@pytest.fixture
async def make_client(
    openai_server: tuple[GuardProvider, str], anthropic_server: tuple[FakeAnthropic, str]
) -> AsyncIterator[Callable[[str], Any]]:
    """Makes an unguarded SDK client of a kind, pointed at its loopback server (no retries)."""
    made: list[Any] = []
    oai_url, ant_url = openai_server[1], anthropic_server[1]

    def make(kind: str) -> Any:
        common: dict[str, Any] = {"max_retries": 0, "timeout": 30}
        if kind in ("AsyncOpenAI", "OpenAI"):
            client = getattr(openai, kind)(api_key="sk-test", base_url=f"{oai_url}/v1", **common)
        elif kind in ("AsyncAzureOpenAI", "AzureOpenAI"):
            client = getattr(openai, kind)(
                api_key="az-test", api_version="2024-10-21", azure_endpoint=oai_url, **common
            )
        else:
            client = getattr(anthropic, kind)(api_key="ak-test", base_url=ant_url, **common)
        made.append(client)
        return client

    yield make
    for client in made:
        if kind_is_async(client):
            await client.close()
        else:
            client.close()


def kind_is_async(client: Any) -> bool:
    return isinstance(client, openai.AsyncOpenAI | anthropic.AsyncAnthropic)
