"""What tests that drive LiteLLM share: its global callback lists restored, its clients closed."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator

import openai

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

CALLBACK_LISTS = (
    "callbacks",
    "input_callback",
    "success_callback",
    "failure_callback",
    "_async_success_callback",
    "_async_failure_callback",
)
"""LiteLLM copies callbacks into several global lists: a test restores them all."""

_OWN_CLIENTS: list[openai.AsyncOpenAI] = []


@contextlib.contextmanager
def saved_callbacks() -> Iterator[None]:
    """Restore LiteLLM's callback lists as they were, whatever the test set."""
    saved = {name: list(getattr(litellm, name)) for name in CALLBACK_LISTS}
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(litellm, name, value)


def own_client(url: str) -> openai.AsyncOpenAI:
    """An OpenAI client for LiteLLM's text completions, which otherwise build one per call and
    leave it open; closed by ``close_litellm_clients``."""
    client = openai.AsyncOpenAI(base_url=url, api_key="sk-fake", max_retries=0)
    _OWN_CLIENTS.append(client)
    return client


async def close_litellm_clients() -> None:
    """Close the HTTP clients LiteLLM cached on this test's event loop, which ends with it."""
    while _OWN_CLIENTS:
        await _OWN_CLIENTS.pop().close()
    await litellm.close_litellm_async_clients()
    cache = litellm.in_memory_llm_clients_cache
    for client in list(getattr(cache, "cache_dict", {}).values()):
        close = getattr(client, "close", None) or getattr(client, "aclose", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                await result
    cache.flush_cache()
