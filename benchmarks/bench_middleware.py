"""Requests/s of a trivial endpoint under uvicorn: bare, with TokenFenceMiddleware, with the least
a pure ASGI middleware can do (read the tenant header, set one context variable: the floor), and
with a ``BaseHTTPMiddleware`` doing TokenFenceMiddleware's work (what a pure ASGI middleware is
meant to beat).

One uvicorn server (h11, access log off) runs as a child process on loopback and serves the four
variants side by side, at ``/plain``, ``/fenced``, ``/minimal`` and ``/basehttp``: identical
server processes differ by up to ~8% in speed on a shared VM (memory layout, hash seeds), more
than the effect measured, so the variants share one process and each session starts a fresh
one. The load comes from this process: ``connections`` (64) keep-alive connections each sending
the next request as soon as a response is complete. The variants are measured in turns (plain,
fenced, minimal, basehttp; fenced, minimal, basehttp, plain; ...) after a warm-up turn, so
drift on the machine hits all alike; each ratio is the median of the per-round ratios. With two
or more CPUs the server is pinned to one CPU and the load generator to another, so the server
is what saturates. Beside requests/s, the server's CPU time per request is read from ``/proc``
(Linux).

``python -m benchmarks.bench_middleware [--quick]`` prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenfence_asgi.context import FenceContext, pop_context, push_context
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import InvalidId, TenantRequired, TokenFenceError
from tokenfence_asgi.store.keys import validate_id
from tokenfence_asgi.web.middleware import TokenFenceMiddleware
from tokenfence_asgi.web.problem import FenceErrorResponse

VARIANTS = ("plain", "fenced", "minimal", "basehttp")
_ROOT = Path(__file__).resolve().parent.parent


# -- the app the server runs (uvicorn --factory) ------------------------------------------------


async def _hello(request: Request) -> Response:
    return PlainTextResponse("hello")


def _endpoint_app(path: str) -> Starlette:
    return Starlette(routes=[Route(path, _hello)])


_TENANT: ContextVar[str | None] = ContextVar("bench_tenant", default=None)


class _Minimal:
    """Reads the tenant header and sets one context variable: the floor, not for use."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tenant = None
        for key, value in scope["headers"]:
            if key == b"x-tenant-id":
                tenant = value.decode("latin-1")
        token = _TENANT.set(tenant)
        try:
            await self.app(scope, receive, send)
        finally:
            _TENANT.reset(token)


class _BaseHTTPFence(BaseHTTPMiddleware):
    """The middleware's work as a ``BaseHTTPMiddleware``: the reference, not for use."""

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        sent_id = request.headers.get("x-request-id", "")
        request_id = sent_id if 0 < len(sent_id) <= 128 else uuid.uuid4().hex
        try:
            raw = request.headers.get("x-tenant-id")
            if not raw:
                raise TenantRequired()
            tenant = validate_id(raw, what="tenant_id")
        except InvalidId as exc:
            return FenceErrorResponse(exc, status_code=400, error_code="invalid_tenant")
        except TokenFenceError as exc:
            return FenceErrorResponse(exc)
        token = push_context(FenceContext(tenant, None, request_id))
        try:
            response = await call_next(request)
        except TokenFenceError as exc:
            response = FenceErrorResponse(exc)
        finally:
            pop_context(token)
        response.headers["x-request-id"] = request_id
        return response


def variants_app() -> ASGIApp:
    """``/plain``: the endpoint alone; ``/fenced``: behind ``TokenFenceMiddleware``;
    ``/minimal``: behind the floor; ``/basehttp``: behind the ``BaseHTTPMiddleware`` equivalent.
    Each is a whole Starlette app."""
    plain = _endpoint_app("/plain")
    fenced = _endpoint_app("/fenced")
    fenced.add_middleware(TokenFenceMiddleware, fence=TokenFence())
    minimal = _endpoint_app("/minimal")
    minimal.add_middleware(_Minimal)
    basehttp = _endpoint_app("/basehttp")
    basehttp.add_middleware(_BaseHTTPFence)
    apps: dict[str, ASGIApp] = {
        "/plain": plain,
        "/fenced": fenced,
        "/minimal": minimal,
        "/basehttp": basehttp,
    }

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        await apps[scope["path"]](scope, receive, send)

    return dispatch


# -- server and load ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(cpu: int | None) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.bench_middleware:variants_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--http",
            "h11",
            "--ws",
            "none",
            "--lifespan",
            "off",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if cpu is not None:
        os.sched_setaffinity(proc.pid, {cpu})
    return proc, port


def _wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(_request("fenced", 0))
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn on port {port} did not start")
        time.sleep(0.05)


def _request(variant: str, i: int) -> bytes:
    return (
        f"GET /{variant} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\nAccept: */*\r\n"
        f"X-Tenant-ID: tenant-{i % 50}\r\n\r\n"
    ).encode()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc``; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Client(asyncio.Protocol):
    """One keep-alive connection sending the next request as soon as a response is complete.

    A bare ``Protocol`` rather than streams: the load generator has to stay much cheaper per
    request than the server, or it is the client that gets measured.
    """

    def __init__(self, request: bytes, deadline: float, finished: asyncio.Future[int]) -> None:
        self.request = request
        self.deadline = deadline
        self.finished = finished
        self.buffer = b""
        self.done = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            self.buffer = buffer
            return
        head = buffer[:end]
        if not head.startswith(b"HTTP/1.1 200"):
            self._finish(RuntimeError(f"unexpected response: {head[:80]!r}"))
            return
        start = head.lower().index(b"content-length:") + 15
        stop = head.find(b"\r\n", start)
        length = int(head[start : None if stop < 0 else stop])
        if len(buffer) < end + 4 + length:
            self.buffer = buffer
            return
        self.buffer = buffer[end + 4 + length :]
        self.done += 1
        if asyncio.get_running_loop().time() < self.deadline:
            assert self.transport is not None
            self.transport.write(self.request)
        else:
            self._finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc or RuntimeError("the server closed the connection"))

    def _finish(self, exc: BaseException | None) -> None:
        if not self.finished.done():
            if exc is None:
                self.finished.set_result(self.done)
            else:
                self.finished.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


async def _load(
    port: int, pid: int, variant: str, duration_s: float, connections: int
) -> tuple[float, float]:
    """Requests/s and server CPU microseconds per request of one variant, over ``duration_s``."""
    loop = asyncio.get_running_loop()
    cpu_before = _cpu_s(pid)
    started = loop.time()
    finished = [loop.create_future() for _ in range(connections)]
    for i, future in enumerate(finished):
        request = _request(variant, i)
        await loop.create_connection(
            lambda r=request, f=future: _Client(r, started + duration_s, f), "127.0.0.1", port
        )
    done = sum(await asyncio.gather(*finished))
    elapsed = loop.time() - started
    return done / elapsed, (_cpu_s(pid) - cpu_before) / done * 1e6


Runs = dict[str, list[tuple[float, float]]]


def _session(rounds: int, duration_s: float, connections: int, runs: Runs) -> None:
    """Start a fresh server, measure ``rounds`` turns of every variant into ``runs``, stop it."""
    own_cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    pin = own_cpus is not None and len(own_cpus) >= 2
    cpus = sorted(own_cpus) if own_cpus is not None else []
    proc, port = _start(cpus[-1] if pin else None)
    try:
        _wait_ready(port, proc)
        if pin:
            os.sched_setaffinity(0, {cpus[0]})

        async def measure() -> None:
            for variant in VARIANTS:  # warm-up turn, not counted
                await _load(port, proc.pid, variant, 0.5, connections)
            for i in range(rounds):  # rotated, so that no variant always runs after another
                turn = i % len(VARIANTS)
                for variant in VARIANTS[turn:] + VARIANTS[:turn]:
                    result = await _load(port, proc.pid, variant, duration_s, connections)
                    runs[variant].append(result)

        asyncio.run(measure())
    finally:
        if pin and own_cpus is not None:
            os.sched_setaffinity(0, own_cpus)
        proc.terminate()
        proc.wait(timeout=10)


def run(quick: bool = False, *, connections: int = 64) -> dict[str, float]:
    """Measure the three variants in turns; return requests/s, CPU per request and ratios.

    ``middleware_throughput_ratio`` is fenced / plain requests/s, ``minimal_throughput_ratio``
    and ``basehttp_throughput_ratio`` the references' likewise, each the median of the
    per-round ratios; ``*_cpu_ratio`` make the same comparison from the server's CPU time per
    request (plain / variant, so that higher is better in both). ``quick`` takes about 50
    seconds.
    """
    sessions, rounds, duration_s = (3, 6, 0.5) if quick else (5, 8, 1.0)
    runs: Runs = {v: [] for v in VARIANTS}
    for _ in range(sessions):
        _session(rounds, duration_s, connections, runs)

    def ratio(variant: str, index: int) -> float:
        pairs = zip(runs[variant], runs["plain"], strict=True)
        if index == 0:
            per_round = [v[0] / p[0] for v, p in pairs]
        else:
            per_round = [p[1] / v[1] for v, p in pairs if v[1] > 0]
        return round(statistics.median(per_round), 3) if per_round else float("nan")

    def median(variant: str, index: int) -> float:
        return round(statistics.median(r[index] for r in runs[variant]), 1)

    return {
        "plain_rps": median("plain", 0),
        "middleware_rps": median("fenced", 0),
        "minimal_rps": median("minimal", 0),
        "basehttp_rps": median("basehttp", 0),
        "plain_cpu_us_per_request": median("plain", 1),
        "middleware_cpu_us_per_request": median("fenced", 1),
        "minimal_cpu_us_per_request": median("minimal", 1),
        "basehttp_cpu_us_per_request": median("basehttp", 1),
        "middleware_throughput_ratio": ratio("fenced", 0),
        "minimal_throughput_ratio": ratio("minimal", 0),
        "basehttp_throughput_ratio": ratio("basehttp", 0),
        "middleware_cpu_ratio": ratio("fenced", 1),
        "minimal_cpu_ratio": ratio("minimal", 1),
        "basehttp_cpu_ratio": ratio("basehttp", 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_middleware")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (~50 s)")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    from benchmarks.__main__ import report

    report(run(args.quick, connections=args.connections))


if __name__ == "__main__":
    main()
