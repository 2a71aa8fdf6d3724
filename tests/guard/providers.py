"""The fake OpenAI server of ``tests.e2e.fake_provider``, with what the guard tests also need.

Added here (the base server is unchanged): a streamed Responses API (``response.created``, one
``response.output_text.delta`` per word, ``response.completed`` with the usage), image
generation (``n`` images, no token usage, as dall-e answers), and the Azure OpenAI paths
(``/openai/deployments/{deployment}/...`` and ``/openai/...``) served by the same handlers.
Chat completions and responses report the ``service_tier`` they were served at (the one asked
for, ``"default"`` for ``"auto"`` or none, or ``served_tier`` when set), and responses carry
``web_searches`` ``web_search_call`` output items.
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
    served_tier: str | None = None  # the tier reported; None: the one asked for
    web_searches: int = 0  # web_search_call items in a response's output

    def reset(self) -> None:
        super().reset()
        self.cached_tokens = 0
        self.served_tier = None
        self.web_searches = 0

    def _tier(self, body: dict[str, Any]) -> str:
        asked = body.get("service_tier")
        return self.served_tier or ("default" if asked in (None, "auto") else str(asked))

    def _searches(self) -> list[dict[str, Any]]:
        return [
            {
                "type": "web_search_call",
                "id": f"ws_{n}",
                "status": "completed",
                "action": {"type": "search", "query": "weather"},
            }
            for n in range(self.web_searches)
        ]

    async def _served(self, request: Request, response: Response, body: dict[str, Any]) -> Response:
        """A JSON answer with the tier it was served at (and, for a response, its searches)."""
        if not isinstance(response, JSONResponse) or response.status_code != 200:
            return response
        answer = json.loads(bytes(response.body))
        answer["service_tier"] = self._tier(body)
        if answer.get("object") == "response":
            answer["output"] = self._searches() + answer["output"]
        return JSONResponse(answer)

    async def chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        return await self._served(request, await super().chat(request), body)

    def _usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = dict(super()._usage())
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage

    async def responses(self, request: Request) -> Response:
        body = json.loads(await request.body())
        if not body.get("stream"):
            return await self._served(request, await super().responses(request), body)
        _, failed = await self._received(request)
        if failed is not None:
            return failed
        return StreamingResponse(
            self._response_events(body["model"], self._tier(body)), media_type="text/event-stream"
        )

    async def _response_events(self, model: str, tier: str = "default") -> AsyncIterator[str]:
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
        searches = self._searches()
        for n, search in enumerate(searches):
            yield event("response.output_item.done", 0, {"output_index": n, "item": search})
        calls = [
            {
                "type": "function_call",
                "id": f"fc_{n}",
                "call_id": f"call_{n}",
                "name": name,
                "arguments": "{}",
                "status": "completed",
            }
            for n, name in enumerate(self.tool_calls)
        ]
        for n, call in enumerate(calls):
            added = {**call, "arguments": "", "status": "in_progress"}
            yield event("response.output_item.added", 0, {"output_index": n + 1, "item": added})
        done = {
            **base,
            "status": "completed",
            "output": [*searches, item, *calls],
            "usage": usage,
            "service_tier": tier,
        }
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
