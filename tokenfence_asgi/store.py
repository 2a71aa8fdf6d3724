"""The connection to the budget store: Redis, Redis Cluster, or an embedded fakeredis.

The embedded store runs the same Lua scripts in-process (``fakeredis[lua]``), so a first try and
the demo need no server; it is single-process only. Connection errors and timeouts become
``StoreUnavailable`` (``raise ... from exc``); a script error (``ResponseError``) is a bug and is
raised as it is, never retried.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions as redis_errors
import structlog
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from tokenfence_asgi.errors import ConfigError, StoreUnavailable
from tokenfence_asgi.scripts import SCRIPT_NAMES, decode, script_source

__all__ = ["STORE_ERRORS", "Store"]

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


class Store:
    """Runs the registered Lua scripts on one client and maps outages to ``StoreUnavailable``."""

    __slots__ = ("_owned", "_scripts", "client", "embedded")

    def __init__(self, client: Any, *, owned: bool, embedded: bool = False) -> None:
        self.client = client
        self.embedded = embedded
        self._owned = owned
        self._scripts = {name: client.register_script(script_source(name)) for name in SCRIPT_NAMES}

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
            return cls(redis, owned=False)
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
            return cls(Redis.from_pool(pool), owned=True)
        import fakeredis  # the embedded default; imported only when used

        log.warning(
            "embedded_store",
            detail="no redis_url: budgets live in this process only; use Redis to share them",
        )
        # In-process "connections" cost nothing: no pool limit to trip over in a burst.
        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), max_connections=2**31)
        return cls(client, owned=True, embedded=True)

    async def run(self, name: str, keys: list[str], args: list[str]) -> list[str]:
        """Run script ``name`` (EVALSHA, reloading on NOSCRIPT) and decode its flat reply."""
        try:
            reply = await self._scripts[name](keys=keys, args=args)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(f"budget store unavailable: {exc}") from exc
        except redis_errors.ResponseError as exc:
            # A busy script elsewhere or a full server is an outage, not a bug of ours.
            if str(exc).startswith(("BUSY", "OOM", "LOADING", "MASTERDOWN", "CLUSTERDOWN")):
                raise StoreUnavailable(f"budget store unavailable: {exc}") from exc
            raise
        return decode(reply)

    async def hgetall(self, key: str) -> dict[str, str]:
        """All fields of a hash, decoded."""
        try:
            raw = await self.client.hgetall(key)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(f"budget store unavailable: {exc}") from exc
        return {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else str(v)
            )
            for k, v in raw.items()
        }

    async def hget(self, key: str, field: str) -> str | None:
        """One field of a hash, decoded, or None."""
        try:
            raw = await self.client.hget(key, field)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(f"budget store unavailable: {exc}") from exc
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    async def aclose(self) -> None:
        """Close the client if this store created it."""
        if self._owned:
            await self.client.aclose()
