"""Delivery of threshold alerts to hooks, never in the way of an LLM call.

The scripts decide when a limit crosses 50%, 80% or 100% (once per window and threshold); this
module logs each alert and hands it to the registered hooks in background tasks: an async hook as
a task, a sync hook in a worker thread. A slow or failing hook delays and fails nothing.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from tokenfence_asgi.money import format_dollars
from tokenfence_asgi.results import Alert, FenceCounters

__all__ = ["AlertHook", "AlertHub", "alert_to_dict"]

log = structlog.get_logger("tokenfence_asgi")

AlertHook = Callable[[Alert], Awaitable[None] | None]


def alert_to_dict(alert: Alert) -> dict[str, Any]:
    """An alert as JSON-ready data, ``used`` and ``limit`` as exact decimal strings.

    They are dollars (``"4.000125"``) for a ``"cost"`` alert and counts (``"80"``) for a
    ``"requests"`` alert. ``reservation_id`` is the call that raised it (None when unknown) and
    ``repeated`` is true when a repeat of that call reports it again. The webhook body and the
    admin API use this shape.
    """
    return {
        "tenant_id": alert.tenant_id,
        "feature": alert.feature,
        "scope": alert.scope,
        "pool": alert.pool,
        "window": alert.window,
        "metric": alert.metric,
        "threshold": alert.threshold,
        "used": format_dollars(alert.used),
        "limit": format_dollars(alert.limit),
        "reservation_id": alert.reservation_id,
        "repeated": alert.repeated,
    }


class AlertHub:
    """Registered alert hooks and their in-flight deliveries."""

    __slots__ = ("_counters", "_hooks", "_tasks")

    def __init__(self, counters: FenceCounters) -> None:
        self._hooks: list[AlertHook] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._counters = counters

    def add(self, hook: AlertHook) -> None:
        if not callable(hook):
            raise TypeError(f"an alert hook must be callable, got {hook!r}")
        self._hooks.append(hook)

    def dispatch(self, alerts: list[Alert]) -> None:
        """Log each alert and start its delivery to every hook; returns at once."""
        for alert in alerts:
            self._counters.alerts += 1
            log.warning(
                "budget_alert",
                tenant=alert.tenant_id,
                scope=alert.scope,
                pool=alert.pool,
                window=alert.window,
                metric=alert.metric,
                threshold=alert.threshold,
                used=str(alert.used),
                limit=str(alert.limit),
                feature=alert.feature,
            )
            for hook in self._hooks:
                task = asyncio.get_running_loop().create_task(self._deliver(hook, alert))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _deliver(self, hook: AlertHook, alert: Alert) -> None:
        try:
            if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
                getattr(hook, "__call__", None)  # noqa: B004 - async callable objects
            ):
                result = hook(alert)
                if inspect.isawaitable(result):
                    await result
            else:
                result = await asyncio.to_thread(hook, alert)
                if inspect.isawaitable(result):
                    await result
        except asyncio.CancelledError:
            raise
        except Exception:
            self._counters.alert_hook_errors += 1
            log.exception("alert_hook_failed", hook=repr(hook), tenant=alert.tenant_id)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (at most ``timeout_s``) for deliveries in flight."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
