"""The loopback fake provider the end-to-end LiteLLM tests talk to: one server per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.fake_provider import FakeProvider, serve


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[FakeProvider, str]]:
    """The fake provider of this module, and its OpenAI base URL (``.../v1``)."""
    provider = FakeProvider()
    with serve(provider.app()) as url:
        yield provider, f"{url}/v1"


@pytest.fixture
def provider(server: tuple[FakeProvider, str]) -> FakeProvider:
    """The fake provider, with what the previous test received or changed forgotten."""
    server[0].reset()
    return server[0]


@pytest.fixture
def api(server: tuple[FakeProvider, str]) -> dict[str, str]:
    """What routes a call to the fake provider: its base URL and a dummy key."""
    return {"api_base": server[1], "api_key": "sk-fake"}
