"""Time per ``Policy.decide`` call with 100 rules, cached names and never-seen names.

Side by side in one run: ``decide`` on names it has seen (the cache answers), on fresh names
(every rule's compiled pattern is tried, highest precedence first), and a plain ``dict`` lookup
as the floor. ``policy_decide_fresh_over_dict`` and ``policy_decide_cached_over_dict`` are the
ratios; the nanoseconds per call are printed beside them for the record.

``python -m benchmarks.bench_policy [--quick]`` prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from tokenfence_asgi.policy import Policy

RESOURCES = ("db", "mail", "pay", "files", "crm", "calendar", "search", "slack", "git", "vm")
VERBS = ("read", "write", "delete", "list", "send", "create", "update", "admin", "run", "export")


def policy_of_100_rules() -> Policy:
    """30 deny, 20 require-approval and 50 allow rules with globs, default deny."""
    policy = Policy(default="deny")
    rules = [f"tool:{r}:{v}:*" for r in RESOURCES for v in VERBS]
    policy.deny(*rules[:30])
    policy.require_approval(*rules[30:50])
    policy.allow(*rules[50:])
    return policy


def _per_call_ns(fn: Any, names: list[str]) -> float:
    started = time.perf_counter_ns()
    for name in names:
        fn(name)
    return (time.perf_counter_ns() - started) / len(names)


def run(quick: bool = False) -> dict[str, Any]:
    n = 20_000 if quick else 200_000
    policy = policy_of_100_rules()
    assert len(policy.rules()) == 100
    seen = [f"tool:{RESOURCES[i % 10]}:{VERBS[i // 10 % 10]}:t{i % 7}" for i in range(100)]
    cached_names = [seen[i % len(seen)] for i in range(n)]
    for name in seen:
        policy.decide(name)
    # Fresh names: more distinct names than the decision cache holds, so each one misses.
    fresh_names = [f"tool:{RESOURCES[i % 10]}:{VERBS[i // 10 % 10]}:x{i}" for i in range(n)]
    table = dict.fromkeys(seen, 1)
    best: dict[str, float] = {}
    for _ in range(3):  # best of three, each variant side by side
        for label, fn, names in (
            ("dict", table.__getitem__, cached_names),
            ("cached", policy.decide, cached_names),
            ("fresh", policy.decide, fresh_names),
        ):
            best[label] = min(best.get(label, float("inf")), _per_call_ns(fn, names))
        fresh_names = [name + "y" for name in fresh_names]  # never seen again
    return {
        "policy_rules": 100,
        "policy_decide_cached_ns": round(best["cached"]),
        "policy_decide_fresh_ns": round(best["fresh"]),
        "policy_decide_cached_over_dict": round(best["cached"] / best["dict"], 1),
        "policy_decide_fresh_over_dict": round(best["fresh"] / best["dict"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_policy")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    from benchmarks.__main__ import report

    report(run(args.quick))


if __name__ == "__main__":
    main()
