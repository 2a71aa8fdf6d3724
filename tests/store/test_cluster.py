"""Redis Cluster: one slot per script, every primary used and scanned, the global kill switch,
bursts beyond the connection limit, and a primary killed under load (failover).

The engine, budget-rules and ledger suites also run on the session's cluster (the ``cluster``
backend in ``conftest.py``); this module checks what only a cluster has. The failover test gets
a cluster of its own (3 primaries, 3 replicas, node timeout 1 s), so the shared one is never
disturbed, and stops it at the end.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import pytest
import redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from tests.conftest import ClusterNodes
from tests.reliability.figures import percentile, record
from tests.reliability.servers import LocalCluster, have_redis_binaries, key_slot
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import StoreUnavailable, TenantDisabled
from tokenfence_asgi.money import from_nanos, to_nanos
from tokenfence_asgi.results import Reservation, UsageRecord
from tokenfence_asgi.store.keys import KeySpace, encode_id

T = TypeVar("T")
D = Decimal

PLAN = Plan(
    "c",
    [Limit("1d", max_cost="100"), Limit("1m", max_cost="50", max_requests=10_000, kind="sliding")],
    features={"chat": 0.5},
)
POOL = Plan("pool", [Limit("1d", max_cost="100")])
BIG = Plan("big", [Limit("1d", max_cost="100000")])
# Ids that try to leave their hash tag or forge another key's suffix.
HOSTILE = ["a{b}c", "{x}", "}{", "{", "}", "{}", "a:b", "k:", "%7B", "租户", "🙂" * 50, "t.x}:s"]


def _slot(prefix: str, tenant: str) -> int:
    return key_slot(KeySpace(prefix).tenant(encode_id(tenant)).state)


def _primary_keys(cluster: ClusterNodes, prefix: str) -> dict[int, list[str]]:
    """The keys under ``prefix`` on each primary (by port), read from each primary directly."""
    local = cluster.local
    assert local is not None
    found: dict[int, list[str]] = {}
    for port in local.primaries():
        client = redis.Redis(port=port, socket_timeout=5)
        try:
            found[port] = [k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        finally:
            client.close()
    return found


async def _drop(client: Any, prefix: str) -> None:
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        await client.delete(key)


def _require_local(cluster: ClusterNodes) -> None:
    if cluster.local is None:
        pytest.skip("needs the cluster this session starts (TOKENFENCE_TEST_CLUSTER_NODES is set)")


async def test_every_script_stays_in_one_slot_and_every_primary_is_used(
    redis_cluster: ClusterNodes, prefix: str
) -> None:
    _require_local(redis_cluster)
    client = redis_cluster.client()
    fence = TokenFence(redis=client, prefix=prefix, plans=[PLAN, POOL], default_plan="c")
    tenants = [f"tenant-{n}" for n in range(30)] + HOSTILE
    today = datetime.now(UTC).date()
    try:
        for i, tenant in enumerate(tenants):
            if i % 4 == 0:
                await fence.set_pool(tenant, f"pool-{i % 3}", plan="pool")
            r = await fence.reserve(tenant, "0.01", feature="chat", model="m")
            await fence.commit(
                r, "0.005", input_tokens=3, output_tokens=2, model="m2", request_id="req-1"
            )
            await fence.release(await fence.reserve(tenant, "0.02"))
            await fence.kill(tenant, feature="chat")
            await fence.revive(tenant, feature="chat")
            if i % 8 == 0:
                await fence.set_pool(tenant, None)  # moves spend and holds back to its own tag
            status = await fence.status(tenant)
            assert (status.windows[0].used, status.held) == (D("0.005"), 0), tenant
            (day,) = await fence.usage(tenant, today - timedelta(days=1), today + timedelta(days=1))
            assert (day.cost, day.requests, day.releases) == (D("0.005"), 1, 1)
        # Reports scan every primary.
        assert sorted([t async for t in fence.tenants()]) == sorted(tenants)
        records = [r async for r in fence.usage_records()]
        assert sorted(r.tenant_id for r in records) == sorted(tenants)
        top = await fence.top_spenders(today - timedelta(days=1), today + timedelta(days=1), 100)
        assert len(top) == len(tenants)
        # Every key is inside a hash tag, and every primary holds some.
        keys = _primary_keys(redis_cluster, prefix)
        assert len(keys) == 3
        assert all(keys.values()), {port: len(k) for port, k in keys.items()}
        for key in (k for ks in keys.values() for k in ks):
            tag = key[len(prefix) + 1 :]
            assert tag.startswith(("{t.", "{p.", "{global}")), key
            assert tag.index("}") == tag.rindex("}") or tag.startswith("{global}"), key
    finally:
        await fence.aclose()
        await _drop(client, prefix)
        await client.aclose()


async def test_global_kill_switch_reaches_every_instance_and_primary(
    redis_cluster: ClusterNodes, prefix: str
) -> None:
    _require_local(redis_cluster)
    local = redis_cluster.local
    assert local is not None
    primaries = local.primaries()
    owner: dict[int, str] = {}
    n = 0
    while len(owner) < len(primaries):  # one tenant on each primary
        tenant = f"t{n}"
        owner.setdefault(local.primary_of(_slot(prefix, tenant)), tenant)
        n += 1
    tenants = list(owner.values())
    clients = [redis_cluster.client(), redis_cluster.client()]
    a, b = (
        TokenFence(redis=c, prefix=prefix, plans=[PLAN], default_plan="c", kill_cache_s=0.2)
        for c in clients
    )
    try:
        for tenant in tenants:
            await b.reserve(tenant, "0.01", feature="chat")
        await a.kill()  # instance a; b reads the switch within kill_cache_s
        await asyncio.sleep(0.25)
        for tenant in tenants:
            with pytest.raises(TenantDisabled) as info:
                await b.reserve(tenant, "0.01")
            assert info.value.scope == "global"
            assert (await b.status(tenant)).killed
        await a.revive()
        await a.kill(feature="chat")
        await asyncio.sleep(0.25)
        for tenant in tenants:
            await b.reserve(tenant, "0.01")
            with pytest.raises(TenantDisabled):
                await b.reserve(tenant, "0.01", feature="chat")
        await a.revive(feature="chat")
        await asyncio.sleep(0.25)
        for tenant in tenants:
            await b.reserve(tenant, "0.01", feature="chat")
    finally:
        await a.aclose()
        await b.aclose()
        await _drop(clients[0], prefix)
        for c in clients:
            await c.aclose()


async def test_a_first_burst_beyond_the_connection_limit_waits_instead_of_failing(
    redis_cluster: ClusterNodes, prefix: str
) -> None:
    """redis-py's async cluster client refuses a command beyond ``max_connections`` per node
    (``MaxConnectionsError``) and, on its first concurrent use, can write to a connection its
    slot-map load just closed; the store gates both, so a burst waits and every call answers."""
    client = redis_cluster.client(max_connections=8)
    fence = TokenFence(redis=client, prefix=prefix, plans=[BIG], default_plan="big")
    try:
        results = await asyncio.gather(
            *(fence.reserve(f"t{n % 40}", "0.01") for n in range(400)), return_exceptions=True
        )
        errors = [r for r in results if not isinstance(r, Reservation)]
        assert errors == []
        results = await asyncio.gather(
            *(fence.commit(r, "0.005") for r in results if isinstance(r, Reservation)),
            return_exceptions=True,
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
        used = sum([(await fence.status(f"t{n}")).windows[0].used for n in range(40)], D(0))
        assert used == D("0.005") * 400
    finally:
        await fence.aclose()
        await _drop(client, prefix)
        await client.aclose()


# -- failover --------------------------------------------------------------------------------


class Load:
    """Workers reserving and committing on many tenants, retrying a call (same reservation id)
    after ``StoreUnavailable``; what was acknowledged, when, and every failure."""

    def __init__(self, fence: TokenFence, tenants: list[str], hard_stop: float) -> None:
        self.fence = fence
        self.tenants = tenants
        self.hard_stop = hard_stop
        self.acked: dict[str, tuple[str, int, float]] = {}  # rid -> tenant, cost, ack time
        self.failures: list[tuple[float, str]] = []  # (time, tenant) of each StoreUnavailable
        self.successes: list[tuple[float, str]] = []
        self.latencies: list[float] = []
        self.duplicates = 0
        self.stop = asyncio.Event()

    async def attempt(self, tenant: str, call: Callable[[], Awaitable[T]]) -> T:
        while True:
            started = time.monotonic()
            try:
                result = await call()
            except StoreUnavailable:
                now = time.monotonic()
                self.latencies.append(now - started)
                self.failures.append((now, tenant))
                if now > self.hard_stop:
                    raise
                await asyncio.sleep(0.05)
                continue
            now = time.monotonic()
            self.latencies.append(now - started)
            self.successes.append((now, tenant))
            return result

    async def worker(self, w: int) -> None:
        n = 0
        while not self.stop.is_set():
            tenant = self.tenants[(w * 7 + n) % len(self.tenants)]
            rid, cost = f"w{w}-{n}", 1_000_000 + 1000 * w + n
            n += 1
            reservation = await self.attempt(
                tenant,
                lambda t=tenant, c=cost, i=rid: self.fence.reserve(  # type: ignore[misc]
                    t, from_nanos(c), reservation_id=i
                ),
            )
            settled = await self.attempt(
                tenant, lambda r=reservation, c=cost: self.fence.commit(r, from_nanos(c))
            )
            self.duplicates += settled.duplicate
            self.acked.setdefault(rid, (tenant, cost, time.monotonic()))


def _repl_offsets(local: LocalCluster, primary: int, replica: int) -> tuple[int, int]:
    master = local.node(primary).info("replication")
    copy = local.node(replica).info("replication")
    return int(master["master_repl_offset"]), int(copy.get("slave_repl_offset", -1))


@pytest.mark.slow
async def test_failover_of_a_primary_under_load_charges_nothing_twice(prefix: str) -> None:
    """SIGKILL a primary (with a replica) under load: its replica takes over, the engine
    recovers by itself, a commit retried after the failover is recognised as a duplicate, and
    every counter equals the ledger's distinct commits.

    Replication is asynchronous: a commit acknowledged by the killed primary just before it
    died may not have reached the replica. The test waits for the replica to catch up
    (replication offsets) before the kill for the commits it retries; for the background load it
    states the bound: only commits acknowledged before the kill, on the killed primary's
    tenants, can be missing after the failover, and a missing one is charged nowhere (never
    twice).
    """
    if not have_redis_binaries():
        if os.environ.get("CI"):
            pytest.fail("redis-server / redis-cli are needed")
        pytest.skip("redis-server / redis-cli are not installed")
    local = LocalCluster(node_timeout_ms=1000, extra=("--cluster-replica-validity-factor", "0"))
    try:
        await asyncio.to_thread(local.start)
        client = local.client(
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 3),
        )
        fence = TokenFence(redis=client, prefix=prefix, plans=[BIG], default_plan="big")
        tenants = [f"tenant-{n}" for n in range(30)]
        victim = local.primary_of(_slot(prefix, tenants[0]))
        replica = local.replica_of(victim)
        on_victim = [t for t in tenants if local.primary_of(_slot(prefix, t)) == victim]
        assert len(on_victim) >= 3

        # Before the kill: commits and holds on the victim's tenants, replicated for sure.
        retried: list[tuple[Reservation, int]] = []
        for n in range(30):
            r = await fence.reserve(on_victim[n % len(on_victim)], "0.002", reservation_id=f"c{n}")
            await fence.commit(r, "0.002")
            retried.append((r, 2_000_000))
        holds = [
            await fence.reserve(on_victim[n % len(on_victim)], "0.003", reservation_id=f"h{n}")
            for n in range(20)
        ]

        load = Load(fence, tenants, hard_stop=time.monotonic() + 60)
        workers = [asyncio.create_task(load.worker(w)) for w in range(12)]
        try:
            await asyncio.sleep(1.0)
            target, _ = await asyncio.to_thread(_repl_offsets, local, victim, replica)
            deadline = time.monotonic() + 30
            while (await asyncio.to_thread(_repl_offsets, local, victim, replica))[1] < target:
                assert time.monotonic() < deadline, "the replica did not catch up"
                await asyncio.sleep(0.01)
            killed_at = time.monotonic()
            local.node(victim).kill()
            role = ""
            while role != "master":  # another process: nothing to wait on but its answer
                assert time.monotonic() - killed_at < 30, "the replica was never promoted"
                role = (await asyncio.to_thread(local.node(replica).info, "replication"))["role"]
                await asyncio.sleep(0.02)
            promoted_at = time.monotonic()
            # Keep the load on until the victim's tenants have been served again for a while.
            while True:
                back = [t for t, x in load.successes if t > promoted_at and x in on_victim]
                if back and time.monotonic() - back[0] > 1.5:
                    break
                assert time.monotonic() - killed_at < 30, "the engine did not recover"
                await asyncio.sleep(0.05)
            # A commit retried after the failover is recognised; a hold made before it charges once.
            for r, cost in retried:
                settled = await load.attempt(r.tenant_id, lambda r=r: fence.commit(r, "0.002"))
                assert (settled.duplicate, to_nanos(settled.cost)) == (True, cost), r.id
            for h in holds:
                first = await load.attempt(h.tenant_id, lambda h=h: fence.commit(h, "0.003"))
                again = await load.attempt(h.tenant_id, lambda h=h: fence.commit(h, "0.003"))
                assert (first.duplicate, again.duplicate) == (False, True)
        finally:
            load.stop.set()
            await asyncio.gather(*workers)

        records: list[UsageRecord] = [r async for r in fence.usage_records()]
        charged = [r.id for r in records]
        assert len(charged) == len(set(charged)), "a reservation was charged twice"
        by_tenant: dict[str, int] = defaultdict(int)
        for rec in records:
            by_tenant[rec.tenant_id] += rec.cost_nanos
        for tenant in tenants:
            status = await fence.status(tenant)
            assert to_nanos(status.windows[0].used) == by_tenant[tenant], tenant
            assert status.held == 0, tenant
        expected = {rid: (t, c) for rid, (t, c, _) in load.acked.items()}
        expected.update({r.id: (r.tenant_id, cost) for r, cost in retried})
        expected.update({h.id: (h.tenant_id, 3_000_000) for h in holds})
        assert set(charged) <= set(expected)
        lost = sorted(set(expected) - set(charged))
        for rid in lost:  # the bound on what asynchronous replication may lose
            tenant, _, acked_at = load.acked[rid]
            assert tenant in on_victim, rid
            assert acked_at < killed_at, rid
        for tenant in set(tenants) - set(on_victim):  # untouched primaries: exact
            assert by_tenant[tenant] == sum(c for t, c in expected.values() if t == tenant)

        unavailable = [t for t, tenant in load.failures if t > killed_at and tenant in on_victim]
        last_failure = max(unavailable, default=killed_at)
        recovered = min(t for t, x in load.successes if t > last_failure and x in on_victim)
        record(
            "cluster_failover",
            calls=len(load.latencies),
            store_unavailable=len(load.failures),
            store_unavailable_after_kill=len(unavailable),
            failover_s=round(promoted_at - killed_at, 3),
            recovery_s=round(recovered - killed_at, 3),
            max_call_s=round(max(load.latencies), 3),
            p99_call_s=round(percentile(load.latencies, 0.99), 3),
            commits=len(expected),
            duplicates_recognised=load.duplicates + len(retried) + len(holds),
            lost_acknowledged_commits=len(lost),
            charged_twice=0,
        )
        await fence.aclose()
        await client.aclose()
    finally:
        local.close()
