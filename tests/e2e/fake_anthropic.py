"""A small Anthropic-compatible messages server on loopback, for tests through real HTTP.

``POST /v1/messages`` answers a message as JSON or, with ``"stream": true``, the event stream
Anthropic sends (``message_start`` with the input usage, one ``content_block_delta`` per word,
``message_delta`` with the output usage, ``message_stop``). Usage is fixed per call
(``input_tokens`` / ``output_tokens``), so charged amounts are exact. The server keeps each
request body (``requests``, ``calls``) so a test can tell whether a refused call reached it and
what the guard wrote into it. ``fail_next`` makes the next calls answer 500; ``chunk_delay_s``
slows a stream so that it can be abandoned midway; ``fail_midstream`` sends an ``error`` event
after the first word; ``tool_uses`` (tool names) makes a JSON answer call those tools;
``cache`` reports cache reads and five-minute and one-hour cache writes.
``POST /v1/messages/count_tokens`` is free and answers ``input_tokens``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["FakeAnthropic"]


@dataclass
class FakeAnthropic:
    """What the fake Anthropic server answers, and what it received."""

    input_tokens: int = 1000
    output_tokens: int = 200
    words: tuple[str, ...] = ("Hello", " from", " the", " fake", " model", ".")
    chunk_delay_s: float = 0.0
    fail_next: int = 0
    fail_midstream: bool = False
    tool_uses: tuple[str, ...] = ()
    cache: tuple[int, int, int] = (0, 0, 0)  # cache reads, 5-minute and 1-hour writes
    web_searches: int = 0  # server tool use reported (usage.server_tool_use)
    speed: str = "standard"  # the speed of the last request, reported in its usage
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)  # of each request, in order
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def calls(self) -> int:
        """How many message requests reached the server."""
        with self.lock:
            return len(self.requests)

    def reset(self) -> None:
        """Forget the requests received and restore the defaults a test may have changed."""
        with self.lock:
            self.requests.clear()
            self.headers.clear()
        self.chunk_delay_s = 0.0
        self.fail_next = 0
        self.fail_midstream = False
        self.tool_uses = ()
        self.cache = (0, 0, 0)
        self.web_searches = 0

    def _message(
        self, model: str, content: list[dict[str, Any]], stop: str | None
    ) -> dict[str, Any]:
        return {
            "id": f"msg_{uuid.uuid4().hex}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": self._usage(self.output_tokens),
        }

    def _server_use(self) -> dict[str, Any]:
        if not self.web_searches:
            return {}
        return {"server_tool_use": {"web_search_requests": self.web_searches}}

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        reads, writes, writes_1h = self.cache
        extra: dict[str, Any] = {"speed": self.speed, **self._server_use()}
        return {
            **extra,
            "input_tokens": self.input_tokens,
            "output_tokens": output_tokens,
            "cache_read_input_tokens": reads,
            "cache_creation_input_tokens": writes + writes_1h,
            "cache_creation": {
                "ephemeral_5m_input_tokens": writes,
                "ephemeral_1h_input_tokens": writes_1h,
            },
        }

    async def messages(self, request: Request) -> Response:
        body = await request.json()
        with self.lock:
            self.requests.append(body)
            self.headers.append(dict(request.headers))
            failing = self.fail_next > 0
            if failing:
                self.fail_next -= 1
        if failing:
            error = {"type": "error", "error": {"type": "api_error", "message": "fake failure"}}
            return JSONResponse(error, status_code=500)
        model = body["model"]
        self.speed = str(body.get("speed") or "standard")
        if not body.get("stream"):
            text: list[dict[str, Any]] = [{"type": "text", "text": "".join(self.words)}]
            text += [
                {"type": "tool_use", "id": f"toolu_{n}", "name": name, "input": {}}
                for n, name in enumerate(self.tool_uses)
            ]
            stop = "tool_use" if self.tool_uses else "end_turn"
            return JSONResponse(self._message(model, text, stop))
        return StreamingResponse(self._events(model), media_type="text/event-stream")

    async def _events(self, model: str) -> AsyncIterator[str]:
        def event(name: str, data: dict[str, Any]) -> str:
            return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"

        start = self._message(model, [], None)
        start["usage"] = self._usage(1)
        yield event("message_start", {"message": start})
        yield event(
            "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
        )
        for n, word in enumerate(self.words):
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            yield event(
                "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": word}}
            )
            if n == 0 and self.fail_midstream:
                yield event(
                    "error", {"error": {"type": "overloaded_error", "message": "overloaded"}}
                )
                return
        yield event("content_block_stop", {"index": 0})
        for n, name in enumerate(self.tool_uses, start=1):
            block = {"type": "tool_use", "id": f"toolu_{n}", "name": name, "input": {}}
            yield event("content_block_start", {"index": n, "content_block": block})
            delta = {"type": "input_json_delta", "partial_json": "{}"}
            yield event("content_block_delta", {"index": n, "delta": delta})
            yield event("content_block_stop", {"index": n})
        yield event(
            "message_delta",
            {
                "delta": {
                    "stop_reason": "tool_use" if self.tool_uses else "end_turn",
                    "stop_sequence": None,
                },
                "usage": {"output_tokens": self.output_tokens, **self._server_use()},
            },
        )
        yield event("message_stop", {})

    async def count_tokens(self, request: Request) -> Response:
        await request.body()
        return JSONResponse({"input_tokens": self.input_tokens})

    def app(self) -> Starlette:
        """The ASGI app serving ``/v1/messages`` and ``/v1/messages/count_tokens``."""
        return Starlette(
            routes=[
                Route("/v1/messages", self.messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
            ]
        )
