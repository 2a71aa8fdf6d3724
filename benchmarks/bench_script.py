"""The reserve script's own cost inside Redis: ``redis-benchmark`` EVALSHA rates, side by side.

A tenant on a realistic plan (a day, a month and a sliding hour, five features) with 20 open
holds; the exact EVALSHA the engine sends for one reserve is captured, its reservation id
replaced by redis-benchmark's ``__rand_int__`` so that every call is a new reservation, and
run by ``redis-benchmark`` beside ``EVALSHA`` of ``return 1`` (same server, same client
settings, same run). ``reserve_script_rate_over_trivial_evalsha`` is the ratio of the rates:
1.0 would mean the script's own work is free; the target is at least 0.5.

``python -m benchmarks.bench_script [--quick] [--redis-url URL]`` prints a table, then one
JSON line. ``run`` is a coroutine function.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from typing import Any
from urllib.parse import urlparse

from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence

PLAN = Plan(
    "realistic",
    [
        Limit("1d", max_cost="1000000", max_requests=10**9),
        Limit("1mo", max_cost="4000000"),
        Limit("1h", max_cost="1000000", kind="sliding"),
    ],
    features={"chat": 0.4, "document_analysis": 0.3, "summarization": 0.15,
              "classification": 0.1, "search": 0.05},
)  # fmt: skip


def _rate(host: str, port: int, db: int, n: int, command: list[str]) -> float:
    """Requests per second ``redis-benchmark`` measured for ``command`` (50 clients)."""
    argv = ["redis-benchmark", "-h", host, "-p", str(port), "--dbnum", str(db), "-n", str(n),
            "-c", "50", "-r", "100000000000", "--csv", *command]  # fmt: skip
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300).stdout
    rows = [line for line in out.splitlines() if line and not line.startswith('"test"')]
    return float(rows[-1].split(",")[1].strip('"'))


async def run(redis_url: str, *, quick: bool) -> dict[str, Any]:
    if shutil.which("redis-benchmark") is None:
        return {"reserve_script_rate_over_trivial_evalsha": "redis-benchmark not installed"}
    url = urlparse(redis_url)
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    db = int((url.path or "/0").lstrip("/") or 0)
    n = 20_000 if quick else 200_000
    prefix = f"tfbench{uuid.uuid4().hex[:8]}"
    # Every call is a new hold that stays open: no bound, or the calls after the 1,000th would
    # measure the open-holds refusal instead.
    fence = TokenFence(
        redis_url=redis_url,
        plans=[PLAN],
        default_plan="realistic",
        prefix=prefix,
        max_open_holds=None,
    )
    client = fence._store.client
    captured: list[tuple[list[str], list[str]]] = []
    script = fence._store._scripts["reserve"]

    async def capture(*, keys: list[str], args: list[str]) -> Any:
        captured.append((keys, args))
        return await script(keys=keys, args=args)

    try:
        for i in range(20):  # 20 open holds, spread over the features
            feature = ("chat", "document_analysis", "summarization", "classification", "search")
            await fence.reserve("acme", "0.0123", feature=feature[i % 5])
        fence._store._scripts["reserve"] = capture  # type: ignore[assignment]
        rid = f"bench{uuid.uuid4().hex}"
        await fence.reserve("acme", "0.0123", feature="chat", reservation_id=rid)
        fence._store._scripts["reserve"] = script
        keys, args = captured[-1]
        sha = script.sha
        trivial = str(await client.script_load("return 1"))
        fresh = "r__rand_int__"
        keys = [k.replace(rid, fresh) for k in keys]
        args = [a.replace(rid, fresh) for a in args]
        reserve = ["EVALSHA", sha, str(len(keys)), *keys, *args]
        rates: dict[str, list[float]] = {"trivial": [], "reserve": []}
        for _ in range(3):  # alternated, best of three each
            rates["trivial"].append(_rate(host, port, db, n, ["EVALSHA", trivial, "0"]))
            rates["reserve"].append(_rate(host, port, db, n, reserve))
    finally:
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            await client.delete(key)
        await fence.aclose()
    trivial_rate, reserve_rate = max(rates["trivial"]), max(rates["reserve"])
    return {
        "trivial_evalsha_per_s": round(trivial_rate),
        "reserve_script_per_s": round(reserve_rate),
        "reserve_script_args": len(keys) + len(args),
        "reserve_script_rate_over_trivial_evalsha": round(reserve_rate / trivial_rate, 3),
    }


def main() -> None:
    from benchmarks.__main__ import run_alone

    run_alone("python -m benchmarks.bench_script", lambda url, quick: run(url, quick=quick))


if __name__ == "__main__":
    main()
