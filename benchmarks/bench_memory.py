"""Redis memory per active tenant, from ``MEMORY USAGE`` summed over the tenant's keys.

A realistic plan: $5 per UTC day, $150 per calendar month, $0.50 per rolling hour, five
features. Each tenant makes ``calls`` reserve + commit pairs spread over its features and an
hour. Reported separately: the tenant's budget state (state hash, sliding window, holds, daily
usage counters), the settled reservation records kept for ``record_ttl`` so repeats are
recognised, and the usage ledger's stream entries (kept ``ledger_retention``), per call.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tokenfence_asgi.config import DEFAULT_FEATURE_WEIGHTS, Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence

PLAN = Plan(
    "realistic",
    [
        Limit("1d", max_cost="5", max_requests=500),
        Limit("1mo", max_cost="150"),
        Limit("1h", max_cost="0.50", kind="sliding"),
    ],
    features=DEFAULT_FEATURE_WEIGHTS,
)


async def run(redis_url: str, *, tenants: int = 200, calls: int = 20) -> dict[str, Any]:
    prefix = f"tfmem{uuid.uuid4().hex[:8]}"
    now = [1_800_000_000.0]
    fence = TokenFence(
        redis_url=redis_url,
        plans=[PLAN],
        default_plan="realistic",
        prefix=prefix,
        clock=lambda: now[0],
    )
    client = fence._store.client
    features = list(DEFAULT_FEATURE_WEIGHTS)
    try:
        for i in range(calls):
            now[0] += 3600 / calls
            for t in range(tenants):
                r = await fence.reserve(f"tenant-{t}", "0.002", feature=features[i % 5])
                await fence.commit(r, "0.0015", input_tokens=900, output_tokens=150)
        state = records = ledger = 0
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            size = await client.memory_usage(key, samples=0) or 0
            if b":r:" in key:
                records += size
            elif await client.type(key) == b"stream":
                ledger += size
            else:
                state += size
    finally:
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            await client.delete(key)
        await fence.aclose()
    return {
        "redis_bytes_per_tenant": round(state / tenants),
        "record_bytes_per_call": round(records / (tenants * calls)),
        "ledger_bytes_per_call": round(ledger / (tenants * calls)),
    }


if __name__ == "__main__":
    import os

    url = os.environ.get("TOKENFENCE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    print(asyncio.run(run(url)))
