"""Script calls made together, sent together: one pipelined round trip for many.

``Store.run`` hands its call to the ``Pipeliner`` that ``PIPELINED`` holds in the calling
context, when there is one for that store (the commit queue sets one for the commits it sends
at once). Every call made before the event loop next runs its ready callbacks joins one
pipeline (``Store.run_pipelined``): one write and one read on one connection for a server or
the embedded store, one per node on a Redis Cluster (redis-py groups a cluster pipeline's
commands by the node that owns their keys, and follows MOVED and ASK). Each caller gets its
own reply, or its own error, exactly as ``Store.run`` would give it; a script the server lost
(NOSCRIPT) is run again on its own, which loads it.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from tokenfence_asgi.errors import StoreUnavailable

if TYPE_CHECKING:
    from tokenfence_asgi.store.client import Store

__all__ = ["PIPELINED", "Pipeliner"]

PIPELINED: ContextVar[Pipeliner | None] = ContextVar("tokenfence_pipelined", default=None)
"""The pipeliner the script calls of this context join (``None``: each call on its own)."""

_Call = tuple[str, list[str], list[str], "asyncio.Future[Any]"]


class Pipeliner:
    """Collects the script calls of one store made in one turn of the loop, and sends them."""

    __slots__ = ("_pending", "_sending", "store")

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def call(self, name: str, keys: list[str], args: list[str]) -> Any:
        """The raw reply of script ``name``, or the error the server answered it with (an
        exception instance, returned, not raised); raises what the whole pipeline raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((name, keys, args, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)  # a reference until it is done
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await self.store.run_pipelined([(n, k, a) for n, k, a, _ in batch])
        except asyncio.CancelledError:
            for *_, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for *_, future in batch:
                if not future.done():  # each caller its own error, with the same cause
                    future.set_exception(_copy(exc))
            return
        for (*_, future), reply in zip(batch, replies, strict=True):
            if not future.done():  # its caller may have been cancelled
                future.set_result(reply)


def _copy(exc: Exception) -> Exception:
    """A fresh instance of ``exc`` (a store outage) for each caller, so that their tracebacks
    do not pile up on one object; ``exc`` itself when it cannot be copied."""
    if isinstance(exc, StoreUnavailable):
        copy = StoreUnavailable(exc.message)
        copy.__cause__ = exc.__cause__
        return copy
    return exc
