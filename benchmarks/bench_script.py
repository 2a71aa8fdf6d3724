"""The reserve script's own cost inside Redis: ``redis-benchmark`` EVALSHA rates, side by side.

A realistic tenant: a day (cost and requests), a month and a sliding hour with spend in each of
its 60 minutes, five share-mode features, 20 open holds. The exact EVALSHA the engine sends for
one reserve is captured, its reservation id replaced by redis-benchmark's ``__rand_int__`` so
that every call is a new reservation, and run by ``redis-benchmark`` beside ``EVALSHA`` of
``return 1`` (same server, same client settings). The same tenant with one feature and with 20
features is measured the same way. Variants run in turns (trivial, 1, 5, 20 features, then
again), three turns; each figure is a ratio of medians.

- ``reserve_script_rate_over_trivial_evalsha``: the 5-feature reserve's rate over the trivial
  script's (1.0: the script's own work would be free; the target is at least 0.45);
- ``feature_cost_ratio_20_over_1``: the time of a reserve with 20 features over one with a
  single feature (1.0: the features cost nothing; the target is at most 1.2);
- ``reserve_server_us_over_trivial`` / ``commit_server_us_over_trivial``: the server's time in
  the script per call (``INFO commandstats``, 5 features) over the trivial script's.

``python -m benchmarks.bench_script [--quick] [--redis-url URL]`` prints a table, then one
JSON line. ``run`` is a coroutine function.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
import uuid
from typing import Any
from urllib.parse import urlparse

from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence

NAMES = ("chat", "document_analysis", "summarization", "classification", "search")


def plan(features: int) -> Plan:
    """The realistic plan with ``features`` share-mode features (weights summing to 1)."""
    names = [*NAMES, *(f"feature{k}" for k in range(features))][:features]
    weights = {name: round(1 / features, 6) for name in names}
    return Plan(
        f"realistic{features}",
        [
            Limit("1d", max_cost="1000000", max_requests=10**9),
            Limit("1mo", max_cost="4000000"),
            Limit("1h", max_cost="1000000", kind="sliding"),
        ],
        features=weights,
    )


def _rate(host: str, port: int, db: int, n: int, command: list[str]) -> float:
    """Requests per second ``redis-benchmark`` measured for ``command`` (50 clients)."""
    argv = ["redis-benchmark", "-h", host, "-p", str(port), "--dbnum", str(db), "-n", str(n)]
    argv += ["-c", "50", "-r", "100000000000", "--csv", *command]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300).stdout
    rows = [line for line in out.splitlines() if line and not line.startswith('"test"')]
    return float(rows[-1].split(",")[1].strip('"'))


Call = tuple[str, list[str], list[str]]


async def _tenant(redis_url: str, prefix: str, features: int) -> tuple[TokenFence, dict[str, Any]]:
    """A fence and its tenant in the realistic state; the reserve and commit calls it sends."""
    realistic = plan(features)
    names = list(realistic.features or {})
    now = time.time()
    clock = [now]
    # Spend in each minute of the sliding hour, on a clock that ends where the server's is.
    warm = TokenFence(
        redis_url=redis_url,
        plans=[realistic],
        default_plan=realistic.name,
        prefix=prefix,
        max_open_holds=None,
        clock=lambda: clock[0],
    )
    for minute in range(60):
        clock[0] = now - 3540.0 + 60 * minute
        held = await warm.reserve("acme", "0.0123", feature=names[minute % len(names)])
        await warm.commit(held, "0.0101")
    await warm.aclose()
    fence = TokenFence(
        redis_url=redis_url,
        plans=[realistic],
        default_plan=realistic.name,
        prefix=prefix,
        max_open_holds=None,
    )
    for i in range(20):  # 20 open holds, spread over the features
        await fence.reserve("acme", "0.0123", feature=names[i % len(names)])
    scripts = fence._store._scripts
    originals = dict(scripts)
    captured: dict[str, Any] = {}

    def capturing(name: str) -> Any:
        script = originals[name]

        async def capture(*, keys: list[str], args: list[str]) -> Any:
            captured[name] = (script.sha, keys, args)
            return await script(keys=keys, args=args)

        return capture

    scripts.update({name: capturing(name) for name in ("reserve", "commit")})
    rid = f"bench{uuid.uuid4().hex}"
    held = await fence.reserve("acme", "0.0123", feature=names[0], reservation_id=rid)
    await fence.commit(held, "0.0101")
    scripts.update(originals)
    return fence, {"rid": rid, **captured}


def _command(call: Call, rid: str, fresh: str) -> list[str]:
    sha, keys, args = call
    keys = [k.replace(rid, fresh) for k in keys]
    args = [a.replace(rid, fresh) for a in args]
    return ["EVALSHA", sha, str(len(keys)), *keys, *args]


def _server_us(client: Any, calls: list[list[str]]) -> float:
    """The server's median time in EVALSHA per call (INFO commandstats) over ``calls``."""
    client.config_resetstat()
    pipe = client.pipeline(transaction=False)
    for call in calls:
        pipe.execute_command(*call)
    pipe.execute()
    stats: dict[str, Any] = client.info("commandstats")["cmdstat_evalsha"]
    return float(stats["usec_per_call"])


async def run(redis_url: str, *, quick: bool) -> dict[str, Any]:
    if shutil.which("redis-benchmark") is None:
        return {"reserve_script_rate_over_trivial_evalsha": "redis-benchmark not installed"}
    import redis as sync_redis

    url = urlparse(redis_url)
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    db = int((url.path or "/0").lstrip("/") or 0)
    n = 20_000 if quick else 100_000
    prefix = f"tfbench{uuid.uuid4().hex[:8]}"
    client = sync_redis.Redis.from_url(redis_url)
    fences: list[TokenFence] = []
    commands: dict[str, list[str]] = {}
    try:
        captured = {}
        for features in (1, 5, 20):
            fence, calls = await _tenant(redis_url, f"{prefix}f{features}", features)
            fences.append(fence)
            captured[features] = calls
            commands[f"f{features}"] = _command(calls["reserve"], calls["rid"], "r__rand_int__")
        commands["trivial"] = ["EVALSHA", str(client.script_load("return 1")), "0"]
        # Every script the commands name, so that one dropped meanwhile (SCRIPT FLUSH by
        # another client of a shared Redis) is loaded again before it is measured.
        sources = ["return 1"]
        for fence in fences:
            sources += [script.script for script in fence._store._scripts.values()]
        rates: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(3):  # in turns, medians
            for name, command in commands.items():
                for source in sources:
                    client.script_load(source)
                rates[name].append(_rate(host, port, db, n, command))
        # Server time per call: pipelined batches of new reserves, then their commits.
        five = captured[5]
        ids = [f"s{uuid.uuid4().hex[:12]}" for _ in range(2000 if quick else 10_000)]
        trivial_us = _server_us(client, [commands["trivial"]] * len(ids))
        reserve_us = _server_us(client, [_command(five["reserve"], five["rid"], i) for i in ids])
        commit_us = _server_us(client, [_command(five["commit"], five["rid"], i) for i in ids])
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()
        for fence in fences:
            await fence.aclose()
    median = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "trivial_evalsha_per_s": round(median["trivial"]),
        "reserve_script_per_s": round(median["f5"]),
        "reserve_script_args": len(commands["f5"]) - 2,
        "reserve_script_rate_over_trivial_evalsha": round(median["f5"] / median["trivial"], 3),
        "feature_cost_ratio_20_over_1": round(median["f1"] / median["f20"], 3),
        "reserve_server_us_over_trivial": round(reserve_us / max(trivial_us, 0.01), 1),
        "commit_server_us_over_trivial": round(commit_us / max(trivial_us, 0.01), 1),
    }


def main() -> None:
    from benchmarks.__main__ import run_alone

    run_alone("python -m benchmarks.bench_script", lambda url, quick: run(url, quick=quick))


if __name__ == "__main__":
    main()
