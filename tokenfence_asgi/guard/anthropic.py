"""The Anthropic SDK under the guard: ``Anthropic`` and ``AsyncAnthropic``.

``POST /v1/messages`` (``messages.create``, ``messages.stream``, ``create(stream=True)``,
``parse``, and the same under ``beta``) is the paid path: bounded by its messages, ``system``
and tools, with ``max_tokens`` (which Anthropic requires) as the output limit; settled from
``usage``, or for a stream from ``message_start`` (input) and ``message_delta`` (output).

Anthropic reports cached input apart from ``input_tokens``: cache reads, five-minute and
one-hour cache writes are each charged at the model's price for them. ``speed="fast"`` is held
at the snapshot's fast-mode price and charged at ``usage.speed``; a model with no such price
refuses it (``ModelNotPriced``). A server tool billed per use (``web_search_20250305``) is held
for its ``max_uses`` (written into the tool when it set none: the price book's allowance) and
charged ``usage.server_tool_use``.

Free and passed through: GET and DELETE, ``/v1/messages/count_tokens``, files, skills,
cancels and archives, organisation administration. Every other POST is refused with
``CallNotFenced``: message batches, agents, sessions, deployments; their cost is not known
before they run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import anthropic
import httpx2

from tokenfence_asgi.calls.planner import CallRequest, PlannedCall
from tokenfence_asgi.calls.shapes import server_tool_uses, with_max_uses
from tokenfence_asgi.errors import InvalidCall, TokenFenceError
from tokenfence_asgi.guard._errors import StatusErrors
from tokenfence_asgi.guard._fenced import GuardedCall, Route, Usage
from tokenfence_asgi.pricing.call import CallKind, CallShape
from tokenfence_asgi.pricing.variants import call_tier, hosted_calls, reported_tier

__all__ = ["ADAPTER", "CLIENTS", "AnthropicAdapter"]

CLIENTS: tuple[type, ...] = (anthropic.Anthropic, anthropic.AsyncAnthropic)
"""The client classes this adapter guards."""

_FREE = re.compile(
    r"^/v1/(messages/count_tokens|files|skills(/.*)?|organizations/.*|.*/(cancel|archive))$"
)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _text(block: object) -> object:
    """A content block as the token counter reads it: text stays text, an image stays an
    image (its per-image bound), a document is an opaque part (the context window bounds it)
    unless it is plain text, a tool result is its content's blocks read the same way; anything
    else (tool use, thinking) counts as its JSON."""
    if not isinstance(block, Mapping):
        return {"type": "text", "text": str(block)}
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return {"type": "text", "text": block["text"]}
    if kind == "image":
        source = block.get("source")
        url = source.get("url") if isinstance(source, Mapping) else None
        return {"type": "image_url", "image_url": {"url": url if isinstance(url, str) else ""}}
    if kind == "document":
        source = block.get("source")
        data = source.get("data") if isinstance(source, Mapping) else None
        if isinstance(source, Mapping) and source.get("type") == "text" and isinstance(data, str):
            return {"type": "text", "text": data}
        return {"type": "document"}  # a PDF, a URL or an uploaded file: its size is unknown
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, str):
            return {"type": "text", "text": content}
        if isinstance(content, list):
            return {"type": "tool_result", "content": [_text(c) for c in content]}
    return {"type": "text", "text": json.dumps(block, default=repr)}


def _plain(part: object) -> str:
    return str(part.get("text", "")) if isinstance(part, Mapping) else str(part)


def _messages(value: object) -> tuple[object, ...]:
    if not isinstance(value, list):
        raise InvalidCall("a message call needs messages")
    found: list[object] = []
    for message in value:
        if not isinstance(message, Mapping):
            raise InvalidCall(f"a message must be an object, got {message!r}")
        content = message.get("content")
        if isinstance(content, list):
            content = [_text(block) for block in content]
        found.append({"role": str(message.get("role", "user")), "content": content})
    return tuple(found)


def _usage(usage: Mapping[str, Any], output_tokens: int) -> Usage:
    """A message's usage: cache reads and five-minute and one-hour writes apart."""
    writes = _int(usage.get("cache_creation_input_tokens"))
    detail = usage.get("cache_creation")
    hour = _int(detail.get("ephemeral_1h_input_tokens")) if isinstance(detail, Mapping) else 0
    hour = min(hour, writes)
    return Usage(
        _int(usage.get("input_tokens")),
        output_tokens,
        cache_read_tokens=_int(usage.get("cache_read_input_tokens")),
        cache_write_tokens=writes - hour,
        cache_write_1h_tokens=hour,
        tier=reported_tier({"usage": usage}),
        hosted=hosted_calls({"usage": usage}),
    )


class AnthropicAdapter:
    """What a path of the Anthropic API costs, and where its usage is (see the module doc)."""

    sdk = "anthropic"

    def __init__(self) -> None:
        self.errors = StatusErrors(anthropic, httpx2, with_code=False)

    def route(self, method: str, path: str) -> Route:
        """``"chat"`` for messages, ``"free"``, or ``"refuse"`` (anything else)."""
        if path.rstrip("/") == "/v1/messages":
            return "chat"
        return "free" if _FREE.match(path) else "refuse"

    def pinned_model(self, client: Any, path: str) -> str | None:
        """Anthropic clients name the model in the body only."""
        return None

    def describe(self, kind: CallKind, body: Mapping[str, Any]) -> CallRequest:
        """The call as the planner sees it: its model and its shape."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidCall(f"a message call needs a model, got {model!r}")
        limit = body.get("max_tokens")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise InvalidCall(f"max_tokens must be a positive integer, got {limit!r}")
        system = body.get("system")
        if isinstance(system, list):
            system = " ".join(_plain(_text(block)) for block in system)
        tools = body.get("tools")
        extra = tuple(part for part in (system, body.get("output_format")) if part)
        shape = CallShape(
            "chat",
            messages=_messages(body.get("messages")),
            tools=tuple(tools) if isinstance(tools, list) else None,
            extra=extra,
            output_limit=limit,
            tier=call_tier(body),
            tool_calls=server_tool_uses(tools),
        )
        return CallRequest(model, shape, tool_choice=body.get("tool_choice"))

    def rewrite(
        self, kind: CallKind, body: dict[str, Any], planned: PlannedCall, stream: bool
    ) -> bool:
        """Write what was reserved into the body (Anthropic streams carry their usage)."""
        body["model"] = planned.model
        if planned.write_limit and planned.output_limit is not None:
            body["max_tokens"] = planned.output_limit
        if planned.tools_changed:
            if planned.tools:
                body["tools"] = list(planned.tools)
            else:
                body.pop("tools", None)
                body.pop("tool_choice", None)
        if planned.tool_calls is not None and isinstance(body.get("tools"), list):
            body["tools"] = with_max_uses(body["tools"], planned.tool_calls)
        return False

    def usage(self, kind: CallKind, body: Mapping[str, Any]) -> Usage | None:
        """The usage of a message."""
        usage = body.get("usage")
        if not isinstance(usage, Mapping):
            return None
        return _usage(usage, _int(usage.get("output_tokens")))

    def tool_calls(self, body: Mapping[str, Any]) -> list[str]:
        """The tools a message calls (its ``tool_use`` blocks)."""
        content = body.get("content")
        return [
            str(block.get("name", ""))
            for block in (content if isinstance(content, list) else ())
            if isinstance(block, Mapping) and block.get("type") == "tool_use"
        ]

    def stream_tool_calls(self, data: Any) -> list[str]:
        """The tool a streamed ``content_block_start`` of a ``tool_use`` block calls."""
        if not isinstance(data, Mapping) or data.get("type") != "content_block_start":
            return []
        block = data.get("content_block")
        if isinstance(block, Mapping) and block.get("type") == "tool_use":
            return [str(block.get("name", ""))]
        return []

    def on_event(self, call: GuardedCall, event: str | None, data: Any) -> bool:
        """Read one streamed event: input at ``message_start``, output at ``message_delta``."""
        if not isinstance(data, Mapping):
            return True
        kind = data.get("type")
        if kind == "content_block_delta":
            delta = data.get("delta")
            if isinstance(delta, Mapping):
                for key in ("text", "partial_json", "thinking"):
                    if isinstance(delta.get(key), str) and delta[key]:
                        call.text.append(delta[key])
                call.chunks += 1
        elif kind == "message_start":
            message = data.get("message")
            if isinstance(message, Mapping):
                if isinstance(message.get("model"), str):
                    call.model = message["model"]
                usage = message.get("usage")
                if isinstance(usage, Mapping):
                    call.input_seen = _usage(usage, 0)
                    call.output_seen = _int(usage.get("output_tokens"))
        elif kind == "message_delta":
            usage = data.get("usage")
            if isinstance(usage, Mapping):  # cumulative; the input again on newer models
                if usage.get("input_tokens") is not None:
                    call.input_seen = _usage(usage, 0)
                call.output_seen = max(call.output_seen, _int(usage.get("output_tokens")))
                hosted = hosted_calls({"usage": usage})
                if hosted:
                    call.hosted_seen = hosted
                if call.input_seen is not None:
                    call.usage = replace(
                        call.input_seen, output_tokens=call.output_seen, hosted=call.hosted_seen
                    )
        return True

    def error(self, exc: TokenFenceError, method: str, url: str) -> Exception:
        """``exc`` as a subclass of the matching ``anthropic`` status error."""
        return self.errors.make(exc, method, url)


ADAPTER = AnthropicAdapter()
