"""The fake OpenAI server of ``tests.e2e.fake_provider``, with what the guard tests also need.

Added here (the base server is unchanged): a streamed Responses API (``response.created``, one
``response.output_text.delta`` per word, ``response.completed`` with the usage), image
generation (``n`` images, no token usage, as dall-e answers), and the Azure OpenAI paths
(``/openai/deployments/{deployment}/...`` and ``/openai/...``) served by the same handlers.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.e2e.fake_provider import FakeProvider

__all__ = ["GuardProvider"]


class GuardProvider(FakeProvider):
    """``FakeProvider`` plus streamed responses, images and the Azure paths; ``cached_tokens``
    of the prompt reported as cached (``prompt_tokens_details``)."""

    cached_tokens: int = 0

    def reset(self) -> None:
        super().reset()
        self.cached_tokens = 0

    def _usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = dict(super()._usage())
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage

    async def responses(self, request: Request) -> Response:
        body = json.loads(await request.body())
        if not body.get("stream"):
            return await super().responses(request)
        _, failed = await self._received(request)
        if failed is not None:
            return failed
        return StreamingResponse(
            self._response_events(body["model"]), media_type="text/event-stream"
        )

    async def _response_events(self, model: str) -> AsyncIterator[str]:
        def event(name: str, n: int, data: dict[str, Any]) -> str:
            payload = {"type": name, "sequence_number": n, **data}
            return f"event: {name}\ndata: {json.dumps(payload)}\n\n"

        rid, mid = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
        base = {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "model": model,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "output": [],
        }
        yield event("response.created", 0, {"response": {**base, "status": "in_progress"}})
        text = ""
        for n, word in enumerate(self.words):
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            text += word
            yield event(
                "response.output_text.delta",
                n + 1,
                {
                    "item_id": mid,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": word,
                    "logprobs": [],
                },
            )
        item = {
            "type": "message",
            "id": mid,
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        usage = {
            "input_tokens": self.prompt_tokens,
            "output_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        done = {**base, "status": "completed", "output": [item], "usage": usage}
        yield event("response.completed", len(self.words) + 1, {"response": done})

    async def images(self, request: Request) -> Response:
        body, failed = await self._received(request)
        if failed is not None:
            return failed
        n = body.get("n") or 1
        return JSONResponse(
            {"created": int(time.time()), "data": [{"b64_json": "aW1hZ2U="} for _ in range(n)]}
        )

    async def azure(self, request: Request) -> Response:
        rest = request.path_params["rest"].rstrip("/")
        handler = {
            "chat/completions": self.chat,
            "completions": self.completions,
            "embeddings": self.embeddings,
            "responses": self.responses,
            "images/generations": self.images,
            "audio/speech": self.speech,
            "audio/transcriptions": self.transcriptions,
        }.get(rest)
        if handler is None:
            return JSONResponse({"error": {"message": f"no route {rest}"}}, status_code=404)
        return await handler(request)

    def app(self) -> Starlette:
        """The base server's routes, plus images and the Azure paths."""
        app = super().app()
        app.router.routes.extend(
            [
                Route("/v1/images/generations", self.images, methods=["POST"]),
                Route("/openai/deployments/{deployment}/{rest:path}", self.azure, methods=["POST"]),
                Route("/openai/{rest:path}", self.azure, methods=["POST"]),
            ]
        )
        return app
