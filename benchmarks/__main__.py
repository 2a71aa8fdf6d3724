"""``python -m benchmarks [--quick] [--redis-url URL]``: every benchmark, then one JSON line.

Each figure is a ratio measured side by side in this run (or a size), never an absolute time
to compare across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from benchmarks import (
    bench_embedded,
    bench_engine,
    bench_guard,
    bench_litellm,
    bench_memory,
    bench_middleware,
    bench_overspend,
    bench_policy,
    bench_scale,
    bench_script,
    bench_service,
)


def quiet_logs() -> None:
    """Only warnings and errors from the library while measuring (refusals are expected)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))


def run_alone(prog: str, measure: Callable[[str, bool], Awaitable[dict[str, Any]]]) -> None:
    """``python -m benchmarks.<one>``: ``--quick`` and ``--redis-url``, then the report."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("TOKENFENCE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    args = parser.parse_args()
    quiet_logs()
    report(asyncio.run(measure(args.redis_url, args.quick)))


def report(results: dict[str, Any]) -> None:
    """Print a table of ``results``, then the same as one JSON object on the last line."""
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("TOKENFENCE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    args = parser.parse_args()
    quiet_logs()
    results: dict[str, Any] = {}
    results.update(asyncio.run(bench_engine.run(args.redis_url, quick=args.quick)))
    results.update(asyncio.run(bench_embedded.run(args.redis_url, quick=args.quick)))
    results.update(asyncio.run(bench_memory.run(args.redis_url)))
    results.update(bench_middleware.run(args.quick))
    results.update(asyncio.run(bench_litellm.run(args.redis_url, quick=args.quick)))
    results.update(asyncio.run(bench_guard.run(args.redis_url, quick=args.quick)))
    results.update(asyncio.run(bench_script.run(args.redis_url, quick=args.quick)))
    results.update(asyncio.run(bench_scale.run(args.redis_url, quick=args.quick)))
    results.update(asyncio.run(bench_overspend.run(args.redis_url, quick=args.quick)))
    results.update(bench_policy.run(args.quick))
    results.update(bench_service.run(args.quick, args.redis_url))
    report(results)


if __name__ == "__main__":
    main()
