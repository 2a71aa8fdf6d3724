"""The ``tokenfence`` command.

``tokenfence demo`` shows, in a second and without any server or API key, the problem this
library solves: one tenant burns through its AI budget and is refused, while another tenant on
the same app is still served.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
from collections.abc import Sequence
from decimal import Decimal

import structlog

from tokenfence_asgi.engine import TokenFence
from tokenfence_asgi.errors import BudgetExceeded, RequestLimitExceeded, TokenFenceError
from tokenfence_asgi.money import format_usd, to_nanos

__all__ = ["main"]

# gpt-4o-mini list prices, nano-dollars per token
_INPUT_NANOS, _OUTPUT_NANOS = 150, 600


def _call_cost(rng: random.Random, *, input_tokens: int, max_output: int) -> tuple[int, int, int]:
    """A simulated LLM call: (estimate nanos, actual nanos, output tokens)."""
    estimate = input_tokens * _INPUT_NANOS + max_output * _OUTPUT_NANOS
    output = rng.randint(max_output // 2, max_output)
    return estimate, input_tokens * _INPUT_NANOS + output * _OUTPUT_NANOS, output


async def _demo(redis_url: str | None, seed: int) -> int:
    rng = random.Random(seed)
    fence = TokenFence(redis_url=redis_url, default_plan="free", prefix="tfdemo")
    plan = fence.plans["free"]
    day = plan.limits[0]
    store = redis_url or "the embedded store"
    print(
        f"tokenfence demo on {store}: tenants 'acme' and 'globex' on the '{plan.name}' plan"
        f" ({format_usd(day.max_cost_nanos or 0)} per day, {day.max_requests} requests per day)\n"
    )
    tenants = ("acme", "globex")
    if redis_url is not None:  # start from a clean slate on a shared Redis
        for tenant in tenants:
            await fence.set_plan(tenant, "free")
    print(
        "acme's agent is asked to 'analyze everything': 100k-token prompts to gpt-4o-mini,"
        " up to 16k tokens out, one after another"
    )
    calls = 0
    try:
        while True:
            calls += 1
            estimate, actual, output = _call_cost(rng, input_tokens=100_000, max_output=16_000)
            try:
                r = await fence.reserve("acme", Decimal(estimate) / 10**9, feature="analysis")
            except (BudgetExceeded, RequestLimitExceeded) as refused:
                body = refused.to_dict()
                print(f"  acme   call {calls:>2}  REFUSED {refused.status_code} {body['error']}:")
                print(f"         {body['message']}")
                print(f"         resets at {body['resets_at']}")
                break
            await fence.commit(r, Decimal(actual) / 10**9, input_tokens=100_000,
                               output_tokens=output)  # fmt: skip
            spent = (await fence.status("acme")).windows[0].used
            print(
                f"  acme   call {calls:>2}  held {format_usd(estimate):>10}"
                f"  charged {format_usd(actual):>10}  spent today {format_usd(to_nanos(spent))}"
            )
            if calls > 100:  # pragma: no cover - the free plan refuses long before
                print("acme was never refused: the plan has no effective limit")
                return 1

        print("\nmeanwhile globex, on the same app and the same store, asks a small question:")
        estimate, actual, output = _call_cost(rng, input_tokens=800, max_output=300)
        r = await fence.reserve("globex", Decimal(estimate) / 10**9, feature="chat")
        await fence.commit(r, Decimal(actual) / 10**9, input_tokens=800, output_tokens=output)
        status = await fence.status("globex")
        w = status.windows[0]
        print(
            f"  globex call  1  served: charged {format_usd(actual)},"
            f" {format_usd(to_nanos(w.remaining or Decimal(0)))} of its day left"
        )
        acme = (await fence.status("acme")).windows[0]
        total, cap = format_usd(to_nanos(acme.used)), format_usd(to_nanos(acme.limit or 0))
        print(f"\nacme spent {total} of {cap} and stopped there; globex lost nothing.")
    finally:
        await fence.aclose()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tokenfence`` command; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="tokenfence", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="two tenants, one runs out of budget")
    demo.add_argument("--redis-url", help="use this Redis instead of the embedded store")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the simulated calls")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    try:
        return asyncio.run(_demo(args.redis_url, args.seed))
    except TokenFenceError as exc:
        print(f"tokenfence: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
