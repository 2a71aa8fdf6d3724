"""What the callback keeps of each fenced call, and reads off LiteLLM's kwargs and responses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

from tokenfence_asgi.context import FenceContext
from tokenfence_asgi.pricing.call import Estimate
from tokenfence_asgi.results import Reservation

__all__ = [
    "APPROVAL_KEY",
    "RESERVATION_KEY",
    "STREAMS",
    "SYNC_CALLS",
    "Call",
    "called_tools",
    "mapping",
    "observe_stream",
    "reservation_id",
    "tokens",
]

RESERVATION_KEY = "tokenfence_reservation_id"
"""The metadata key the callback adds to a fenced call: its reservation id."""

APPROVAL_KEY = "tokenfence_approval_id"
"""The metadata key of an approved ``ApprovalRequired``'s id, to replay the call once."""

SYNC_CALLS: ContextVar[list[Call] | None] = ContextVar("tokenfence_sync_calls", default=None)
"""The calls a fenced sync ``completion`` made, to settle before it returns."""

STREAMS: ContextVar[tuple[Call, ...]] = ContextVar("tokenfence_streams", default=())
"""The fenced streams opened on this task, which ``observe_stream`` keeps count of."""


def mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def reservation_id(kwargs: Mapping[str, object]) -> object:
    rid = mapping(kwargs.get("metadata")).get(RESERVATION_KEY)
    if rid is None:  # the events carry the call's metadata under litellm_params
        rid = mapping(mapping(kwargs.get("litellm_params")).get("metadata")).get(RESERVATION_KEY)
    return rid


def called_tools(response: object) -> list[str]:
    """The tools a chat response calls (``tool_calls``, and the legacy ``function_call``)."""
    names: list[str] = []
    for choice in getattr(response, "choices", None) or ():
        message = getattr(choice, "message", None)
        for call in getattr(message, "tool_calls", None) or ():
            names.append(str(getattr(getattr(call, "function", None), "name", "")))
        function_call = getattr(message, "function_call", None)
        if function_call is not None:
            names.append(str(getattr(function_call, "name", "")))
    return names


def tokens(kwargs: Mapping[str, object], response: object) -> tuple[int, int]:
    """Input and output tokens of a finished call, from LiteLLM's payload or the response."""
    payload = mapping(kwargs.get("standard_logging_object"))
    usage = getattr(response, "usage", None)
    counts = []
    for key, alias in (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens")):
        value = payload.get(key, getattr(usage, key, getattr(usage, alias, 0)))
        counts.append(value if isinstance(value, int) and value >= 0 else 0)
    return counts[0], counts[1]


def served_by(response: object) -> dict[str, object]:
    """What a LiteLLM response says of how it was served: its ``service_tier`` and the types of
    its output items (a Responses API answer's ``web_search_call``...), as a plain mapping."""
    items = getattr(response, "output", None)
    output = [
        {"type": item.get("type") if isinstance(item, Mapping) else getattr(item, "type", None)}
        for item in (items if isinstance(items, list) else ())
    ]
    return {"service_tier": getattr(response, "service_tier", None), "output": output}


def observe_stream(text: str) -> bool:
    """A LiteLLM post-call rule: runs on the caller's task for every chunk of a chat stream,
    with the text streamed so far; records it on the task's open fenced streams."""
    for call in STREAMS.get():
        if call.state == "open" and len(text) >= len(call.streamed_text):
            call.streamed_text = text
            call.chunks += 1
    return True


@dataclass(slots=True, eq=False)
class Call:
    """One fenced call, from its reservation to its settlement (internal, mutable)."""

    reservation: Reservation
    estimate: Estimate
    stream: bool
    ctx: FenceContext | None
    logging_obj: object  # LiteLLM's; tells whether a stream produced anything
    task: asyncio.Task[Any] | None
    call_id: str | None = None
    created: float = field(default_factory=time.monotonic)
    response: object = None
    streamed_text: str = ""
    chunks: int = 0
    observed: bool = False  # a stream whose chunks ``observe_stream`` counts
    finished: bool = False  # a stream whose last chunk LiteLLM passed on
    state: Literal["open", "settling", "done"] = "open"
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def produced(self) -> bool:
        return (
            self.response is not None
            or self.chunks > 0
            or (
                self.stream and getattr(self.logging_obj, "completion_start_time", None) is not None
            )
        )
