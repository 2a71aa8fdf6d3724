"""The recent refusals and alerts one process saw, kept in memory for the dashboard."""

from __future__ import annotations

import weakref
from collections import deque
from datetime import UTC, datetime
from typing import Any

from tokenfence_asgi.engine.alerts import alert_to_dict
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.engine.observe import FenceObserver
from tokenfence_asgi.errors import (
    BudgetExceeded,
    ConfigError,
    RequestLimitExceeded,
    TokenFenceError,
)
from tokenfence_asgi.money import format_dollars, format_time
from tokenfence_asgi.results import Alert

__all__ = ["FenceActivity", "now_text"]

_ACTIVITY: weakref.WeakKeyDictionary[TokenFence, FenceActivity] = weakref.WeakKeyDictionary()


def now_text() -> str:
    """The wall clock's time now, ISO 8601 UTC to the millisecond."""
    return format_time(datetime.now(UTC), timespec="milliseconds")


class FenceActivity(FenceObserver):
    """The last ``size`` refusals and alerts of a fence, in memory, for the dashboard.

    ``FenceActivity.for_fence(fence)`` makes one per fence (observing its refusals and its
    alerts) and returns the same one after. It sees what this process saw: with several
    instances, each dashboard shows its own instance's recent events.
    """

    def __init__(self, size: int = 200) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 100_000:
            raise ConfigError(f"size must be an int in [1, 100000], got {size!r}")
        self.refusals: deque[dict[str, Any]] = deque(maxlen=size)
        self.alerts: deque[dict[str, Any]] = deque(maxlen=size)

    @classmethod
    def for_fence(cls, fence: TokenFence, size: int = 200) -> FenceActivity:
        """The activity log of ``fence``, made and attached on first use."""
        activity = _ACTIVITY.get(fence)
        if activity is None:
            activity = cls(size)
            fence.observe(activity)
            fence.on_alert(activity.alert)
            _ACTIVITY[fence] = activity
        return activity

    def refused(self, error: TokenFenceError, tenant_id: str, feature: str | None) -> None:
        entry: dict[str, Any] = {
            "at": now_text(),
            "tenant_id": tenant_id,
            "feature": feature,
            "error": error.error_code,
            "message": error.message[:500],
            "window": getattr(error, "window", None),
        }
        if isinstance(error, BudgetExceeded):
            entry.update(
                reason=error.reason,
                scope=error.scope,
                pool=error.pool,
                used=format_dollars(error.total_cost),
                held=format_dollars(error.held),
                limit=format_dollars(error.max_cost),
                requested=format_dollars(error.requested),
            )
        elif isinstance(error, RequestLimitExceeded):
            entry.update(
                scope=error.scope,
                pool=error.pool,
                requests=error.requests,
                max_requests=error.max_requests,
            )
        else:
            entry["scope"] = getattr(error, "scope", None)
        self.refusals.append(entry)

    async def alert(self, alert: Alert) -> None:
        """The ``on_alert`` hook: remember the alert."""
        self.alerts.append({"at": now_text(), **alert_to_dict(alert)})

    def snapshot(self, limit: int = 50) -> dict[str, list[dict[str, Any]]]:
        """The newest ``limit`` refusals and alerts, newest first."""
        return {
            "refusals": list(reversed(self.refusals))[:limit],
            "alerts": list(reversed(self.alerts))[:limit],
        }
