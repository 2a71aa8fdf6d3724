"""Input token counts for worst-case estimates, offline and never below the real count.

OpenAI models (the names tiktoken maps to ``o200k_base`` or ``cl100k_base``) are counted with
tiktoken and the two encodings shipped in the package (``_prices/*.tiktoken.gz``, checked
against tiktoken's pinned SHA-256 when loaded), so nothing is downloaded. Chat framing follows
OpenAI's published rule: 3 tokens per message, 1 per ``name``, 3 to prime the reply.

Every other model (Anthropic's tokenizer is not public, nor are most self-hosted ones) is
bounded by UTF-8 bytes: a byte-level BPE token is at least one byte, so the larger of the byte
length of the text and of its NFKC form (for a tokenizer that normalizes first) is never below
its token count; plus generous framing per message, per request and per tool (Anthropic's
tool-use system prompt is documented at 159-530 tokens; 1,000 are counted).

Images count a fixed bound per image (no download, no decoding): the most the model family can
bill for one image at any size and detail. Audio, files and documents cannot be bounded from
their bytes (a compressed PDF page can hold far more text than its size), so they are reported
as opaque parts: the price book bounds an input holding any by the model's context window.
"""

from __future__ import annotations

import binascii
import gzip
import hashlib
import json
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

import structlog

if TYPE_CHECKING:
    import tiktoken

    from tokenfence_asgi.pricing.call import CallShape

__all__ = [
    "InputCount",
    "Tokenizer",
    "byte_bound",
    "input_flags",
    "media_part",
    "predicted_tokens",
    "shape_input",
    "tokenizer_for",
]

log = structlog.get_logger("tokenfence_asgi")

# One chunk of text given to tiktoken at a time: tiktoken's regex overflows its stack on a
# run of ~1M spaces (a Rust panic), and a single huge piece is slow.
_CHUNK_CHARS = 16_384

# Encodings shipped in the package: tiktoken's own definition (tiktoken_ext.openai_public),
# with the SHA-256 tiktoken pins for the downloaded file.
_ENDOFTEXT, _ENDOFPROMPT = "<|endoftext|>", "<|endofprompt|>"
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
ENCODINGS: Mapping[str, tuple[str, str, Mapping[str, int]]] = {
    "o200k_base": (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        _O200K_PATTERN,
        {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
    "cl100k_base": (
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        _CL100K_PATTERN,
        {
            _ENDOFTEXT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
}
"""Encoding name -> (SHA-256 of the .tiktoken file, split pattern, special tokens)."""

_OPENAI_PREFIXES = ("openai/", "azure/", "text-completion-openai/")

# Most tokens one image can be billed as, by model family (first match on the name without
# its provider prefix). OpenAI tiles (85 + 170 per 512 px tile, at most 8 tiles at
# 2048x768; gpt-4o-mini bills 2,833 + 5,667 per tile) or 32 px patches times a multiplier
# (up to 4,096 patches); Anthropic at most 4,784 (2,576 px long edge). Unknown: the largest.
_IMAGE_TOKENS: tuple[tuple[str, int], ...] = (
    ("gpt-4o-mini", 48_169),
    ("gpt-4o", 1_445),
    ("chatgpt-4o", 1_445),
    ("gpt-4.1-mini", 6_636),
    ("gpt-4.1-nano", 10_077),
    ("gpt-4.1", 1_445),
    ("claude", 4_784),
)
_IMAGE_TOKENS_DEFAULT = 48_169

_TEXT_PARTS = frozenset({"text", "input_text", "output_text", "refusal", "summary_text"})
_OPAQUE_WORDS = ("audio", "file", "document", "video", "pdf")
_NOT_TOKENS = frozenset({"type", "cache_control"})  # request metadata, not model input


def byte_bound(text: str) -> int:
    """Most tokens a byte-level BPE tokenizer can make of ``text``: its UTF-8 bytes, or those
    of its NFKC form when a tokenizer that normalizes first would see more."""
    raw = len(text.encode("utf-8", "surrogatepass"))
    if text.isascii():
        return raw  # NFKC leaves ASCII alone
    folded = unicodedata.normalize("NFKC", text)
    return max(raw, len(folded.encode("utf-8", "surrogatepass")))


@cache
def _encoding(name: str) -> tiktoken.Encoding:
    import tiktoken

    digest, pattern, special = ENCODINGS[name]
    blob = resources.files("tokenfence_asgi.pricing._prices").joinpath(f"{name}.tiktoken.gz")
    data = gzip.decompress(blob.read_bytes())
    if hashlib.sha256(data).hexdigest() != digest:
        raise RuntimeError(f"the packaged {name} tokenizer file is corrupt (SHA-256 mismatch)")
    fields = data.split()
    # the file's hash is checked: a2b_base64 needs no validation, and is ~2.5x b64decode's speed
    ranks = dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2]), strict=True))
    return tiktoken.Encoding(
        name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=dict(special)
    )


def _boundary(text: str, low: int, high: int) -> int | None:
    """The last cut in ``text[low:high]`` that no tiktoken piece crosses: a space after a
    character that is not whitespace (no o200k or cl100k piece holds that pair)."""
    cut = text.rfind(" ", low, high)
    while cut > low:
        before = text[cut - 1]
        if not before.isspace() and before not in "\r\n":
            return cut
        cut = text.rfind(" ", low, cut)
    return None


def _chunks(text: str) -> Iterator[tuple[str, bool]]:
    """``text`` cut where tiktoken's pieces end, at most ``_CHUNK_CHARS`` each; a longer run
    with no such cut comes whole, flagged ``False`` (count it by its bytes)."""
    start, end = 0, len(text)
    while end - start > _CHUNK_CHARS:
        cut = _boundary(text, start + 1, start + _CHUNK_CHARS)
        if cut is None:
            after = start + _CHUNK_CHARS
            while True:  # the next cut after the long run
                after = text.find(" ", after + 1)
                if after < 0 or not (text[after - 1].isspace() or text[after - 1] in "\r\n"):
                    break
            stop = end if after < 0 else after
            yield text[start:stop], False
            start = stop
            continue
        yield text[start:cut], True
        start = cut
    if start < end:
        yield text[start:], True


@dataclass(frozen=True, slots=True)
class InputCount:
    """Input tokens of a call: ``tokens`` counted, plus ``images`` (already in ``tokens``) and
    ``opaque`` parts (audio, files: not in ``tokens``, to be bounded by the caller)."""

    tokens: int
    images: int = 0
    opaque: int = 0

    def __add__(self, other: InputCount) -> InputCount:
        return InputCount(
            self.tokens + other.tokens, self.images + other.images, self.opaque + other.opaque
        )


@dataclass(frozen=True, slots=True)
class Tokenizer:
    """How one model's input is counted: ``encoding`` names the tiktoken encoding (``None``:
    the byte bound), the rest are framing overheads in tokens."""

    encoding: str | None
    per_message: int
    per_name: int
    per_request: int
    per_tool: int
    tools_per_request: int
    per_image: int

    @property
    def exact(self) -> bool:
        """True when counts are the model's own tokenizer's (tiktoken), not a byte bound."""
        return self.encoding is not None

    def text(self, text: str) -> int:
        """Tokens of plain text (the model's own count, or a bound on it)."""
        if not text:
            return 0
        if self.encoding is None:
            return byte_bound(text)
        encoding = _encoding(self.encoding)
        total = 0
        for chunk, countable in _chunks(text):
            total += self._encoded(encoding, chunk) if countable else byte_bound(chunk)
        return total

    @staticmethod
    def _encoded(encoding: tiktoken.Encoding, chunk: str) -> int:
        try:
            return len(encoding.encode_ordinary(chunk))
        except BaseException as exc:  # tiktoken's Rust panics are BaseExceptions
            if type(exc).__name__ != "PanicException":
                raise
            log.warning("token_count_failed", encoding=encoding.name, chars=len(chunk))
            return byte_bound(chunk)

    def json(self, value: object) -> int:
        """Tokens of ``value`` written as JSON (tool schemas, tool calls, unknown parts)."""
        if isinstance(value, str):
            return self.text(value)
        try:
            text = json.dumps(value, ensure_ascii=False, default=repr)
        except ValueError:  # a circular structure
            text = repr(value)
        return self.text(text)

    def messages(self, messages: Sequence[object]) -> InputCount:
        """Input tokens of chat messages (OpenAI, Anthropic and Responses shapes), framing
        included; image parts at the per-image bound, audio and files as opaque parts."""
        total = InputCount(self.per_request if messages else 0)
        for message in messages:
            total += self._message(message)
        return total

    def tools(self, tools: Sequence[object]) -> int:
        """Tokens of the tools offered: each one's JSON plus framing."""
        if not tools:
            return 0
        return self.tools_per_request + sum(self.per_tool + self.json(t) for t in tools)

    def _message(self, message: object) -> InputCount:
        fields = _as_mapping(message)
        if fields is None:
            return InputCount(self.per_message + self.json(message))
        total = InputCount(self.per_message)
        for key, value in fields.items():
            if key in _NOT_TOKENS or value is None:
                continue
            if key == "content":
                total += self.content(value)
            elif key == "name" and isinstance(value, str):
                total += InputCount(self.per_name + self.text(value))
            else:  # role, tool calls, tool call ids, ...
                total += InputCount(self.json(value))
        return total

    def content(self, content: object) -> InputCount:
        """Tokens of one message's content: a string, a part, or a list of parts."""
        if isinstance(content, str):
            return InputCount(self.text(content))
        if isinstance(content, list | tuple):
            total = InputCount(0)
            for part in content:
                total += self.content(part)
            return total
        part = _as_mapping(content)
        if part is None:
            return InputCount(self.json(content))
        kind = part.get("type")
        media = media_part(kind)
        if media == "image":
            return InputCount(self.per_image, images=1)
        if media == "opaque":
            return InputCount(0, opaque=1)
        total = InputCount(0)
        for key, value in part.items():
            if key in _NOT_TOKENS or value is None:
                continue
            if key == "content" or (
                key == "text" and isinstance(kind, str) and kind in _TEXT_PARTS
            ):
                total += self.content(value)  # a tool result may hold images
            else:
                total += InputCount(self.json(value))
        return total


def media_part(kind: object) -> Literal["image", "opaque"] | None:
    """What a content part of type ``kind`` is: an image (``image_url``, ``input_image``,
    Anthropic's ``image``), an opaque part (audio, file, document, video), or neither."""
    if not isinstance(kind, str):
        return None
    kind = kind.lower()
    if "image" in kind:
        return "image"
    if any(word in kind for word in _OPAQUE_WORDS):
        return "opaque"
    return None


def _as_mapping(value: object) -> Mapping[str, Any] | None:
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)  # a pydantic message (LiteLLM's, the SDKs')
    if callable(dump):
        dumped = dump(exclude_none=True)
        return dumped if isinstance(dumped, Mapping) else None
    return None


def _bare(model: str) -> str:
    name = model.lower()
    for prefix in _OPENAI_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


@lru_cache(maxsize=1024)
def tokenizer_for(model: str) -> Tokenizer:
    """How ``model`` is counted: tiktoken for OpenAI names (bare, or ``openai/``, ``azure/``),
    else the byte bound."""
    import tiktoken.model

    bare = _bare(model)
    per_image = next(
        (tokens for prefix, tokens in _IMAGE_TOKENS if bare.startswith(prefix)),
        _IMAGE_TOKENS_DEFAULT,
    )
    encoding = None
    if "/" not in bare:
        try:
            encoding = tiktoken.model.encoding_name_for_model(bare)
        except KeyError:
            encoding = None
        if encoding == "o200k_harmony":  # o200k_base plus specials: the same for text
            encoding = "o200k_base"
        if encoding not in ENCODINGS:
            encoding = None
    if encoding is not None:
        return Tokenizer(encoding, 3, 1, 3, 8, 16, per_image)
    return Tokenizer(None, 16, 1, 16, 16, 1_000, per_image)


def input_flags(value: object, depth: int = 0) -> tuple[bool, bool]:
    """Whether a call's input marks anything to cache (Anthropic's ``cache_control``) and
    whether it carries media (image, audio, file parts), the way ``tokens`` tells them."""
    if depth > 32:
        return True, True  # too deep to tell: assume the costlier
    cache_write = media = False
    if isinstance(value, Mapping):
        cache_write = "cache_control" in value
        media = media_part(value.get("type")) is not None
        items: Iterable[object] = value.values()
    elif isinstance(value, list | tuple):
        items = value
    else:
        return False, False
    for item in items:
        if cache_write and media:
            break
        inner = input_flags(item, depth + 1)
        cache_write, media = cache_write or inner[0], media or inner[1]
    return cache_write, media


def shape_input(model: str, shape: CallShape) -> InputCount:
    """The input of a call of ``shape`` on ``model``: its messages, tools, plain texts, extras
    (as JSON) and token ids counted; its opaque parts and by-reference input for the caller to
    bound (see ``PriceBook.bound``)."""
    tokenizer = tokenizer_for(model)
    count = InputCount(shape.tokens, opaque=shape.references)
    if shape.messages:
        count += tokenizer.messages(shape.messages)
    if shape.tools:
        count += InputCount(tokenizer.tools(shape.tools))
    for text in shape.texts:
        count += InputCount(tokenizer.text(text))
    for part in shape.extra:
        count += InputCount(tokenizer.json(part))
    return count


def predicted_tokens(model: str, shape: CallShape) -> int:
    """Tokens of the call's predicted output (``shape.predicted``), billed as output when the
    model rejects them."""
    if not shape.predicted:
        return 0
    tokenizer = tokenizer_for(model)
    return sum(tokenizer.text(text) for text in shape.predicted)
