"""Shared fixtures: the store backends (real Redis, the embedded store, Redis Cluster), a clock,
fences, and the hypothesis profiles.

Every engine test runs on real Redis and on the embedded store; the store-facing suites
(``CLUSTER_SUITES``, or every suite with ``TOKENFENCE_TEST_CLUSTER=all``) also run on a real
Redis Cluster. Real Redis comes from ``TOKENFENCE_TEST_REDIS_URL``, else 127.0.0.1:6379 when it
answers, else a ``redis-server`` this session starts on a free loopback port (and stops). The
cluster is ``TOKENFENCE_TEST_CLUSTER_NODES`` (``host:port,...``) when given, else 3 primaries and
3 replicas this session starts on loopback (about 3 s, once) and stops at the end; without
``redis-server`` / ``redis-cli`` its tests are skipped, or fail when ``CI`` is set. Each test
uses its own key prefix and deletes its keys afterwards, so a shared Redis is never flushed.

Garbage collection: one test process runs thousands of tests and holds a million objects
(LiteLLM, the SDKs, hypothesis), and a full collection of them stops the event loop for over a
second, long enough to time out a test's store calls. Every ``GC_FREEZE_EVERY`` tests the
objects still alive are collected and moved out of the collector's view (``gc.freeze``), so a
collection during a test only walks what the last tests made.

Hypothesis: ``HYPOTHESIS_PROFILE=ci`` loads the "ci" profile (no deadline, failing examples
printed as blobs) and raises the hostile-input tests to ``HOSTILE_EXAMPLES`` = 10,000 examples
(``TOKENFENCE_HOSTILE_EXAMPLES`` overrides); the default profile runs them with 300.
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import fakeredis
import pytest
import redis
from hypothesis import HealthCheck, settings

from tests.reliability.servers import LocalCluster, have_redis_binaries
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.engine.observe import FenceObserver
from tokenfence_asgi.results import Reservation
from tokenfence_asgi.store._embedded import EmbeddedServer, embedded_client
from tokenfence_asgi.testing import START as _START
from tokenfence_asgi.testing import FakeClock

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

settings.register_profile(
    "ci", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
settings.load_profile(HYPOTHESIS_PROFILE)
HOSTILE_EXAMPLES = int(
    os.environ.get("TOKENFENCE_HOSTILE_EXAMPLES", 10_000 if HYPOTHESIS_PROFILE == "ci" else 300)
)
"""Examples of the main hostile-input tests (ids, money and names through the engine; raw
headers through the middleware): 10,000 in the "ci" profile, the issue's figure; the costlier
ones (plan files, cluster, LiteLLM callback, signatures) run a share of it."""

GC_FREEZE_EVERY = 50
_tests_since_freeze = 0


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    global _tests_since_freeze
    _tests_since_freeze += 1
    if _tests_since_freeze >= GC_FREEZE_EVERY:
        _tests_since_freeze = 0
        gc.collect()
        gc.freeze()


# The suites that also run on Redis Cluster (every suite with TOKENFENCE_TEST_CLUSTER=all).
CLUSTER_SUITES = frozenset(
    {"test_engine", "test_rules", "test_ledger", "test_policy", "test_commits"}
)

# 2026-03-15 12:00:00 UTC, a Sunday: the ISO week ends at midnight, the month is mid-way.
START = _START


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A reachable Redis for the test session."""
    url = os.environ.get("TOKENFENCE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if _answers(url):
        yield url
        return
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("CI"):
            pytest.fail(f"no Redis at {url} and no redis-server to start")
        pytest.skip(f"no Redis at {url} and no redis-server installed")
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="tokenfence-redis-")
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not _answers(url):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("redis-server did not start")
        time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def prefix() -> str:
    return f"tft{uuid.uuid4().hex[:10]}"


class ClusterNodes:
    """A Redis Cluster the tests can reach: its nodes, and async clients on it."""

    def __init__(self, nodes: list[tuple[str, int]], local: LocalCluster | None = None) -> None:
        self.nodes = nodes
        self.local = local

    def client(self, **options: Any) -> Any:
        """A ``redis.asyncio.RedisCluster`` (the caller closes it)."""
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        options.setdefault("socket_timeout", 2)
        options.setdefault("socket_connect_timeout", 2)
        startup = [ClusterNode(host, port) for host, port in self.nodes]
        return RedisCluster(startup_nodes=startup, **options)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterNodes]:
    """A Redis Cluster for the session: the configured one, else 3 + 3 nodes started here."""
    configured = os.environ.get("TOKENFENCE_TEST_CLUSTER_NODES")
    if configured:
        nodes = []
        for item in configured.split(","):
            host, _, port = item.strip().rpartition(":")
            nodes.append((host or "127.0.0.1", int(port)))
        yield ClusterNodes(nodes)
        return
    if not have_redis_binaries():
        if os.environ.get("CI"):
            pytest.fail("no TOKENFENCE_TEST_CLUSTER_NODES and no redis-server / redis-cli")
        pytest.skip("no TOKENFENCE_TEST_CLUSTER_NODES and no redis-server / redis-cli installed")
    cluster = LocalCluster(masters=3, replicas=1)
    try:
        cluster.start()
        yield ClusterNodes(cluster.startup_nodes(), cluster)
    finally:
        cluster.close()


class Backend:
    """Makes fences on one store; fences of one test share the store (and its budgets).

    ``kind`` is ``"redis"`` (``url``), ``"embedded"`` or ``"cluster"`` (``cluster``): a
    cluster fence gets a ``redis.asyncio.RedisCluster`` client of its own (``redis=``).
    """

    def __init__(
        self, kind: str, prefix: str, url: str | None, cluster: ClusterNodes | None = None
    ) -> None:
        self.kind = kind
        self.prefix = prefix
        self.url = url
        self.cluster = cluster
        self.server = EmbeddedServer() if kind == "embedded" else None
        self.fences: list[TokenFence] = []
        self.clients: list[Any] = []

    def client(self) -> Any:
        """A raw async client on the same store (for inspection and fault injection)."""
        if self.server is not None:
            return fakeredis.FakeAsyncRedis(server=self.server)
        if self.cluster is not None:
            return self.cluster.client()
        import redis.asyncio as aioredis

        return aioredis.Redis.from_url(self.url)

    def fence(self, **options: Any) -> TokenFence:
        options.setdefault("prefix", self.prefix)
        if "redis" in options or "redis_url" in options:
            pass
        elif self.server is not None:
            client = embedded_client(self.server)  # the embedded store TokenFence() makes
            self.clients.append(client)
            options["redis"] = client
        elif self.cluster is not None:
            client = self.cluster.client()
            self.clients.append(client)
            options["redis"] = client
        else:
            options["redis_url"] = self.url
        fence = TokenFence(**options)
        self.fences.append(fence)
        return fence

    async def cleanup(self) -> None:
        for fence in self.fences:
            await fence.aclose()
        for client in self.clients:
            await client.aclose()
        if self.server is None:
            client = self.client()  # a cluster client scans every primary
            try:
                async for key in client.scan_iter(match=f"{self.prefix}:*", count=1000):
                    await client.delete(key)
            finally:
                await client.aclose()


@contextmanager
def flushable(backend: Backend) -> Iterator[dict[str, Any]]:
    """Fence options on a store whose script cache the test may flush (``SCRIPT FLUSH``): on
    the "redis" backend a ``redis-server`` of the test's own (the shared Redis and its cached
    scripts are not the test's), as ``redis_url``; the embedded store and the test cluster are
    the session's already (no options). Yields the options and keeps the server up meanwhile."""
    if backend.kind != "redis":
        yield {}
        return
    from tests.reliability.servers import redis_server

    with redis_server() as server:
        yield {"redis_url": server.url}


def raw_client(backend: Backend, options: dict[str, Any]) -> Any:
    """A raw async client on the store ``options`` (from ``flushable``) point at."""
    if "redis_url" in options:
        import redis.asyncio as aioredis

        return aioredis.Redis.from_url(options["redis_url"])
    return backend.client()


class Held(FenceObserver):
    """The reservations a fence made, in order (an observer)."""

    def __init__(self) -> None:
        self.reservations: list[Reservation] = []

    def reserved(self, reservation: Reservation) -> None:
        self.reservations.append(reservation)


@pytest.fixture
def held(fence: TokenFence) -> Held:
    """The reservations the test's ``fence`` makes."""
    return fence.observe(Held())  # type: ignore[return-value]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``backend`` (also behind ``make_fence``): redis, embedded, and cluster for
    the store-facing suites."""
    if "backend" not in metafunc.fixturenames:
        return
    kinds = ["redis", "embedded"]
    suite = metafunc.module.__name__.rpartition(".")[2]
    if suite in CLUSTER_SUITES or os.environ.get("TOKENFENCE_TEST_CLUSTER") == "all":
        kinds.append("cluster")
    metafunc.parametrize("backend", kinds, indirect=True)


@pytest.fixture
async def backend(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Backend]:
    """A store to test on: real Redis, the embedded store, or Redis Cluster (``request.param``)."""
    kind = request.param
    url = request.getfixturevalue("redis_url") if kind == "redis" else None
    cluster = request.getfixturevalue("redis_cluster") if kind == "cluster" else None
    b = Backend(kind, prefix, url, cluster)
    try:
        yield b
    finally:
        await b.cleanup()


@pytest.fixture
def make_fence(backend: Backend, clock: FakeClock) -> Callable[..., TokenFence]:
    """A factory of fences on the test's backend, on the fake clock unless told otherwise."""

    def make(**options: Any) -> TokenFence:
        options.setdefault("clock", clock)
        return backend.fence(**options)

    return make
