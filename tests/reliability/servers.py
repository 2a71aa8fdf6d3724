"""Real Redis servers the tests start, fault and stop: one server, a cluster, a counting proxy.

Every server here is a ``redis-server`` child process of the test session, on a free loopback
port, in a temporary directory; ``close()`` stops it and removes the directory (fixtures call it
in their teardown, also after a failure). Faults are sent only to these processes, by their pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis

__all__ = [
    "CountingProxy",
    "LocalCluster",
    "RedisProcess",
    "drop_prefix",
    "free_port",
    "have_redis_binaries",
    "key_slot",
    "redis_server",
    "serve",
]


def have_redis_binaries() -> bool:
    """Whether ``redis-server`` and ``redis-cli`` are on the PATH."""
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


def free_port(taken: set[int] | None = None) -> int:
    """A free TCP port on the loopback interface (not one of ``taken``)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if taken is None or port not in taken:
            if taken is not None:
                taken.add(port)
            return port


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster slot of ``key`` (CRC16 of its hash tag, mod 16384)."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return _crc16(raw) % 16384


def drop_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` on the Redis at ``url`` (never a flush)."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


class RedisProcess:
    """One ``redis-server`` on ``127.0.0.1:port``; it can be stopped and started again there."""

    def __init__(self, port: int, workdir: str, *extra: str) -> None:
        self.port = port
        self.workdir = workdir
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, wait: bool = True, timeout: float = 20) -> None:
        if self.running():
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed")
        if self._log is None:
            self._log = open(os.path.join(self.workdir, "redis.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.workdir,
                "--save",
                "",
                "--protected-mode",
                "no",
                *self.extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready(timeout)

    def answers(self) -> bool:
        try:
            client = redis.Redis(
                port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5, retry=None
            )
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return False

    def wait_ready(self, timeout: float = 20) -> float:
        """Wait until the server answers PING (not LOADING); return the monotonic time it did."""
        deadline = time.monotonic() + timeout
        while True:
            if self.answers():
                return time.monotonic()
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer in time")
            time.sleep(0.01)

    def send(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        """Send ``sig`` (SIGTERM: a clean shutdown) and wait for the process to exit."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL: the process dies at once, with whatever it had not written."""
        self.stop(signal.SIGKILL)

    def client(self, **options: Any) -> redis.Redis:
        options.setdefault("socket_timeout", 5)
        return redis.Redis(port=self.port, **options)

    def info(self, section: str | None = None) -> dict[str, Any]:
        client = self.client()
        try:
            return dict(client.info(section) if section else client.info())
        finally:
            client.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(os.path.join(self.workdir, "redis.log"), "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop(signal.SIGKILL, timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None


@contextlib.contextmanager
def redis_server(*extra: str) -> Iterator[RedisProcess]:
    """A ``redis-server`` of this test alone, started on a free port; stopped and removed after."""
    workdir = tempfile.mkdtemp(prefix="tokenfence-own-redis-")
    server = RedisProcess(free_port(), workdir, *extra)
    try:
        server.start()
        yield server
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)


class LocalCluster:
    """A Redis Cluster on loopback: ``masters`` primaries with ``replicas`` replicas each.

    Nodes are started with ``--cluster-enabled yes`` on free ports (client and bus port), joined
    with ``redis-cli --cluster create``, and ready when every node reports ``cluster_state:ok``
    and every replica's link to its primary is up.
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 5000,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.extra = extra
        self.workdir = tempfile.mkdtemp(prefix="tokenfence-cluster-")
        self.nodes: list[RedisProcess] = []

    def start(self, timeout: float = 60) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed")
        taken: set[int] = set()
        for n in range(self.masters * (1 + self.replicas)):
            port, bus = free_port(taken), free_port(taken)
            node_dir = os.path.join(self.workdir, str(n))
            os.mkdir(node_dir)
            node = RedisProcess(
                port,
                node_dir,
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(bus),
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",
                "0",
                *self.extra,
            )
            self.nodes.append(node)
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready(timeout)
        created = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]!r}")
        self.wait_ok(timeout)

    def live(self) -> list[RedisProcess]:
        return [n for n in self.nodes if n.running()]

    def _state(self, node: RedisProcess) -> tuple[str, dict[str, Any]]:
        client = node.client(socket_timeout=1, socket_connect_timeout=1)
        try:
            info = client.execute_command("CLUSTER INFO")  # parsed by redis-py into a dict
            return str(info.get("cluster_state")), dict(client.info("replication"))
        finally:
            client.close()

    def wait_ok(self, timeout: float = 60) -> float:
        """Wait until every running node says ``cluster_state:ok`` and replicas are linked."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                ready = True
                for node in self.live():
                    state, replication = self._state(node)
                    linked = replication.get("role") != "slave" or (
                        replication.get("master_link_status") == "up"
                    )
                    if state != "ok" or not linked:
                        ready = False
                if ready:
                    return time.monotonic()
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok in time")
            time.sleep(0.05)

    def topology(self) -> dict[int, dict[str, Any]]:
        """Port -> {"role", "master" (port of a replica's primary), "slots": [(lo, hi)]}, as a
        running node sees it (nodes it marks failed left out)."""
        for node in self.live():
            try:
                client = node.client(socket_timeout=1)
                try:
                    nodes = client.execute_command("CLUSTER NODES")  # parsed by redis-py
                finally:
                    client.close()
            except (redis.RedisError, OSError):
                continue
            by_id = {v["node_id"]: int(k.rsplit(":", 1)[1]) for k, v in nodes.items()}
            result: dict[int, dict[str, Any]] = {}
            for address, v in nodes.items():
                flags = v["flags"].split(",")
                if "fail" in flags or "fail?" in flags:
                    continue
                role = "master" if "master" in flags else "replica"
                result[int(address.rsplit(":", 1)[1])] = {
                    "role": role,
                    "master": by_id.get(v["master_id"]) if role == "replica" else None,
                    "slots": [(int(r[0]), int(r[-1])) for r in v["slots"]],
                }
            return result
        raise RuntimeError("no cluster node answers")

    def primaries(self) -> list[int]:
        return sorted(p for p, n in self.topology().items() if n["role"] == "master" and n["slots"])

    def primary_of(self, slot: int) -> int:
        for port, node in self.topology().items():
            if node["role"] == "master" and any(lo <= slot <= hi for lo, hi in node["slots"]):
                return port
        raise LookupError(f"no primary serves slot {slot}")

    def replica_of(self, primary: int) -> int:
        for port, node in self.topology().items():
            if node["role"] == "replica" and node["master"] == primary:
                return port
        raise LookupError(f"primary {primary} has no replica")

    def node(self, port: int) -> RedisProcess:
        return next(n for n in self.nodes if n.port == port)

    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.nodes]

    def client(self, **options: Any) -> Any:
        """A ``redis.asyncio.RedisCluster`` client on this cluster (the caller closes it)."""
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        options.setdefault("socket_timeout", 2)
        options.setdefault("socket_connect_timeout", 2)
        nodes = [ClusterNode(host, port) for host, port in self.startup_nodes()]
        return RedisCluster(startup_nodes=nodes, **options)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class CountingProxy:
    """A TCP proxy on a free loopback port in front of ``upstream_port`` that counts connections.

    Every connection a client opens is counted (``accepted``: monotonic times), also while the
    upstream is down: the proxy then closes it at once, as a stopped server would refuse it.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.accepted: list[float] = []
        self.upstream_failures = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="counting-proxy", daemon=True)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def count(self, start: float = float("-inf"), end: float = float("inf")) -> int:
        """Connections opened in ``[start, end)`` (monotonic seconds)."""
        with self._lock:
            return sum(1 for t in self.accepted if start <= t < end)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=1024)
        self._ready.set()
        async with server:
            await self._stop.wait()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # the proxy closing
            await self._proxy(reader, writer)

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.accepted.append(time.monotonic())
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            with self._lock:
                self.upstream_failures += 1
            writer.transport.abort()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=10)


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """``tests.e2e.servers.serve`` with keep-alive connections kept for 5 minutes, so that a
    load test's idle client connections are not closed under it."""
    from tests.e2e.servers import serve as serve_app

    with serve_app(app, timeout_keep_alive=300, backlog=4096) as url:
        yield url
