"""A small OpenAI-compatible chat server on loopback, for tests that go through real HTTP.

``/v1/chat/completions`` answers JSON or, with ``"stream": true``, server-sent events whose
last chunk carries ``usage`` when ``stream_options.include_usage`` is set (as OpenAI does). The
server counts the calls it received and keeps each request body, so a test can tell whether a
refused call ever reached the provider and what the callback changed in it. ``fail_next``
makes the next calls answer 500; ``chunk_delay_s`` slows a stream down so that it can be
abandoned midway. Usage is fixed per call (``prompt_tokens`` / ``completion_tokens``), so
charged amounts are exact. ``tool_calls`` (tool names) makes a JSON answer call those tools.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.e2e.servers import free_port, serve

__all__ = ["FakeProvider", "free_port", "serve"]


@dataclass
class FakeProvider:
    """What the fake server answers, and what it received."""

    prompt_tokens: int = 1000
    completion_tokens: int = 200
    words: tuple[str, ...] = ("Hello", " from", " the", " fake", " provider", ".")
    chunk_delay_s: float = 0.0
    fail_next: int = 0
    tool_calls: tuple[str, ...] = ()
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def calls(self) -> int:
        """How many chat requests reached the server."""
        with self.lock:
            return len(self.requests)

    def reset(self) -> None:
        """Forget the requests received and restore the defaults a test may have changed."""
        with self.lock:
            self.requests.clear()
        self.chunk_delay_s = 0.0
        self.fail_next = 0
        self.tool_calls = ()

    def _usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    async def chat(self, request: Request) -> Response:
        body, failed = await self._received(request)
        if failed is not None:
            return failed
        call_id = f"chatcmpl-{uuid.uuid4().hex}"
        model = body["model"]
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(self.words)}
            if self.tool_calls:
                message = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": f"call_{n}",
                            "type": "function",
                            "function": {"name": name, "arguments": "{}"},
                        }
                        for n, name in enumerate(self.tool_calls)
                    ],
                }
            return JSONResponse(
                {
                    "id": call_id,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "finish_reason": "tool_calls" if self.tool_calls else "stop",
                        }
                    ],
                    "usage": self._usage(),
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            self._events(call_id, model, include_usage), media_type="text/event-stream"
        )

    async def _events(self, call_id: str, model: str, include_usage: bool) -> AsyncIterator[str]:
        def chunk(delta: dict[str, Any], finish: str | None) -> str:
            data = {
                "id": call_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(data)}\n\n"

        yield chunk({"role": "assistant", "content": ""}, None)
        for word in self.words:
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            yield chunk({"content": word}, None)
        for n, name in enumerate(self.tool_calls):  # the name in a call's first delta only
            function = {"name": name, "arguments": ""}
            yield chunk(
                {
                    "tool_calls": [
                        {"index": n, "id": f"call_{n}", "type": "function", "function": function}
                    ]
                },
                None,
            )
            arguments = {"arguments": "{}"}
            yield chunk({"tool_calls": [{"index": n, "function": arguments}]}, None)
        yield chunk({}, "tool_calls" if self.tool_calls else "stop")
        if include_usage:
            data = {
                "id": call_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": self._usage(),
            }
            yield f"data: {json.dumps(data)}\n\n"
        yield "data: [DONE]\n\n"

    async def _received(self, request: Request) -> tuple[dict[str, Any], Response | None]:
        """Record a request's body (JSON, or the form of an upload); a 500 when told to fail."""
        if request.headers.get("content-type", "").startswith("multipart/"):
            body: dict[str, Any] = {"bytes": len(await request.body())}  # an upload
        else:
            body = await request.json()
        body["path"] = request.url.path
        with self.lock:
            self.requests.append(body)
            failing = self.fail_next > 0
            if failing:
                self.fail_next -= 1
        if failing:
            error = {"error": {"message": "fake provider failure", "type": "server_error"}}
            return body, JSONResponse(error, status_code=500)
        return body, None

    async def embeddings(self, request: Request) -> Response:
        body, failed = await self._received(request)
        if failed is not None:
            return failed
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        usage = {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens}
        data = [
            {"object": "embedding", "index": i, "embedding": [0.1, 0.2]} for i in range(len(inputs))
        ]
        return JSONResponse(
            {"object": "list", "data": data, "model": body["model"], "usage": usage}
        )

    async def completions(self, request: Request) -> Response:
        body, failed = await self._received(request)
        if failed is not None:
            return failed
        return JSONResponse(
            {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "text": "".join(self.words),
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": self._usage(),
            }
        )

    async def responses(self, request: Request) -> Response:
        body, failed = await self._received(request)
        if failed is not None:
            return failed
        text = "".join(self.words)
        message_id = f"msg_{uuid.uuid4().hex}"
        response: dict[str, Any] = {
            "id": f"resp_{uuid.uuid4().hex}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": body["model"],
            "output": [
                {
                    "type": "message",
                    "id": message_id,
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "usage": {
                "input_tokens": self.prompt_tokens,
                "output_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
            },
        }
        if not body.get("stream"):
            return JSONResponse(response)
        return StreamingResponse(
            self._response_events(response, message_id), media_type="text/event-stream"
        )

    async def _response_events(
        self, response: dict[str, Any], message_id: str
    ) -> AsyncIterator[str]:
        """The Responses API's server-sent events: created, text deltas, completed with usage."""

        def event(kind: str, **fields: Any) -> str:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n"

        started = {**response, "status": "in_progress", "output": [], "usage": None}
        yield event("response.created", response=started, sequence_number=0)
        for n, word in enumerate(self.words, start=1):
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            yield event(
                "response.output_text.delta",
                item_id=message_id,
                output_index=0,
                content_index=0,
                delta=word,
                sequence_number=n,
            )
        yield event("response.completed", response=response, sequence_number=len(self.words) + 1)

    async def speech(self, request: Request) -> Response:
        _, failed = await self._received(request)
        if failed is not None:
            return failed
        return Response(b"ID3fake-audio", media_type="audio/mpeg")

    async def transcriptions(self, request: Request) -> Response:
        _, failed = await self._received(request)
        if failed is not None:
            return failed
        return JSONResponse({"text": "".join(self.words)})

    async def images(self, request: Request) -> Response:
        body, failed = await self._received(request)
        if failed is not None:
            return failed
        data = [
            {"url": f"https://images.invalid/{uuid.uuid4().hex}.png"}
            for _ in range(int(body.get("n") or 1))
        ]
        return JSONResponse({"created": int(time.time()), "data": data})

    async def rerank(self, request: Request) -> Response:
        body, failed = await self._received(request)
        if failed is not None:
            return failed
        results = [
            {"index": i, "relevance_score": 1.0 / (i + 1)}
            for i in range(len(body.get("documents") or ()))
        ]
        return JSONResponse(
            {
                "id": uuid.uuid4().hex,
                "results": results,
                "meta": {"billed_units": {"search_units": 1}},
            }
        )

    def app(self) -> Starlette:
        """The ASGI app serving the OpenAI paths: chat and text completions, embeddings,
        responses, speech and transcriptions (all under ``/v1``), and Cohere's rerank."""
        routes = [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/responses", self.responses, methods=["POST"]),
            Route("/v1/audio/speech", self.speech, methods=["POST"]),
            Route("/v1/audio/transcriptions", self.transcriptions, methods=["POST"]),
            Route("/v1/images/generations", self.images, methods=["POST"]),
            Route("/v1/rerank", self.rerank, methods=["POST"]),
            Route("/v2/rerank", self.rerank, methods=["POST"]),
        ]
        return Starlette(routes=routes)
