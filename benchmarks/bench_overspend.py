"""Overspend under a race: 100 concurrent calls (10 ms each) for a budget that fits 10.

Side by side in one run: our fence (reserve the estimate, call, commit the cost; real Redis)
and the ``tokenfence`` package's ``async_guard(on_limit="raise")`` (in-process, checks the
spend before a call and records it after). The fake provider answers after 10 ms with 1,000
input and 200 output tokens of gpt-4o-mini ($0.00027 a call, at both libraries' prices).
``overspend_factor`` is spend / budget for ours (target: at most 1.0), beside
``tokenfence_overspend_factor``. ``overhead_us`` and ``tokenfence_overhead_us`` are the added
time per sequential call against an instant provider (informational: theirs stays in-process,
ours crosses the network twice).

``python -m benchmarks.bench_overspend [--quick] [--redis-url URL]`` prints a table, then one
JSON line. ``run`` is a coroutine function.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from tokenfence import async_guard
from tokenfence.exceptions import BudgetExceeded as TheirBudgetExceeded

from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import BudgetExceeded

CALL_COST = Decimal("0.00027")  # 1000 x $0.15/M + 200 x $0.60/M
BUDGET = CALL_COST * 10
CALLERS = 100


class FakeClient:
    """The shape of ``openai.AsyncOpenAI`` that both guards use: ``chat.completions.create``."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.calls = 0
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    async def create(self, **kwargs: Any) -> Any:
        self.calls += 1
        await asyncio.sleep(self.latency_s)
        usage = SimpleNamespace(prompt_tokens=1000, completion_tokens=200)
        return SimpleNamespace(usage=usage, model=kwargs.get("model"))


async def _ours_race(fence: TokenFence, tenant: str) -> tuple[Decimal, int]:
    provider = FakeClient(0.010)

    async def call() -> None:
        try:
            r = await fence.reserve(tenant, CALL_COST, model="gpt-4o-mini")
        except BudgetExceeded:
            return
        await provider.create(model="gpt-4o-mini")
        await fence.commit(r, CALL_COST, input_tokens=1000, output_tokens=200)

    await asyncio.gather(*(call() for _ in range(CALLERS)))
    return (await fence.status(tenant)).windows[0].used, provider.calls


async def _theirs_race() -> tuple[Decimal, int]:
    provider = FakeClient(0.010)
    guarded = async_guard(provider, budget=float(BUDGET), on_limit="raise")

    async def call() -> None:
        try:
            await guarded.chat.completions.create(model="gpt-4o-mini", messages=[])
        except TheirBudgetExceeded:
            return

    await asyncio.gather(*(call() for _ in range(CALLERS)))
    return Decimal(str(guarded.tokenfence.spent)), provider.calls


async def _overhead_us(fence: TokenFence, n: int) -> tuple[float, float]:
    """Median added microseconds per call: ours and theirs, against an instant provider."""
    provider = FakeClient(0.0)
    guarded = async_guard(provider, budget=1e9, on_limit="raise")

    async def plain() -> None:
        await provider.create(model="gpt-4o-mini")

    async def ours() -> None:
        r = await fence.reserve("overhead", CALL_COST, model="gpt-4o-mini")
        await provider.create(model="gpt-4o-mini")
        await fence.commit(r, CALL_COST)

    async def theirs() -> None:
        await guarded.chat.completions.create(model="gpt-4o-mini", messages=[])

    samples: dict[str, list[float]] = {"plain": [], "ours": [], "theirs": []}
    for _ in range(n):  # interleaved, so drift hits all three alike
        for label, fn in (("plain", plain), ("ours", ours), ("theirs", theirs)):
            t0 = time.perf_counter()
            await fn()
            samples[label].append(time.perf_counter() - t0)
    base = statistics.median(samples["plain"])
    return (
        (statistics.median(samples["ours"]) - base) * 1e6,
        (statistics.median(samples["theirs"]) - base) * 1e6,
    )


async def run(redis_url: str, *, quick: bool) -> dict[str, Any]:
    prefix = f"tfbench{uuid.uuid4().hex[:8]}"
    race = Plan("race", [Limit("1d", max_cost=BUDGET), Limit("1mo", max_cost="1000")])
    roomy = Plan("roomy", [Limit("1d", max_cost="100000"), Limit("1mo", max_cost="1000000")])
    fence = TokenFence(
        redis_url=redis_url, plans=[race, roomy], default_plan="roomy", prefix=prefix
    )
    client = fence._store.client
    try:
        await fence.set_plan("racer", "race")
        ours, our_calls = await _ours_race(fence, "racer")
        theirs, their_calls = await _theirs_race()
        ours_us, theirs_us = await _overhead_us(fence, 300 if quick else 3000)
    finally:
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            await client.delete(key)
        await fence.aclose()
    return {
        "overspend_calls_made": our_calls,
        "overspend_factor": float(round(ours / BUDGET, 3)),
        "tokenfence_calls_made": their_calls,
        "tokenfence_overspend_factor": float(round(theirs / BUDGET, 3)),
        "overhead_us": round(ours_us, 1),
        "tokenfence_overhead_us": round(theirs_us, 1),
    }


def main() -> None:
    from benchmarks.__main__ import run_alone

    run_alone("python -m benchmarks.bench_overspend", lambda url, quick: run(url, quick=quick))


if __name__ == "__main__":
    main()
