"""Shared fixtures: the store backends (real Redis and the embedded store), a clock, fences.

Every engine test runs on both backends. Real Redis comes from ``TOKENFENCE_TEST_REDIS_URL``,
else 127.0.0.1:6379 when it answers, else a ``redis-server`` this session starts on a free
loopback port (and stops). Each test uses its own key prefix and deletes its keys afterwards, so
a shared Redis is never flushed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest
import redis

from tokenfence_asgi.engine import TokenFence

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

# 2026-03-15 12:00:00 UTC, a Sunday: the ISO week ends at midnight, the month is mid-way.
START = datetime(2026, 3, 15, 12, 0, tzinfo=UTC).timestamp()


class FakeClock:
    """An injectable clock (epoch seconds) that only moves when told to."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, when: datetime) -> None:
        self.now = when.timestamp()


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
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
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


class Backend:
    """Makes fences on one store; fences of one test share the store (and its budgets)."""

    def __init__(self, kind: str, prefix: str, url: str | None) -> None:
        self.kind = kind
        self.prefix = prefix
        self.url = url
        self.server = fakeredis.FakeServer() if kind == "embedded" else None
        self.fences: list[TokenFence] = []
        self.clients: list[Any] = []

    def client(self) -> Any:
        """A raw async client on the same store (for inspection and fault injection)."""
        if self.server is not None:
            return fakeredis.FakeAsyncRedis(server=self.server)
        import redis.asyncio as aioredis

        return aioredis.Redis.from_url(self.url)

    def fence(self, **options: Any) -> TokenFence:
        options.setdefault("prefix", self.prefix)
        if self.server is not None and "redis" not in options:
            client = fakeredis.FakeAsyncRedis(server=self.server, max_connections=2**31)
            self.clients.append(client)
            options["redis"] = client
        else:
            options.setdefault("redis_url", self.url)
        fence = TokenFence(**options)
        self.fences.append(fence)
        return fence

    async def cleanup(self) -> None:
        for fence in self.fences:
            await fence.aclose()
        for client in self.clients:
            await client.aclose()
        if self.url is not None:
            client = self.client()
            async for key in client.scan_iter(match=f"{self.prefix}:*", count=1000):
                await client.delete(key)
            await client.aclose()


@pytest.fixture(params=["redis", "embedded"])
async def backend(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Backend]:
    """Parametrizes a test over real Redis and the embedded store."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    b = Backend(request.param, prefix, url)
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
