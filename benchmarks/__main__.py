"""``python -m benchmarks [--quick] [--redis-url URL]``: print a table, then one JSON line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os

import structlog

from benchmarks import bench_engine


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("TOKENFENCE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    results = asyncio.run(bench_engine.run(args.redis_url, quick=args.quick))
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
