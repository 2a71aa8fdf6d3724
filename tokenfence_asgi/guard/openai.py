"""The OpenAI SDK under the guard: ``OpenAI``, ``AsyncOpenAI`` and the Azure clients.

Paid paths and how each is bounded (the body is read as the SDK sends it, ``extra_body``
merged in; shapes as ``tokenfence_asgi.calls.shapes`` reads them):

=========================================  ==============  ===================================
path                                       kind            usage settled from
=========================================  ==============  ===================================
``/chat/completions`` (create, parse,      chat            ``usage``; a stream's last chunk
stream)                                                    (``stream_options.include_usage``
                                                           is set, and the chunk the caller
                                                           did not ask for is dropped)
``/responses`` (create, parse, stream)     responses       ``usage``; ``response.completed``
``/completions`` (legacy)                  text            ``usage``
``/embeddings``                            embedding       ``usage.prompt_tokens``
``/images/generations|edits|variations``   image           ``n`` images at the model's
                                                           ``per_call`` price (+ token usage)
``/audio/speech``                          speech          characters at ``per_character``
``/audio/transcriptions|translations``     transcription   the model's ``per_call`` price
=========================================  ==============  ===================================

Free and passed through: every GET and DELETE, moderations, ``/responses/input_tokens``,
files and uploads, cancels, stored objects (assistants, threads and their messages,
conversations), organisation administration. Every other POST is refused with
``CallNotFenced``: batches, assistant runs, fine-tuning, evals, videos, containers, vector
stores, agents, realtime sessions and sockets; their cost is not known before they run.

On Azure, ``model`` is the deployment name: plans and prices name deployments
(``prices={"my-gpt4o": ModelPrice(...)}``); a client made for one deployment
(``azure_deployment=``) is priced and allowed as that deployment, whatever ``model`` says.
Cached input tokens (``cached_tokens``) are charged at the model's cached input price.

Input a call names instead of sending (``previous_response_id``, ``conversation``, a stored
``prompt``, an ``item_reference``, an uploaded file) is held at the model's context window and
charged from the usage afterwards.

A costlier ``service_tier`` (``"priority"``, ``"fast"``) is held at the snapshot's price for it
and charged at the tier the response reports (its ``service_tier``), else the one asked; a
costlier tier nothing prices for the model is refused (``ModelNotPriced``) before sending. A
Responses call offering hosted tools (web search, file search) is held for its
``max_tool_calls`` (else the price book's allowance, written into the call) at the tool's fee,
and charged the ``web_search_call`` / ``file_search_call`` items its response reports (a
stream's ``response.completed``); an unpriced hosted tool (code interpreter) is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import httpx2
import openai

from tokenfence_asgi.calls.planner import CallRequest, PlannedCall
from tokenfence_asgi.calls.shapes import shape_of
from tokenfence_asgi.errors import InvalidCall, TokenFenceError
from tokenfence_asgi.guard._errors import StatusErrors
from tokenfence_asgi.guard._fenced import GuardedCall, Route, Usage
from tokenfence_asgi.pricing.call import CallKind
from tokenfence_asgi.pricing.variants import call_item_tool, hosted_calls, reported_tier

__all__ = ["ADAPTER", "CLIENTS", "OpenAIAdapter"]

CLIENTS: tuple[type, ...] = (openai.OpenAI, openai.AsyncOpenAI)
"""The client classes (and their subclasses, Azure's) this adapter guards."""

_PAID: dict[str, CallKind] = {
    "/chat/completions": "chat",
    "/responses": "responses",
    "/completions": "text",
    "/embeddings": "embedding",
    "/images/generations": "image",
    "/images/edits": "image",
    "/images/variations": "image",
    "/audio/speech": "speech",
    "/audio/transcriptions": "transcription",
    "/audio/translations": "transcription",
}
_FREE = re.compile(
    r"^/(moderations|responses/input_tokens|files|uploads(/[^/]+/(parts|complete))?"
    r"|chat/completions/[^/]+|assistants(/[^/]+)?|threads(/[^/]+)?"
    r"|threads/[^/]+/messages(/[^/]+)?|conversations(/[^/]+(/items)?)?"
    r"|organization/.*|projects/.*|webhook_endpoints(/.*)?"
    r"|.*/(cancel|pause))$"
)
# The paths an Azure client sends to its deployment (``/deployments/{model}/...``).
_DEPLOYMENT_PATHS = frozenset(
    {
        "/completions",
        "/chat/completions",
        "/embeddings",
        "/audio/transcriptions",
        "/audio/translations",
        "/audio/speech",
        "/images/generations",
        "/images/edits",
    }
)
_DEPLOYMENT = re.compile(r"/deployments/([^/]+)")
_LIMIT_KEYS: dict[str, tuple[str, ...]] = {
    "chat": ("max_completion_tokens", "max_tokens"),  # the first is what newer models take
    "responses": ("max_output_tokens",),
    "text": ("max_tokens",),
}


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class OpenAIAdapter:
    """What a path of the OpenAI API costs, and where its usage is (see the module doc)."""

    sdk = "openai"

    def __init__(self) -> None:
        self.errors = StatusErrors(openai, httpx2, with_code=True)

    def route(self, method: str, path: str) -> Route:
        """The kind of a paid path, ``"free"``, or ``"refuse"`` (anything else)."""
        kind = _PAID.get(path.rstrip("/"))
        if kind is not None:
            return kind
        return "free" if _FREE.match(path) else "refuse"

    def pinned_model(self, client: Any, path: str) -> str | None:
        """The deployment an Azure client was made for (``azure_deployment=``): it serves its
        deployment paths whatever ``model`` the body names."""
        if not isinstance(client, openai.AzureOpenAI | openai.AsyncAzureOpenAI):
            return None
        if path.rstrip("/") not in _DEPLOYMENT_PATHS:
            return None
        found = _DEPLOYMENT.search(client.base_url.path)
        return None if found is None else unquote(found.group(1))

    def describe(self, kind: CallKind, body: Mapping[str, Any]) -> CallRequest:
        """The call as the planner sees it: its model and its shape."""
        model = body.get("model", "dall-e-2" if kind == "image" else None)
        if not isinstance(model, str) or not model:
            raise InvalidCall(f"a paid {kind} call needs a model, got {model!r}")
        if kind == "chat" and not isinstance(body.get("messages"), list):
            raise InvalidCall("a chat completion needs messages")
        return CallRequest(model, shape_of(kind, body), tool_choice=body.get("tool_choice"))

    def rewrite(
        self, kind: CallKind, body: dict[str, Any], planned: PlannedCall, stream: bool
    ) -> bool:
        """Write what was reserved into the body; whether to drop the usage-only chunk."""
        body["model"] = planned.model
        if planned.write_limit and planned.output_limit is not None:
            keys = _LIMIT_KEYS.get(kind, ())
            present = [key for key in keys if body.get(key) is not None] or list(keys[:1])
            for key in present:  # every limit the provider might honour covers only the hold
                body[key] = planned.output_limit
        if planned.tool_calls is not None and kind == "responses":
            body["max_tool_calls"] = planned.tool_calls  # the hosted tool calls held
        if planned.tools_changed:
            if planned.tools:
                body["tools"] = list(planned.tools)
            else:  # nothing left to offer: these would be rejected without tools
                for key in ("tools", "tool_choice", "parallel_tool_calls"):
                    body.pop(key, None)
        if stream and kind in ("chat", "text"):
            options = body.get("stream_options")
            options = dict(options) if isinstance(options, Mapping) else {}
            if options.get("include_usage") is not True:
                body["stream_options"] = {**options, "include_usage": True}
                return True
        return False

    def usage(self, kind: CallKind, body: Mapping[str, Any]) -> Usage | None:
        """The usage of a JSON answer (chat, completions, embeddings, responses, images):
        cached input tokens apart, at the model's cached input price."""
        usage = body.get("usage")
        if not isinstance(usage, Mapping):
            return None
        if "prompt_tokens" in usage:
            prompt, output = usage.get("prompt_tokens"), usage.get("completion_tokens")
            details = usage.get("prompt_tokens_details")
        elif "input_tokens" in usage:
            prompt, output = usage.get("input_tokens"), usage.get("output_tokens")
            details = usage.get("input_tokens_details")
        else:
            return None
        cached = _int(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
        cached = min(cached, _int(prompt))
        return Usage(
            _int(prompt) - cached,
            _int(output),
            cache_read_tokens=cached,
            tier=reported_tier(body),
            hosted=hosted_calls(body),
        )

    def tool_calls(self, body: Mapping[str, Any]) -> list[str]:
        """The tools a chat completion or a response calls (``tool_calls``, ``function_call``,
        a Responses ``function_call`` item)."""
        names: list[str] = []
        for choice in _list(body.get("choices")):
            message = choice.get("message") if isinstance(choice, Mapping) else None
            if isinstance(message, Mapping):
                for tool_call in _list(message.get("tool_calls")):
                    function = tool_call.get("function") if isinstance(tool_call, Mapping) else None
                    if isinstance(function, Mapping):
                        names.append(str(function.get("name", "")))
                legacy = message.get("function_call")
                if isinstance(legacy, Mapping):
                    names.append(str(legacy.get("name", "")))
        for item in _list(body.get("output")):
            if isinstance(item, Mapping) and item.get("type") == "function_call":
                names.append(str(item.get("name", "")))
        return names

    def stream_tool_calls(self, data: Any) -> list[str]:
        """The tools one streamed event starts calling: a chat chunk's tool call (its name
        comes in the call's first delta only) or legacy ``function_call``, a Responses
        ``function_call`` item when it is added."""
        if not isinstance(data, Mapping):
            return []
        if data.get("type") == "response.output_item.added":
            item = data.get("item")
            if isinstance(item, Mapping) and item.get("type") == "function_call":
                return [str(item.get("name", ""))]
            return []
        names: list[str] = []
        for choice in _list(data.get("choices")):
            delta = choice.get("delta") if isinstance(choice, Mapping) else None
            if not isinstance(delta, Mapping):
                continue
            calls = [
                c.get("function") for c in _list(delta.get("tool_calls")) if isinstance(c, Mapping)
            ]
            for function in [*calls, delta.get("function_call")]:
                if isinstance(function, Mapping) and function.get("name"):
                    names.append(str(function["name"]))
        return names

    def on_event(self, call: GuardedCall, event: str | None, data: Any) -> bool:
        """Read one streamed event; ``False`` drops it (the usage chunk nobody asked for)."""
        if not isinstance(data, Mapping):
            return True
        kind = data.get("type")
        if isinstance(kind, str):  # the Responses API
            delta = data.get("delta")
            if isinstance(delta, str) and delta:
                call.text.append(delta)
                call.chunks += 1
            item = data.get("item")
            if kind == "response.output_item.done" and isinstance(item, Mapping):
                tool = call_item_tool(item.get("type"))
                if tool is not None:  # charged if the stream stops before its usage
                    call.hosted_seen[tool] = call.hosted_seen.get(tool, 0) + 1
            if kind in ("response.completed", "response.incomplete", "response.failed"):
                response = data.get("response")
                if isinstance(response, Mapping):
                    if isinstance(response.get("model"), str):
                        call.model = response["model"]
                    call.usage = self.usage("responses", response) or call.usage
            return True
        if isinstance(data.get("model"), str):
            call.model = data["model"]
        choices = data.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            _read_choice(call, choice)
        usage = self.usage(call.kind, data)
        if usage is not None:
            call.usage = usage
            if call.strip_usage and not choices:
                return False
        return True

    def error(self, exc: TokenFenceError, method: str, url: str) -> Exception:
        """``exc`` as a subclass of the matching ``openai`` status error."""
        return self.errors.make(exc, method, url)


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _read_choice(call: GuardedCall, choice: object) -> None:
    if not isinstance(choice, Mapping):
        return
    text = choice.get("text")  # legacy completions
    delta = choice.get("delta")
    parts: list[object] = [text]
    if isinstance(delta, Mapping):
        parts += [delta.get("content"), delta.get("refusal")]
        for tool_call in delta.get("tool_calls") or ():
            function = tool_call.get("function") if isinstance(tool_call, Mapping) else None
            if isinstance(function, Mapping):
                parts += [function.get("name"), function.get("arguments")]
    produced = [part for part in parts if isinstance(part, str) and part]
    if produced:
        call.text.extend(produced)
        call.chunks += 1


ADAPTER = OpenAIAdapter()
