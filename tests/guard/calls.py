"""The paid calls of the guard tests, each written for an async and a sync SDK client.

A ``Case`` is one call (``chat``, ``responses_stream``, ``messages_stream_helper``, ...): the
SDK it belongs to, a model the test plans allow and one they do not, and what the call costs at
list price for the loopback servers' fixed usage (1,000 input and 200 output tokens). Each call
reads its answer to the end, as an app would, and checks what the caller sees (a chat stream's
every chunk has a choice: the usage chunk the guard asked for is not passed on).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import anyio

from tests.guard.conftest import MSGS, kind_is_async, list_cost

SPEECH = "Hello there"  # 11 characters at tts-1's $15 per million characters

AsyncCall = Callable[[Any, str], Awaitable[None]]
SyncCall = Callable[[Any, str], None]


@dataclass(frozen=True)
class Case:
    """One paid call: its SDK, an allowed and a refused model, and its cost at list price."""

    name: str
    sdk: str
    model: str
    denied: str
    cost: Decimal
    run_async: AsyncCall
    run_sync: SyncCall

    async def run(self, client: Any, model: str | None = None) -> None:
        """Make the call on ``client`` (a sync client in a worker thread of this loop)."""
        chosen = self.model if model is None else model
        if kind_is_async(client):
            await self.run_async(client, chosen)
        else:
            await anyio.to_thread.run_sync(self.run_sync, client, chosen)


# -- OpenAI --------------------------------------------------------------------------------------


async def chat(c: Any, m: str) -> None:
    r = await c.chat.completions.create(model=m, messages=MSGS)
    assert r.choices[0].message.content


def chat_s(c: Any, m: str) -> None:
    assert c.chat.completions.create(model=m, messages=MSGS).choices[0].message.content


async def chat_stream(c: Any, m: str) -> None:
    stream = await c.chat.completions.create(model=m, messages=MSGS, stream=True)
    async for chunk in stream:
        assert chunk.choices  # no usage-only chunk the caller did not ask for


def chat_stream_s(c: Any, m: str) -> None:
    for chunk in c.chat.completions.create(model=m, messages=MSGS, stream=True):
        assert chunk.choices


async def chat_stream_helper(c: Any, m: str) -> None:
    async with c.chat.completions.stream(model=m, messages=MSGS) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.content


def chat_stream_helper_s(c: Any, m: str) -> None:
    with c.chat.completions.stream(model=m, messages=MSGS) as stream:
        assert stream.get_final_completion().choices[0].message.content


async def chat_parse(c: Any, m: str) -> None:
    await c.chat.completions.parse(model=m, messages=MSGS)


def chat_parse_s(c: Any, m: str) -> None:
    c.chat.completions.parse(model=m, messages=MSGS)


async def responses(c: Any, m: str) -> None:
    assert (await c.responses.create(model=m, input="Say hello.")).output_text


def responses_s(c: Any, m: str) -> None:
    assert c.responses.create(model=m, input="Say hello.").output_text


async def responses_stream(c: Any, m: str) -> None:
    stream = await c.responses.create(model=m, input="Say hello.", stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[-1] == "response.completed"


def responses_stream_s(c: Any, m: str) -> None:
    kinds = [event.type for event in c.responses.create(model=m, input="Hi.", stream=True)]
    assert kinds[-1] == "response.completed"


async def embeddings(c: Any, m: str) -> None:
    assert (await c.embeddings.create(model=m, input="hello")).data


def embeddings_s(c: Any, m: str) -> None:
    assert c.embeddings.create(model=m, input="hello").data


async def images(c: Any, m: str) -> None:
    assert len((await c.images.generate(model=m, prompt="a cat", n=2)).data) == 2


def images_s(c: Any, m: str) -> None:
    assert len(c.images.generate(model=m, prompt="a cat", n=2).data) == 2


async def speech(c: Any, m: str) -> None:
    assert (await c.audio.speech.create(model=m, voice="alloy", input=SPEECH)).content


def speech_s(c: Any, m: str) -> None:
    assert c.audio.speech.create(model=m, voice="alloy", input=SPEECH).content


async def completions(c: Any, m: str) -> None:
    assert (await c.completions.create(model=m, prompt="Say hello.")).choices[0].text


def completions_s(c: Any, m: str) -> None:
    assert c.completions.create(model=m, prompt="Say hello.").choices[0].text


AUDIO = ("hello.mp3", b"ID3 not really audio")


async def transcription(c: Any, m: str) -> None:
    assert (await c.audio.transcriptions.create(model=m, file=AUDIO)).text


def transcription_s(c: Any, m: str) -> None:
    assert c.audio.transcriptions.create(model=m, file=AUDIO).text


async def raw(c: Any, m: str) -> None:
    response = await c.chat.completions.with_raw_response.create(model=m, messages=MSGS)
    assert response.parse().choices


def raw_s(c: Any, m: str) -> None:
    assert c.chat.completions.with_raw_response.create(model=m, messages=MSGS).parse().choices


async def streaming_response(c: Any, m: str) -> None:
    create = c.chat.completions.with_streaming_response.create
    async with create(model=m, messages=MSGS, stream=True) as response:
        lines = [line async for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert not any('"choices": []' in line for line in lines)


def streaming_response_s(c: Any, m: str) -> None:
    create = c.chat.completions.with_streaming_response.create
    with create(model=m, messages=MSGS, stream=True) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


async def with_options(c: Any, m: str) -> None:
    await (
        c.with_options(timeout=20)
        .copy(max_retries=0)
        .chat.completions.create(model=m, messages=MSGS)
    )


def with_options_s(c: Any, m: str) -> None:
    c.with_options(timeout=20).copy(max_retries=0).chat.completions.create(model=m, messages=MSGS)


# -- Anthropic -----------------------------------------------------------------------------------


async def messages(c: Any, m: str) -> None:
    assert (await c.messages.create(model=m, max_tokens=300, messages=MSGS)).content


def messages_s(c: Any, m: str) -> None:
    assert c.messages.create(model=m, max_tokens=300, messages=MSGS).content


async def messages_stream(c: Any, m: str) -> None:
    stream = await c.messages.create(model=m, max_tokens=300, messages=MSGS, stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[-1] == "message_stop"


def messages_stream_s(c: Any, m: str) -> None:
    stream = c.messages.create(model=m, max_tokens=300, messages=MSGS, stream=True)
    assert [event.type for event in stream][-1] == "message_stop"


async def messages_stream_helper(c: Any, m: str) -> None:
    async with c.messages.stream(model=m, max_tokens=300, messages=MSGS) as stream:
        assert (await stream.get_final_message()).content


def messages_stream_helper_s(c: Any, m: str) -> None:
    with c.messages.stream(model=m, max_tokens=300, messages=MSGS) as stream:
        assert stream.get_final_message().content


async def beta_messages(c: Any, m: str) -> None:
    assert (await c.beta.messages.create(model=m, max_tokens=300, messages=MSGS)).content


def beta_messages_s(c: Any, m: str) -> None:
    assert c.beta.messages.create(model=m, max_tokens=300, messages=MSGS).content


async def messages_raw(c: Any, m: str) -> None:
    create = c.messages.with_raw_response.create
    response = await create(model=m, max_tokens=300, messages=MSGS)
    assert (await response.parse()).content


def messages_raw_s(c: Any, m: str) -> None:
    create = c.messages.with_raw_response.create
    assert create(model=m, max_tokens=300, messages=MSGS).parse().content


async def messages_with_options(c: Any, m: str) -> None:
    client = c.with_options(timeout=20)
    assert (await client.messages.create(model=m, max_tokens=300, messages=MSGS)).content


def messages_with_options_s(c: Any, m: str) -> None:
    client = c.with_options(timeout=20)
    assert client.messages.create(model=m, max_tokens=300, messages=MSGS).content


CHAT = list_cost("gpt-4o-mini", 1000, 200)
CLAUDE = list_cost("claude-haiku-4-5", 1000, 200)


def _case(
    name: str, sdk: str, model: str, denied: str, cost: Decimal, pair: tuple[AsyncCall, SyncCall]
) -> Case:
    return Case(name, sdk, model, denied, cost, *pair)


CASES = [
    _case("chat", "openai", "gpt-4o-mini", "gpt-4o", CHAT, (chat, chat_s)),
    _case("chat_stream", "openai", "gpt-4o-mini", "gpt-4o", CHAT, (chat_stream, chat_stream_s)),
    _case(
        "chat_stream_helper",
        "openai",
        "gpt-4o-mini",
        "gpt-4o",
        CHAT,
        (chat_stream_helper, chat_stream_helper_s),
    ),
    _case("chat_parse", "openai", "gpt-4o-mini", "gpt-4o", CHAT, (chat_parse, chat_parse_s)),
    _case(
        "responses",
        "openai",
        "gpt-4.1-mini",
        "gpt-4.1",
        list_cost("gpt-4.1-mini", 1000, 200),
        (responses, responses_s),
    ),
    _case(
        "responses_stream",
        "openai",
        "gpt-4.1-mini",
        "gpt-4.1",
        list_cost("gpt-4.1-mini", 1000, 200),
        (responses_stream, responses_stream_s),
    ),
    _case(
        "embeddings",
        "openai",
        "text-embedding-3-small",
        "text-embedding-3-large",
        list_cost("text-embedding-3-small", 1000, 0),
        (embeddings, embeddings_s),
    ),
    _case("images", "openai", "gpt-image-1", "dall-e-3", Decimal("0.08"), (images, images_s)),
    _case(
        "speech",
        "openai",
        "tts-1",
        "tts-1-hd",
        Decimal("0.000015") * len(SPEECH),
        (speech, speech_s),
    ),
    _case(
        "completions",
        "openai",
        "gpt-3.5-turbo-instruct",
        "davinci-002",
        list_cost("gpt-3.5-turbo-instruct", 1000, 200),
        (completions, completions_s),
    ),
    _case(
        "transcription",
        "openai",
        "whisper-1",
        "gpt-4o-transcribe",
        Decimal("0.006"),
        (transcription, transcription_s),
    ),
    _case("with_raw_response", "openai", "gpt-4o-mini", "gpt-4o", CHAT, (raw, raw_s)),
    _case(
        "with_streaming_response",
        "openai",
        "gpt-4o-mini",
        "gpt-4o",
        CHAT,
        (streaming_response, streaming_response_s),
    ),
    _case("with_options", "openai", "gpt-4o-mini", "gpt-4o", CHAT, (with_options, with_options_s)),
    _case(
        "messages",
        "anthropic",
        "claude-haiku-4-5",
        "claude-sonnet-4-5",
        CLAUDE,
        (messages, messages_s),
    ),
    _case(
        "messages_stream",
        "anthropic",
        "claude-haiku-4-5",
        "claude-sonnet-4-5",
        CLAUDE,
        (messages_stream, messages_stream_s),
    ),
    _case(
        "messages_stream_helper",
        "anthropic",
        "claude-haiku-4-5",
        "claude-sonnet-4-5",
        CLAUDE,
        (messages_stream_helper, messages_stream_helper_s),
    ),
    _case(
        "beta_messages",
        "anthropic",
        "claude-haiku-4-5",
        "claude-sonnet-4-5",
        CLAUDE,
        (beta_messages, beta_messages_s),
    ),
    _case(
        "messages_with_raw_response",
        "anthropic",
        "claude-haiku-4-5",
        "claude-sonnet-4-5",
        CLAUDE,
        (messages_raw, messages_raw_s),
    ),
    _case(
        "messages_with_options",
        "anthropic",
        "claude-haiku-4-5",
        "claude-sonnet-4-5",
        CLAUDE,
        (messages_with_options, messages_with_options_s),
    ),
]
