"""Running the fence's coroutines for sync callers: a sync SDK client, a sync LiteLLM call.

The fence is async (``redis.asyncio``), and its connections belong to the event loop that opened
them. A sync caller therefore runs fence work on a loop where those connections may be used:
the app's own loop when the caller is one of its worker threads (a sync FastAPI or Starlette
endpoint), else the loop of the last async fenced call (``app_loop``), else a private loop
thread started on first use. A sync call made on a thread that runs an event loop would block
that loop, and is refused with ``RuntimeError``.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import anyio.from_thread

__all__ = ["Portal", "caller_loop"]

T = TypeVar("T")


class Portal:
    """Runs coroutines for sync callers on a loop where the fence's connections may be used.

    ``hint`` completes the message of the ``RuntimeError`` raised on a thread that runs an
    event loop (what to use instead).
    """

    __slots__ = ("_hint", "_lock", "_loop", "_thread", "app_loop")

    def __init__(self, hint: str = "use the async client") -> None:
        self.app_loop: asyncio.AbstractEventLoop | None = None
        self._hint = hint
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, make: Callable[[], Awaitable[T]], context: contextvars.Context | None) -> T:
        """``await make()`` on a suitable loop (in ``context`` when given); blocks until done."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                f"a sync fenced call would block this thread's event loop; {self._hint}"
            )

        async def main() -> T:
            coro = make()
            if context is None:
                return await coro
            return await asyncio.get_running_loop().create_task(_wrap(coro), context=context)

        try:
            return anyio.from_thread.run(main)  # a worker thread of the app's own loop
        except anyio.NoEventLoopError:
            pass
        loop = self.app_loop
        if loop is None or loop.is_closed() or not loop.is_running():
            loop = self._own_loop()
        return asyncio.run_coroutine_threadsafe(main(), loop).result()

    def _own_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="tokenfence-sync", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def close(self) -> None:
        """Stop the private loop thread, if one was started (what it was running is cancelled)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is not None and thread is not None:

            async def drain() -> None:
                tasks = asyncio.all_tasks() - {asyncio.current_task()}
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await loop.shutdown_asyncgens()

            asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()


async def _wrap(awaitable: Awaitable[T]) -> T:
    return await awaitable


def caller_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop of a sync caller: its own thread's, or the loop whose worker thread this
    is (a sync endpoint of a FastAPI or Starlette app); ``None`` for a plain thread."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    try:
        return anyio.from_thread.run_sync(asyncio.get_running_loop)
    except (anyio.NoEventLoopError, RuntimeError):
        return None
