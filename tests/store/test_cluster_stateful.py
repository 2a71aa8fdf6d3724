"""The state-machine and interleaving suites of the engine and the budget rules, on Redis Cluster.

The same machines as ``test_stateful`` / ``test_stateful_rules`` (a plain Python model checked
to the nano-dollar after every step), with the store a ``redis.asyncio.RedisCluster`` on the
session's cluster: every script touches one slot (no CROSSSLOT), pools included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from tests.conftest import ClusterNodes
from tests.engine import test_stateful as budget
from tests.engine import test_stateful_rules as rules

CLUSTER = "cluster"  # the "URL" the machines get: the shim below makes a cluster client of it
# Half the examples of the single-server runs: the logic is the same, what the cluster adds is
# slot routing (a CROSSSLOT error would fail the first step that meets it).
ENGINE = settings(budget.STATEFUL, max_examples=30)
RULES = settings(rules.RULES, max_examples=25)


@contextlib.contextmanager
def on_cluster(cluster: ClusterNodes, *modules: Any) -> Iterator[None]:
    """Make ``aioredis.Redis.from_url`` in ``modules`` return a client on ``cluster``."""

    def from_url(url: str) -> Any:
        assert url == CLUSTER
        return cluster.client()

    shim = SimpleNamespace(Redis=SimpleNamespace(from_url=from_url))
    with contextlib.ExitStack() as stack:
        for module in modules:
            stack.enter_context(mock.patch.object(module, "aioredis", shim))
        yield


def test_engine_matches_the_model_on_redis_cluster(redis_cluster: ClusterNodes) -> None:
    with on_cluster(redis_cluster, budget):
        run_state_machine_as_test(lambda: budget.BudgetMachine(CLUSTER), settings=ENGINE)


def test_every_rule_matches_the_model_on_redis_cluster(redis_cluster: ClusterNodes) -> None:
    with on_cluster(redis_cluster, budget, rules):
        run_state_machine_as_test(lambda: rules.RulesMachine(CLUSTER), settings=RULES)


@settings(rules.OVERSPEND, max_examples=20)
@given(calls=rules.CALLS, mode=st.sampled_from(["none", "share", "cap"]), pooled=st.booleans())
def test_no_interleaving_overspends_on_redis_cluster(
    redis_cluster: ClusterNodes, calls: list[Any], mode: str, pooled: bool
) -> None:
    """Committed spend never exceeds any effective limit when every cost <= its estimate."""
    with on_cluster(redis_cluster, rules):
        rules._never_overspend(CLUSTER, calls, mode, pooled)
