"""Reserve + commit latency with 100,000 tenants in Redis vs 10, side by side in one run.

A template tenant is built through the engine (a day, a month and a sliding hour, five
features, a few settled calls); its keys are copied with ``DUMP`` / ``RESTORE`` under 100,000
other tenant ids (pipelined, seconds), so the keyspace holds 100,000 tenants in the same
state. Then reserve + commit pairs alternate between the 10 "small" tenants and random ones of
the 100,000, so drift on the machine hits both alike. ``scale_p50_100k_over_10`` is the ratio
of the p50s (target at most 1.1).

``python -m benchmarks.bench_scale [--quick] [--redis-url URL]`` prints a table, then one JSON
line. ``run`` is a coroutine function.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from typing import Any

from tokenfence_asgi.config import DEFAULT_FEATURE_WEIGHTS, Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.store.keys import encode_id

PLAN = Plan(
    "realistic",
    [
        Limit("1d", max_cost="1000", max_requests=10**9),
        Limit("1mo", max_cost="30000"),
        Limit("1h", max_cost="100", kind="sliding"),
    ],
    features=DEFAULT_FEATURE_WEIGHTS,
)
FEATURES = list(DEFAULT_FEATURE_WEIGHTS)


async def _clone(client: Any, prefix: str, template: str, tenants: list[str]) -> int:
    """Copy the budget state of ``template`` to each of ``tenants`` (same TTLs); keys per tenant.

    Its settled reservation records are left out: they belong to its own calls.
    """
    old = encode_id(template)
    keys = [k.decode() async for k in client.scan_iter(match=f"{prefix}:{{t.{old}}}*", count=1000)]
    dumps = []
    for key in keys:
        if ":r:" not in key:
            dumps.append((key, await client.dump(key), max(0, await client.pttl(key))))
    for start in range(0, len(tenants), 2000):
        async with client.pipeline(transaction=False) as pipe:
            for tenant in tenants[start : start + 2000]:
                new = encode_id(tenant)
                for key, blob, ttl in dumps:
                    pipe.restore(key.replace(old, new), ttl, blob, replace=True)
            await pipe.execute()
    return len(dumps)


async def _delete(client: Any, prefix: str) -> None:
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{prefix}:*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            await client.unlink(*batch)
            batch.clear()
    if batch:
        await client.unlink(*batch)


async def _pair(fence: TokenFence, tenant: str, feature: str) -> float:
    t0 = time.perf_counter()
    r = await fence.reserve(tenant, "0.0123", feature=feature)
    await fence.commit(r, "0.0101", input_tokens=1000, output_tokens=200)
    return time.perf_counter() - t0


async def run(redis_url: str, *, quick: bool, tenants: int = 100_000) -> dict[str, Any]:
    n = 2_000 if quick else 20_000
    prefix = f"tfbench{uuid.uuid4().hex[:8]}"
    fence = TokenFence(redis_url=redis_url, plans=[PLAN], default_plan="realistic", prefix=prefix)
    client = fence._store.client
    rng = random.Random(7)
    try:
        for i in range(10):  # the template's state: a few settled calls on every feature
            await _pair(fence, "template", FEATURES[i % 5])
        many = [f"tenant-{i}" for i in range(tenants)]
        small = many[:10]
        t0 = time.perf_counter()
        keys_per_tenant = await _clone(client, prefix, "template", many)
        clone_s = time.perf_counter() - t0
        for i in range(200):  # warm up
            await _pair(fence, small[i % 10], FEATURES[i % 5])
        few: list[float] = []
        lots: list[float] = []
        for i in range(n):
            few.append(await _pair(fence, small[i % 10], FEATURES[i % 5]))
            lots.append(await _pair(fence, rng.choice(many), FEATURES[i % 5]))
    finally:
        await _delete(client, prefix)
        await fence.aclose()
    p50_few, p50_lots = statistics.median(few), statistics.median(lots)
    return {
        "scale_tenants": tenants,
        "scale_keys_per_tenant": keys_per_tenant,
        "scale_clone_s": round(clone_s, 1),
        "scale_p50_10_us": round(p50_few * 1e6, 1),
        "scale_p50_100k_us": round(p50_lots * 1e6, 1),
        "scale_p50_100k_over_10": round(p50_lots / p50_few, 3),
    }


def main() -> None:
    from benchmarks.__main__ import run_alone

    run_alone("python -m benchmarks.bench_scale", lambda url, quick: run(url, quick=quick))


if __name__ == "__main__":
    main()
