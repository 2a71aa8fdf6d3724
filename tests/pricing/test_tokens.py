"""Offline token counts: OpenAI's own counts for OpenAI models, never-below bounds for others."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import tiktoken

from tokenfence_asgi.errors import ConfigError
from tokenfence_asgi.pricing import tokens
from tokenfence_asgi.pricing.book import ModelPrice, PriceBook
from tokenfence_asgi.pricing.tokens import byte_bound, tokenizer_for

ROOT = Path(__file__).resolve().parents[2]
OPENAI = ["gpt-4o", "gpt-4o-mini", "o3", "gpt-5", "gpt-4", "gpt-3.5-turbo", "azure/gpt-4o"]
OTHERS = ["claude-sonnet-4-5", "anthropic/claude-3-5-haiku-20241022", "my-llama"]

# Text that stresses tokenizers: words, runs of spaces and newlines, punctuation, digits, CJK,
# emoji, characters NFKC expands (U+FDFA is 18 letters), combining marks, surrogate-free.
_HARD = ["\u0301", "\ufdfa", "\ufb01", "\uff21", "\u3000"]  # combining, NFKC-expanding, ideographic
ALPHABET = st.sampled_from(
    [*"ab Z09 .,!?'\n\r\t/-_", "  ", "\n\n", " the", "ing", "中", "文", "😀", "é", *_HARD]
)
TEXTS = st.lists(ALPHABET, max_size=400).map("".join) | st.text(max_size=300)
MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": TEXTS},
        optional={"name": st.from_regex(r"[a-z]{1,8}", fullmatch=True)},
    ),
    min_size=1,
    max_size=4,
)


def litellm_tokenizers() -> Path:
    """The tokenizer files LiteLLM ships (a dev dependency), found without importing it."""
    spec = importlib.util.find_spec("litellm")
    assert spec is not None
    assert spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]) / "litellm_core_utils" / "tokenizers"


@pytest.fixture(scope="module")
def reference() -> dict[str, tiktoken.Encoding]:
    """tiktoken's own o200k_base and cl100k_base, from the copies LiteLLM ships (no network)."""
    cache = litellm_tokenizers()
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        return {name: tiktoken.get_encoding(name) for name in tokens.ENCODINGS}
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


def test_shipped_encodings_are_tiktokens_own(reference: dict[str, tiktoken.Encoding]) -> None:
    for name, official in reference.items():
        ours = tokens._encoding(name)
        assert ours._pat_str == official._pat_str
        assert ours._special_tokens == official._special_tokens
        assert ours._mergeable_ranks == official._mergeable_ranks


def test_known_counts() -> None:
    """Counts published by OpenAI and tiktoken's documentation."""
    book = PriceBook()
    # OpenAI's chat API reference: this exchange reports "prompt_tokens": 19.
    hello = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"},
    ]
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-4", "gpt-3.5-turbo"):
        assert book.input_tokens(model, hello) == 19
    assert book.text_tokens("gpt-4", "tiktoken is great!") == 6  # tiktoken's README
    assert book.text_tokens("gpt-4o", "hello world") == 2
    # a name costs one more token than its text
    named = [{"role": "user", "content": "Hello!", "name": "bob"}]
    assert book.input_tokens("gpt-4o", named) == 3 + 1 + 2 + 1 + 1 + 3
    # no tokenizer for Claude: UTF-8 bytes plus framing
    assert book.text_tokens("claude-sonnet-4-5", "Hello!") == 6
    assert book.text_tokens("claude-sonnet-4-5", "\ufdfa") == 33  # NFKC: 18 ASCII/Arabic letters


def test_which_models_get_tiktoken() -> None:
    assert tokenizer_for("gpt-4o").encoding == "o200k_base"
    assert tokenizer_for("openai/gpt-4.1-mini").encoding == "o200k_base"
    assert tokenizer_for("azure/gpt-4o").encoding == "o200k_base"
    assert tokenizer_for("gpt-oss-20b").encoding == "o200k_base"  # o200k_harmony's ranks
    assert tokenizer_for("gpt-4").encoding == "cl100k_base"
    assert tokenizer_for("text-embedding-3-small").encoding == "cl100k_base"
    for model in ("claude-sonnet-4-5", "bedrock/gpt-4o", "my-llama", "davinci"):
        assert not tokenizer_for(model).exact


@settings(max_examples=300, deadline=None)
@given(text=TEXTS)
def test_the_byte_bound_is_never_below_tiktoken(
    reference: dict[str, tiktoken.Encoding], text: str
) -> None:
    """For any text, byte_bound(text) >= its o200k_base and cl100k_base token counts."""
    for encoding in reference.values():
        assert byte_bound(text) >= len(encoding.encode_ordinary(text))


@settings(max_examples=300, deadline=None)
@given(text=TEXTS)
def test_the_byte_bound_covers_a_normalizing_tokenizer(text: str) -> None:
    """For any text, byte_bound(text) >= the UTF-8 bytes of its NFKC form."""
    assert byte_bound(text) >= len(unicodedata.normalize("NFKC", text).encode("utf-8", "replace"))


@settings(max_examples=200, deadline=None)
@given(text=TEXTS, chunk=st.integers(min_value=1, max_value=40))
def test_counting_in_chunks_is_exact(
    reference: dict[str, tiktoken.Encoding], text: str, chunk: int
) -> None:
    """For any text and chunk size, the chunked count equals tiktoken's count of the whole."""
    saved = tokens._CHUNK_CHARS
    tokens._CHUNK_CHARS = chunk
    try:
        for name, encoding in reference.items():
            counted = tokens.Tokenizer(name, 0, 0, 0, 0, 0, 0).text(text)
            whole = len(encoding.encode_ordinary(text))
            if all(countable for _, countable in tokens._chunks(text)):
                assert counted == whole
            else:
                assert counted >= whole
    finally:
        tokens._CHUNK_CHARS = saved


@settings(max_examples=150, deadline=None)
@given(messages=MESSAGES)
def test_message_counts_for_openai_models_are_litellms(messages: list[dict[str, str]]) -> None:
    """For any chat, the OpenAI count equals LiteLLM's token_counter (the same rule)."""
    import litellm

    book = PriceBook()
    for model in ("gpt-4o-mini", "gpt-4"):
        assert book.input_tokens(model, messages) == litellm.token_counter(
            model=model, messages=messages
        )


@settings(max_examples=150, deadline=None)
@given(messages=MESSAGES)
def test_bounds_for_other_models_are_never_below_any_tokenizer(
    reference: dict[str, tiktoken.Encoding], claude_v1: Any, messages: list[dict[str, str]]
) -> None:
    """For any chat, a Claude bound >= tiktoken's and Claude v1's counts of it, with framing."""
    book = PriceBook()
    for model in OTHERS:
        bound = book.input_tokens(model, messages)
        for encoding in reference.values():
            framed = 3 + sum(
                4 + sum(len(encoding.encode_ordinary(v)) for v in m.values()) for m in messages
            )
            assert bound >= framed
        texts = [v for m in messages for v in m.values()]
        assert bound >= sum(len(claude_v1.encode(t).ids) for t in texts)


@pytest.fixture(scope="module")
def claude_v1() -> Any:
    """Anthropic's published (Claude 1/2) tokenizer, as LiteLLM ships it (with ``tokenizers``)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(litellm_tokenizers() / "anthropic_tokenizer.json"))


TOOL = st.fixed_dictionaries(
    {
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {
                "name": st.from_regex(r"[a-z_]{1,20}", fullmatch=True),
                "description": TEXTS,
                "parameters": st.fixed_dictionaries(
                    {
                        "type": st.just("object"),
                        "properties": st.dictionaries(
                            st.from_regex(r"[a-z]{1,10}", fullmatch=True),
                            st.fixed_dictionaries(
                                {"type": st.sampled_from(["string", "integer", "boolean"])},
                                optional={"description": TEXTS},
                            ),
                            max_size=4,
                        ),
                    }
                ),
            }
        ),
    }
)


@settings(max_examples=100, deadline=None)
@given(messages=MESSAGES, tools=st.lists(TOOL, min_size=1, max_size=3))
def test_tools_count_at_least_what_litellm_counts(
    messages: list[dict[str, str]], tools: list[dict[str, object]]
) -> None:
    """For any chat with tools, our count >= LiteLLM's (OpenAI's rendering of the tools)."""
    import litellm

    book = PriceBook()
    for model in ("gpt-4o-mini", "gpt-4", "claude-sonnet-4-5"):
        ours = book.input_tokens(model, messages, tools)
        assert ours >= litellm.token_counter(model=model, messages=messages, tools=tools)


def test_images_count_the_most_one_image_can_cost() -> None:
    book = PriceBook()
    text = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}]}]
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with_image = [{"role": "user", "content": [*text[0]["content"], image]}]  # type: ignore[list-item]
    for model, per_image in (
        ("gpt-4o", 1_445),  # 85 + 170 x 8 tiles
        ("gpt-4o-mini", 48_169),  # 2,833 + 5,667 x 8 tiles
        ("claude-sonnet-4-5", 4_784),
        ("my-llama", 48_169),  # unknown: the largest
    ):
        assert book.input_tokens(model, with_image) - book.input_tokens(model, text) == per_image
    anthropic_image = {"type": "image", "source": {"type": "base64", "data": "AAAA"}}
    assert (
        book.input_tokens("claude-sonnet-4-5", [{"role": "user", "content": [anthropic_image]}])
        == book.input_tokens("claude-sonnet-4-5", [{"role": "user", "content": []}]) + 4_784
    )


def test_files_and_audio_are_bounded_by_the_context_window() -> None:
    book = PriceBook({"my-llama": ModelPrice("0.0000001", "0.0000002")})
    pdf = {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0="}}
    empty = [{"role": "user", "content": []}]
    msgs = [{"role": "user", "content": [pdf]}]
    assert book.input_tokens("gpt-4o", empty) < 10
    # the whole input fits in the window, however many files, audio clips and texts it holds
    assert book.input_tokens("gpt-4o", msgs) == 128_000
    two = [{"role": "user", "content": [pdf, {"type": "text", "text": "compare"}, pdf]}]
    assert book.input_tokens("gpt-4o", two) == 128_000
    huge = [{"role": "user", "content": [pdf, {"type": "text", "text": "a " * 200_000}]}]
    assert book.input_tokens("gpt-4o", huge) > 200_000  # counted beyond it: the count holds
    with pytest.raises(ConfigError, match="context window is unknown"):
        book.input_tokens("my-llama", msgs)


def test_a_huge_run_without_a_cut_is_counted_by_its_bytes() -> None:
    """tiktoken's regex overflows its stack on ~1M spaces (a Rust panic): never reached."""
    assert PriceBook().text_tokens("gpt-4o", " " * 1_000_000) == 1_000_000
    assert PriceBook().text_tokens("gpt-4o", "word " * 100_000) == 100_001


def test_no_download_even_with_an_empty_tiktoken_cache(tmp_path: Path) -> None:
    """Counting works with no network: sockets refused, tiktoken's cache empty."""
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network used')\n"
        "socket.socket.connect = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "from tokenfence_asgi.pricing.book import PriceBook\n"
        "b = PriceBook()\n"
        "print(b.text_tokens('gpt-4o', 'hello world'), b.text_tokens('gpt-4', 'hello world'))\n"
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path), "DATA_GYM_CACHE_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["2", "2"]
    assert list(tmp_path.iterdir()) == []
