"""The OpenAI request format as the call planner sees it: a body's ``CallShape``.

OpenAI's request bodies are the lingua franca of LLM calls: the OpenAI SDK sends them, and
LiteLLM's call arguments follow them. ``shape_of(kind, body)`` reads what bounds a call's cost
from one: chat (messages, tools, ``response_format``, ``n``, ``max_tokens`` /
``max_completion_tokens``), the Responses API (``input``, ``instructions``, ``text``,
``max_output_tokens``), text completion (``prompt``, ``n`` x ``best_of`` per prompt),
embeddings (``input``, token ids counted as they are), images (``n``), speech (characters),
rerank (query and documents); any other kind is one call at its ``per_call`` price. A chat or
Responses call's costlier ``service_tier`` and its ``max_tool_calls`` (Responses) are read too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from tokenfence_asgi.errors import InvalidCall
from tokenfence_asgi.pricing.call import CallKind, CallShape
from tokenfence_asgi.pricing.variants import call_tier, hosted_tool

__all__ = [
    "BOUNDING_ARGUMENTS",
    "LONG_CONTEXT",
    "OUTPUT_LIMIT_KEYS",
    "beta_window",
    "check_extra_body",
    "output_limit_keys",
    "server_tool_uses",
    "shape_of",
    "with_max_uses",
]

OUTPUT_LIMIT_KEYS: dict[CallKind, tuple[str, ...]] = {
    "chat": ("max_tokens", "max_completion_tokens"),
    "text": ("max_tokens",),
    "responses": ("max_output_tokens",),
}
"""The arguments that limit a call's output, by kind; the first is the one the fence writes."""


def output_limit_keys(kind: CallKind) -> tuple[str, ...]:
    """The output-limit arguments of a kind (empty for kinds that generate no tokens)."""
    return OUTPUT_LIMIT_KEYS.get(kind, ())


def _count(kwargs: Mapping[str, object], key: str) -> int:
    value = kwargs.get(key)
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
        raise InvalidCall(f"{key} must be an integer in [1, 1024], got {value!r}")
    return value


def _output_limit(kind: CallKind, kwargs: Mapping[str, object]) -> int | None:
    """The largest output limit the call set (several may be set: the provider honours one)."""
    found: int | None = None
    for key in output_limit_keys(kind):
        value = kwargs.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidCall(f"{key} must be a positive integer, got {value!r}")
        found = value if found is None else max(found, value)
    return found


def _tool_calls(kwargs: Mapping[str, object]) -> int | None:
    """The most hosted tool calls a Responses call allows (``max_tool_calls``), if it set it."""
    value = kwargs.get("max_tool_calls")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidCall(f"max_tool_calls must be a non-negative integer, got {value!r}")
    return value


def _texts(value: object) -> tuple[tuple[str, ...], int]:
    """Plain texts in a prompt or embedding input, and the tokens given as token ids."""
    if isinstance(value, str):
        return (value,), 0
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        texts: list[str] = []
        tokens = 0
        for item in value:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, int) and not isinstance(item, bool):
                tokens += 1
            elif isinstance(item, Sequence) and not isinstance(item, bytes | bytearray):
                tokens += len(item)
            else:
                texts.append(repr(item))
        return tuple(texts), tokens
    if value is None:
        return (), 0
    return (repr(value),), 0


_REFERENCES = ("previous_response_id", "conversation", "prompt")
"""Responses API arguments that name input stored at the provider instead of sending it."""


def _responses_input(
    value: object,
) -> tuple[tuple[object, ...], tuple[object, ...], int]:
    """Chat messages, other items (counted as JSON) and the number of items named by reference
    (``item_reference``) in a Responses API ``input``. A content part that is neither text nor
    an image (a file) stays in its message, where the tokenizer bounds it as an opaque part."""
    if isinstance(value, str):
        return ({"role": "user", "content": value},), (), 0
    messages: list[object] = []
    extra: list[object] = []
    references = 0
    for item in value if isinstance(value, Sequence) else (value,):
        if isinstance(item, Mapping) and "role" in item and "content" in item:
            content = item["content"]
            if isinstance(content, list):
                parts: list[object] = []
                for part in content:
                    kind = part.get("type") if isinstance(part, Mapping) else None
                    if kind == "input_image" and isinstance(part, Mapping):
                        url = part.get("image_url") or part.get("file_id") or ""
                        parts.append({"type": "image_url", "image_url": {"url": str(url)}})
                    elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                        parts.append({"type": "text", "text": part["text"]})
                    else:
                        parts.append(part)
                content = parts
            messages.append({"role": str(item["role"]), "content": content})
        elif isinstance(item, Mapping) and item.get("type") == "item_reference":
            references += 1
        elif item is not None:
            extra.append(item)
    return tuple(messages), tuple(extra), references


def _predicted(prediction: object) -> tuple[str, ...]:
    """The texts of a chat call's predicted output (``{"type": "content", "content": ...}``, a
    string or text parts); anything else in it as its JSON, counted as text too."""
    if prediction is None:
        return ()
    content = prediction.get("content") if isinstance(prediction, Mapping) else prediction
    if isinstance(content, str):
        return (content,)
    texts: list[str] = []
    for part in content if isinstance(content, list) else (content,):
        text = part.get("text") if isinstance(part, Mapping) else None
        texts.append(text if isinstance(text, str) else json.dumps(part, default=repr))
    return tuple(texts)


def server_tool_uses(tools: object) -> int | None:
    """The most server tool calls (web search, code execution) a call's tools allow, as
    Anthropic bounds them: the sum of their ``max_uses``; ``None`` when one server tool sets
    none (``with_max_uses`` writes the allowance held into it). Raises ``InvalidCall`` when
    several set none: give each a ``max_uses``."""
    total, unlimited = 0, 0
    for tool in tools if isinstance(tools, list) else ():
        if hosted_tool(tool) is None:
            continue
        uses = tool.get("max_uses")
        if uses is None:
            unlimited += 1
        elif isinstance(uses, bool) or not isinstance(uses, int) or uses < 1:
            raise InvalidCall(f"max_uses must be a positive integer, got {uses!r}")
        else:
            total += uses
    if unlimited == 0:
        return total
    if unlimited == 1 and total == 0:
        return None
    raise InvalidCall(
        "the server tools of this call do not all set max_uses: give each one max_uses, "
        "so that the calls they can make (each billed) are bounded"
    )


def with_max_uses(tools: list[Any], allowance: int) -> list[Any]:
    """``tools`` with ``max_uses=allowance`` in the one server tool that sets none (see
    ``server_tool_uses``): the calls the hold covers."""
    return [
        {**tool, "max_uses": allowance}
        if isinstance(tool, Mapping) and hosted_tool(tool) is not None and "max_uses" not in tool
        else tool
        for tool in tools
    ]


BOUNDING_ARGUMENTS = frozenset(
    {
        "model",
        "messages",
        "input",
        "prompt",
        "instructions",
        "n",
        "best_of",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "tools",
        "tool_choice",
        "max_tool_calls",
        "web_search_options",
        "service_tier",
        "speed",
        "prediction",
        "previous_response_id",
        "conversation",
    }
)
"""The call arguments a hold is made from (or that the fence writes into the call)."""


def check_extra_body(kwargs: Mapping[str, object]) -> None:
    """Refuse an ``extra_body`` that sets an argument the hold is made from: it is sent after
    the call's own arguments, so it could make the call dearer than what was held. Raises
    ``InvalidCall`` naming them."""
    extra = kwargs.get("extra_body")
    if not isinstance(extra, Mapping):
        return
    found = sorted(str(key) for key in extra if key in BOUNDING_ARGUMENTS)
    if found:
        raise InvalidCall(
            f"extra_body sets {', '.join(found)}: pass them as arguments of the call, where "
            "the fence bounds its cost"
        )


LONG_CONTEXT = 1_000_000
"""The context window Anthropic's ``context-1m`` beta gives a model."""


def beta_window(headers: object) -> int | None:
    """The context window a call's headers ask for beyond the model's listed one: 1M tokens
    with Anthropic's ``context-1m-...`` beta in ``anthropic-beta``; else ``None``."""
    if not isinstance(headers, Mapping):
        return None
    for name, value in headers.items():
        if not (isinstance(name, str) and name.lower() == "anthropic-beta"):
            continue
        betas = value.split(",") if isinstance(value, str) else ()
        if any(beta.strip().startswith("context-1m") for beta in betas):
            return LONG_CONTEXT
    return None


def shape_of(kind: CallKind, kwargs: Mapping[str, object], messages: object = None) -> CallShape:
    """The ``CallShape`` of a LiteLLM call of ``kind`` from its kwargs.

    ``messages`` are the chat messages when LiteLLM keeps them elsewhere (a positional call).
    A larger context window asked for in ``extra_headers`` or ``headers`` (``beta_window``)
    bounds opaque input. Raises ``InvalidCall`` for an ``n``, ``best_of`` or output limit that
    is not a positive int.
    """
    shape = _shape_of(kind, kwargs, messages)
    window = beta_window(kwargs.get("extra_headers")) or beta_window(kwargs.get("headers"))
    return shape if window is None else replace(shape, window=window)


def _shape_of(kind: CallKind, kwargs: Mapping[str, object], messages: object) -> CallShape:
    tools = kwargs.get("tools")
    tool_tuple = tuple(tools) if isinstance(tools, list) else None
    limit = _output_limit(kind, kwargs)
    if kind == "chat":
        found = kwargs.get("messages", messages)
        extra = tuple(kwargs[k] for k in ("response_format", "system") if kwargs.get(k))
        return CallShape(
            "chat",
            messages=tuple(found) if isinstance(found, list) else (),
            tools=tool_tuple,
            extra=extra,
            output_limit=limit,
            choices=_count(kwargs, "n"),
            tier=call_tier(kwargs),
            tool_calls=server_tool_uses(tools),
            predicted=_predicted(kwargs.get("prediction")),
        )
    if kind == "responses":
        found_messages, items, references = _responses_input(kwargs.get("input"))
        extra = tuple(kwargs[k] for k in ("instructions", "text") if kwargs.get(k))
        references += sum(1 for k in _REFERENCES if kwargs.get(k))
        return CallShape(
            "responses",
            messages=found_messages,
            tools=tool_tuple,
            extra=items + extra,
            output_limit=limit,
            references=references,
            tier=call_tier(kwargs),
            tool_calls=_tool_calls(kwargs),
        )
    if kind == "text":
        texts, tokens = _texts(kwargs.get("prompt"))
        prompts = max(1, len(texts) + (1 if tokens and not texts else 0))
        choices = max(_count(kwargs, "n"), _count(kwargs, "best_of")) * prompts
        return CallShape("text", texts=texts, tokens=tokens, output_limit=limit, choices=choices)
    if kind == "embedding":
        texts, tokens = _texts(kwargs.get("input"))
        return CallShape("embedding", texts=texts, tokens=tokens)
    if kind == "image":
        return CallShape("image", texts=_texts(kwargs.get("prompt"))[0], units=_count(kwargs, "n"))
    if kind == "speech":
        text = kwargs.get("input")
        text = text if isinstance(text, str) else repr(text)
        return CallShape("speech", texts=(text,), units=1, characters=len(text))
    if kind == "rerank":
        documents = kwargs.get("documents")
        parts = [str(kwargs.get("query", ""))]
        for document in documents if isinstance(documents, list) else ():
            parts.append(document if isinstance(document, str) else repr(document))
        return CallShape("rerank", texts=tuple(parts), units=1)
    return CallShape(kind, units=1)
