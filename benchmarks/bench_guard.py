"""Per-call time of an ``AsyncOpenAI`` chat completion with and without ``fence.guard``.

A small OpenAI-compatible server (Starlette on uvicorn, h11, one JSON answer with usage) runs as
a child process on loopback, so that it does not share this process's interpreter. This process
makes the same ``chat.completions.create`` call (``max_tokens=64``) through a plain
``AsyncOpenAI`` and through ``fence.guard(AsyncOpenAI(...), tenant=...)`` on real Redis: a
guarded call adds the estimate (the price book's token counter), one reserve (awaited), one
commit (queued, sent in the background; a batch is timed until its last commit landed) and
reading the answer's usage. The two run in alternating batches (plain, guarded; guarded,
plain; ...) after a warm-up, so that drift on the machine hits both alike; ``guard_ratio`` is
the median of the per-round ratios; the target is at most 1.10. A third variant makes the same
plain call wrapped by hand in ``fence.reserve`` and ``fence.commit_soon`` (the least glue that
fences it at all, with none of the plan's rules): ``glue_ratio`` (glue over plain) is the
floor any fencing of the call pays here, mostly its one awaited round trip, and
``guard_over_glue_ratio`` is what the guard costs beyond that.

``python -m benchmarks.bench_guard [--quick] [--redis-url URL]`` prints a table, then one JSON
line. ``run`` is a coroutine function.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import openai
import redis.asyncio as aioredis

from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence

PLAN = Plan("bench", [Limit("1d", max_cost="1000000", max_requests=10**9)])
MSGS = [{"role": "user", "content": "Summarise this support ticket in one sentence, please."}]
ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "A customer asks for a refund."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 19, "completion_tokens": 8, "total_tokens": 27},
}


def serve(port: int) -> None:
    """The child process: answer every ``POST /v1/chat/completions`` with ``ANSWER``."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def chat(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse(ANSWER)

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, http="h11", log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    code = f"from benchmarks.bench_guard import serve; serve({port})"
    proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError("the benchmark's provider did not start")
        try:
            httpx.post(f"{url}/v1/chat/completions", json={}, timeout=1)
            return proc, url
        except httpx.TransportError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the benchmark's provider did not answer") from None
            time.sleep(0.1)


async def _batch(
    client: Any, calls: int, fence: TokenFence | None = None, *, glue: bool = False
) -> float:
    """Seconds per call for ``calls`` sequential chat completions on ``client``, until the
    last commit of ``fence`` (if any) landed; with ``glue``, each wrapped by hand in a reserve
    and a queued commit (the glue the guard replaces)."""
    start = time.perf_counter()
    for _ in range(calls):
        if not glue:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, max_tokens=64)
            continue
        assert fence is not None
        held = await fence.reserve("bench-glue", "0.0001", feature="chat", model="gpt-4o-mini")
        answer = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MSGS, max_tokens=64
        )
        usage = answer.usage
        cost = (usage.prompt_tokens * 15 + usage.completion_tokens * 60) / 10**8
        await fence.commit_soon(
            held, str(cost), input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens
        )
    if fence is not None:
        await fence.commits.flush()
    return (time.perf_counter() - start) / calls


async def run(redis_url: str, *, quick: bool) -> dict[str, float]:
    """Time both variants in alternating rounds; return ms per call and the ratio."""
    rounds, calls = (8, 25) if quick else (30, 50)
    prefix = f"tfbench{uuid.uuid4().hex[:8]}"
    proc, url = _start()
    fence = TokenFence(redis_url=redis_url, plans=[PLAN], default_plan="bench", prefix=prefix)
    plain = openai.AsyncOpenAI(api_key="sk-bench", base_url=f"{url}/v1", max_retries=0)
    guarded = fence.guard(
        openai.AsyncOpenAI(api_key="sk-bench", base_url=f"{url}/v1", max_retries=0),
        tenant="bench-tenant",
        feature="chat",
    )
    bare: list[float] = []
    fenced: list[float] = []
    glued: list[float] = []
    ratios: list[float] = []
    over_glue: list[float] = []
    glue_ratios: list[float] = []
    try:
        await _batch(plain, calls)  # warm up: connections, the script cache, the tokenizer
        await _batch(guarded, calls, fence)
        await _batch(plain, calls, fence, glue=True)
        for i in range(rounds):
            times = {}
            order = ["plain", "guarded", "glue"]
            for name in order if i % 2 == 0 else order[::-1]:
                client = guarded if name == "guarded" else plain
                times[name] = await _batch(
                    client, calls, None if name == "plain" else fence, glue=name == "glue"
                )
            bare.append(times["plain"])
            fenced.append(times["guarded"])
            glued.append(times["glue"])
            ratios.append(times["guarded"] / times["plain"])
            over_glue.append(times["guarded"] / times["glue"])
            glue_ratios.append(times["glue"] / times["plain"])
        status = await fence.status("bench-tenant")
        if status.held != 0:
            raise RuntimeError(f"holds left open after the benchmark: {status.held}")
    finally:
        await plain.close()
        await guarded.close()
        await fence.aclose()
        proc.terminate()
        proc.wait(timeout=10)
        client = aioredis.Redis.from_url(redis_url)
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            await client.delete(key)
        await client.aclose()
    return {
        "guard_plain_ms": round(statistics.median(bare) * 1000, 3),
        "guard_fenced_ms": round(statistics.median(fenced) * 1000, 3),
        "guard_glue_ms": round(statistics.median(glued) * 1000, 3),
        "guard_ratio": round(statistics.median(ratios), 3),
        "guard_over_glue_ratio": round(statistics.median(over_glue), 3),
        "glue_ratio": round(statistics.median(glue_ratios), 3),
    }


def main() -> None:
    from benchmarks.__main__ import run_alone

    run_alone("python -m benchmarks.bench_guard", lambda url, quick: run(url, quick=quick))


if __name__ == "__main__":
    main()
