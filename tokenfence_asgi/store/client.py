"""The connection to the budget store: Redis, Redis Cluster, or an embedded fakeredis.

The embedded store runs the same Lua scripts in-process (``fakeredis[lua]``), so a first try and
the demo need no server; it is single-process only. Connection errors and timeouts become
``StoreUnavailable`` (``raise ... from exc``); a script error (``ResponseError``) is a bug and is
raised as it is, never retried.

**Reconnect backoff** (a Redis server, not a cluster): after a call fails to reach the store,
the store is "backing off" for a short window (``BACKOFF_BASE_S``, doubling with each failed
attempt up to ``BACKOFF_CAP_S``, jittered by 50-100%). During it no call opens a connection:
a call waits for the one call that may try again when the window ends (the probe), at most its
``timeout_s``, and fails with ``StoreUnavailable`` when no probe answers by then (at once when
the next probe is due after that). The first call that succeeds ends the backoff. So an outage
costs each process about one connection attempt per window instead of one per call (no
thundering herd of reconnects), a failed call answers within ``timeout_s`` plus one attempt,
and a server back after a restart is found within one window, the calls that waited for it
succeeding.

**Redis Cluster** (a ``RedisCluster`` client): no backoff (one failed primary must not stop
the calls to the others; redis-py refreshes its slot map itself). The client is initialized
once before concurrent use, and at most its ``max_connections`` (per node) calls run at once
per store: a burst waits for a connection up to ``4 * timeout_s`` (at least 1 s) instead of
failing with ``MaxConnectionsError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.exceptions as redis_errors
import structlog
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from tokenfence_asgi.errors import ConfigError, MissingExtra, StoreUnavailable
from tokenfence_asgi.store._connection import FastPackConnection
from tokenfence_asgi.store.compiled import COMPILED_SCRIPTS
from tokenfence_asgi.store.pipeline import PIPELINED
from tokenfence_asgi.store.scripts import SCRIPT_NAMES, decode, script_source

__all__ = ["BACKOFF_BASE_S", "BACKOFF_CAP_S", "STORE_ERRORS", "Backoff", "Store"]

T = TypeVar("T")

BACKOFF_BASE_S = 0.025
"""The first backoff window after a failure to reach the store (before jitter)."""
BACKOFF_CAP_S = 1.0
"""The longest backoff window (before jitter)."""

log = structlog.get_logger("tokenfence_asgi")

# What "the store is unreachable" looks like from redis-py (plus the OS and asyncio).
STORE_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # includes BusyLoadingError
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.MasterDownError,
    redis_errors.ReadOnlyError,
    redis_errors.RedisClusterException,
    OSError,
    TimeoutError,
)
# Replies that mean "this server cannot serve now" rather than a bug of ours.
_OUTAGE_REPLIES = ("BUSY", "OOM", "LOADING", "MASTERDOWN", "CLUSTERDOWN")
# Of those, the ones that also start a backoff (the server is not there yet).
_DOWN_REPLIES = ("LOADING", "MASTERDOWN", "CLUSTERDOWN")


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"budget store unavailable: {exc}")


def _from_redis_py(exc: AttributeError) -> bool:
    """Whether ``exc`` was raised inside redis-py: its async cluster client can use a
    connection that a concurrent slot-map refresh just closed (``'NoneType' object has no
    attribute 'writelines'``), which is a lost connection, not a bug of ours."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and ("/redis/" in last or "\\redis\\" in last)


class Backoff:
    """Bounded, jittered, exponential backoff of one store's connection attempts.

    ``failures`` counts the failed attempts since the store last answered (0: not backing
    off); ``retry_at`` (``time.monotonic()``) is when the next attempt, the probe, may start.
    ``probes`` and ``fast_failures`` (calls refused without an attempt) are counted for tests
    and metrics.
    """

    __slots__ = (
        "_event",
        "_event_loop",
        "_rng",
        "base",
        "cap",
        "failures",
        "fast_failures",
        "probes",
        "probing",
        "retry_at",
    )

    def __init__(self, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self.retry_at = 0.0
        self.probing = False
        self.probes = 0
        self.fast_failures = 0
        self._rng = random.Random()
        self._event: asyncio.Event | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None

    def window(self) -> float:
        """The next window: base * 2^(failures - 1), capped, times a jitter in [0.5, 1]."""
        exponent = min(max(self.failures - 1, 0), 30)
        window: float = min(self.cap, self.base * 2**exponent)
        return window * (0.5 + 0.5 * self._rng.random())

    def _changed(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._event is None or self._event_loop is not loop:
            self._event = asyncio.Event()
            self._event_loop = loop
        return self._event

    def _notify(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            with contextlib.suppress(RuntimeError):  # its loop is gone: nobody waits any more
                event.set()

    async def admit(self, wait_s: float) -> bool:
        """Wait (at most ``wait_s``) until this call may reach the store; True when it is the
        probe. Raises ``StoreUnavailable`` when no probe can answer in time."""
        deadline = time.monotonic() + wait_s
        while self.failures:
            now = time.monotonic()
            if not self.probing:
                if now >= self.retry_at:
                    self.probing = True
                    self.probes += 1
                    return True
                if self.retry_at > deadline:
                    break  # the next attempt is due after this call's deadline
                until = self.retry_at
            else:
                until = deadline
            if now >= deadline:
                break
            try:
                async with asyncio.timeout(until - now):
                    await self._changed().wait()
            except TimeoutError:
                pass
        else:
            return False
        self.fast_failures += 1
        wait_ms = max(0, round((self.retry_at - time.monotonic()) * 1000))
        raise StoreUnavailable(
            f"budget store unavailable: reconnecting after {self.failures} failed attempt(s); "
            f"next attempt in {wait_ms} ms"
        )

    def failed(self, probe: bool) -> None:
        """A call could not reach the store."""
        if probe:
            self.probing = False
            self.failures += 1
        elif self.failures:
            return  # admitted before the backoff began: already counted
        else:
            self.failures = 1
        self.retry_at = time.monotonic() + self.window()
        self._notify()

    def succeeded(self, probe: bool) -> None:
        """A call reached the store: the backoff ends."""
        if probe:
            self.probing = False
        if self.failures or probe:
            self.failures = 0
            self.retry_at = 0.0
            self._notify()

    def abandoned(self) -> None:
        """The probe was cancelled before it knew: let the next call try."""
        self.probing = False
        self._notify()


class Store:
    """Runs the registered Lua scripts on one client and maps outages to ``StoreUnavailable``."""

    __slots__ = (
        "_cluster_ready",
        "_gate",
        "_gate_wait_s",
        "_owned",
        "_scripts",
        "_timeout_s",
        "backoff",
        "client",
        "cluster",
        "embedded",
    )

    def __init__(
        self, client: Any, *, owned: bool, embedded: bool = False, timeout_s: float = 0.5
    ) -> None:
        self.client = client
        self.embedded = embedded
        self.cluster = isinstance(client, RedisCluster)
        self._owned = owned
        self._timeout_s = timeout_s
        self._scripts = {
            name: client.register_script(script_source(name))
            for name in SCRIPT_NAMES
            if name not in COMPILED_SCRIPTS
        }
        # fakeredis subclasses redis.asyncio.Redis but never loses a connection.
        fake = embedded or type(client).__module__.startswith("fakeredis")
        self.backoff: Backoff | None = None if fake or self.cluster else Backoff()
        self._gate: asyncio.Semaphore | None = None
        self._gate_wait_s = max(1.0, 4 * timeout_s)
        self._cluster_ready = False
        if self.cluster:
            limit = getattr(client, "nodes_manager", None)
            limit = getattr(limit, "connection_kwargs", {}).get("max_connections", 100)
            self._gate = asyncio.Semaphore(max(1, min(int(limit or 100), 2**20)))

    @classmethod
    def connect(
        cls,
        *,
        redis_url: str | None = None,
        redis: Redis | RedisCluster | None = None,
        timeout_s: float = 0.5,
        max_connections: int = 64,
    ) -> Store:
        """A store for a URL, a client the caller owns, or (neither) the embedded store.

        ``timeout_s`` bounds connecting and each reply; ``max_connections`` bounds the pool
        of a store made from a URL (a burst waits for a free connection).
        """
        if redis_url is not None and redis is not None:
            raise ConfigError("pass redis_url or redis, not both")
        if not (isinstance(timeout_s, int | float) and 0 < timeout_s <= 60):
            raise ConfigError(f"timeout_s must be in (0, 60] seconds, got {timeout_s!r}")
        if redis is not None:
            if not isinstance(redis, Redis | RedisCluster):
                kind = type(redis).__name__
                raise ConfigError(
                    f"redis must be a redis.asyncio Redis or RedisCluster, got {kind}"
                )
            return cls(redis, owned=False, timeout_s=timeout_s)
        if redis_url is not None:
            if not isinstance(redis_url, str) or not redis_url.startswith(
                ("redis://", "rediss://", "unix://")
            ):
                raise ConfigError(
                    f"redis_url must start with redis://, rediss:// or unix://, got {redis_url!r}"
                )
            # One quick retry with a short backoff rides over a reconnect; every script is
            # idempotent by reservation id, so a retried command never charges twice.
            # A bounded pool that makes a burst wait briefly for a connection instead of
            # failing it ("Too many connections") or opening thousands of sockets.
            pool = BlockingConnectionPool.from_url(
                redis_url,
                max_connections=max_connections,
                timeout=max(1.0, 4 * timeout_s),
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), 1),
            )
            if pool.connection_class is Connection:  # TCP; TLS and unix sockets keep theirs
                pool.connection_class = FastPackConnection
            return cls(Redis.from_pool(pool), owned=True, timeout_s=timeout_s)
        try:  # imported only when used
            import lupa  # noqa: F401  (fakeredis runs scripts with it; without it every one fails)

            from tokenfence_asgi.store._embedded import embedded_client
        except ImportError as exc:
            raise MissingExtra(
                "fakeredis[lua]",
                "embedded",
                needed_for="TokenFence() without a Redis URL (the embedded store)",
                module=exc.name,
            ) from exc
        log.warning(
            "embedded_store",
            detail="no redis_url: budgets live in this process only; use Redis to share them",
        )
        return cls(embedded_client(), owned=True, embedded=True)

    @staticmethod
    def _raise_outage(
        exc: redis_errors.ResponseError, backoff: Backoff | None, probe: bool
    ) -> None:
        """Raise ``StoreUnavailable`` for a reply that means the server cannot serve now; else
        return (a script error: the caller re-raises it as it is)."""
        message = str(exc)
        if backoff is not None:
            if message.startswith(_DOWN_REPLIES):
                backoff.failed(probe)
            else:
                backoff.succeeded(probe)  # it answered
        if message.startswith(_OUTAGE_REPLIES):
            raise _unavailable(exc) from exc

    async def _guarded(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one store command: through the backoff (a server) or the connection gate (a
        cluster), mapping outages to ``StoreUnavailable``."""
        if self._gate is not None:
            return await self._gated(call)
        backoff = self.backoff
        probe = await backoff.admit(self._timeout_s) if backoff and backoff.failures else False
        try:
            result = await call()
        except STORE_ERRORS as exc:
            if backoff is not None:
                backoff.failed(probe)
            raise _unavailable(exc) from exc
        except redis_errors.ResponseError as exc:
            self._raise_outage(exc, backoff, probe)
            raise
        except BaseException:
            if probe and backoff is not None:
                backoff.abandoned()
            raise
        if backoff is not None and (probe or backoff.failures):
            backoff.succeeded(probe)
        return result

    async def _gated(self, call: Callable[[], Awaitable[T]]) -> T:
        gate = self._gate
        assert gate is not None
        try:
            async with asyncio.timeout(self._gate_wait_s):
                await gate.acquire()
        except TimeoutError:
            raise StoreUnavailable(
                "budget store unavailable: no free cluster connection in time"
            ) from None
        try:
            if not self._cluster_ready:
                # Once, before concurrent use: redis-py's first slot-map load can close
                # connections that concurrent commands are opening.
                await self.client.initialize()
                self._cluster_ready = True
            return await call()
        except STORE_ERRORS as exc:
            raise _unavailable(exc) from exc
        except redis_errors.ResponseError as exc:
            if str(exc).startswith(_OUTAGE_REPLIES):
                raise _unavailable(exc) from exc
            raise
        except AttributeError as exc:
            if _from_redis_py(exc):
                raise _unavailable(exc) from exc
            raise
        finally:
            gate.release()

    def install(self, sources: dict[str, str]) -> None:
        """Register scripts compiled for one fence (``store/compiled.py``) under their names."""
        for name, source in sources.items():
            self._scripts[name] = self.client.register_script(source)

    async def run(self, name: str, keys: list[str], args: list[str]) -> list[str]:
        """Run script ``name`` (EVALSHA, reloading on NOSCRIPT) and decode its flat reply.

        Inside a context whose ``PIPELINED`` pipeliner is this store's, the call joins the
        others made in the same turn of the loop, in one pipeline (see ``store.pipeline``).
        """
        pipeliner = PIPELINED.get()
        if pipeliner is not None and pipeliner.store is self:
            reply = await pipeliner.call(name, keys, args)
            if not isinstance(reply, redis_errors.NoScriptError):  # that one: run it alone
                if isinstance(reply, redis_errors.ResponseError):
                    self._raise_outage(reply, None, False)
                    raise reply
                return decode(reply)
        script = self._scripts[name]
        backoff = self.backoff
        if self._gate is not None or (backoff is not None and backoff.failures):
            return decode(await self._guarded(lambda: script(keys=keys, args=args)))
        try:  # the common case, inline: a server that answers
            reply = await script(keys=keys, args=args)
        except STORE_ERRORS as exc:
            if backoff is not None:
                backoff.failed(False)
            raise _unavailable(exc) from exc
        except redis_errors.ResponseError as exc:
            self._raise_outage(exc, backoff, False)
            raise
        if backoff is not None and backoff.failures:  # it failed meanwhile, then answered
            backoff.succeeded(False)
        return decode(reply)

    async def run_pipelined(self, calls: list[tuple[str, list[str], list[str]]]) -> list[Any]:
        """Run many script calls ``(name, keys, args)`` in one pipeline (one per node of a
        cluster); their raw replies in order, a call the server refused as its
        ``ResponseError`` instance (NOSCRIPT included: ``run`` loads the script). Raises
        ``StoreUnavailable`` when the store cannot be reached."""
        scripts = self._scripts

        def send() -> Awaitable[list[Any]]:
            pipe = self.client.pipeline(transaction=False)
            for name, keys, args in calls:
                pipe.execute_command("EVALSHA", scripts[name].sha, len(keys), *keys, *args)
            replies: Awaitable[list[Any]] = pipe.execute(raise_on_error=False)
            return replies

        return await self._guarded(send)

    async def hgetall(self, key: str) -> dict[str, str]:
        """All fields of a hash, decoded."""
        raw = await self._guarded(lambda: self.client.hgetall(key))
        return {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else str(v)
            )
            for k, v in raw.items()
        }

    async def hget(self, key: str, field: str) -> str | None:
        """One field of a hash, decoded, or None."""
        raw = await self._guarded(lambda: self.client.hget(key, field))
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    async def hmget(self, key: str, fields: list[str]) -> list[str | None]:
        """Some fields of a hash, decoded, None for each missing one."""
        raw = await self._guarded(lambda: self.client.hmget(key, fields))
        return [None if v is None else v.decode() if isinstance(v, bytes) else str(v) for v in raw]

    async def aclose(self) -> None:
        """Close the client if this store created it."""
        if self._owned:
            await self.client.aclose()
