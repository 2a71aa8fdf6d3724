"""The admin API's JSON for a tenant's status: windows, fill fractions, the binding window."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from tokenfence_asgi.money import format_dollars, format_time
from tokenfence_asgi.results import TenantStatus, WindowStatus

__all__ = ["sort_key", "status_json", "window_json"]


def _fraction(used: Decimal | int, limit: Decimal | int | None) -> float | None:
    if limit is None or limit <= 0:
        return None
    return round(float(Decimal(used) / Decimal(limit)), 4)


def window_json(w: WindowStatus) -> dict[str, Any]:
    """One window of a status; money as exact decimal strings of dollars."""
    return {
        "window": w.window,
        "kind": w.kind,
        "scope": w.scope,
        "used": format_dollars(w.used),
        "held": format_dollars(w.held),
        "limit": format_dollars(w.limit),
        "remaining": format_dollars(w.remaining),
        "carried": format_dollars(w.carried),
        "requests": w.requests,
        "max_requests": w.max_requests,
        "resets_at": format_time(w.resets_at),
        "features": {name: format_dollars(v) for name, v in w.features.items()},
        "fraction": _fraction(w.used + w.held, w.limit),
        "request_fraction": _fraction(w.requests, w.max_requests),
    }


def _binding(windows: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The window closest to its limit (cost or requests): the one that refuses first."""
    best: dict[str, Any] | None = None
    for w in windows:
        for metric, key in (("cost", "fraction"), ("requests", "request_fraction")):
            value = w[key]
            if value is not None and (best is None or value > best["fraction"]):
                best = {
                    "window": w["window"],
                    "scope": w["scope"],
                    "metric": metric,
                    "fraction": value,
                    "used": w["used"],
                    "held": w["held"],
                    "limit": w["limit"],
                    "remaining": w["remaining"],
                    "requests": w["requests"],
                    "max_requests": w["max_requests"],
                    "resets_at": w["resets_at"],
                }
    return best


def status_json(status: TenantStatus) -> dict[str, Any]:
    """A tenant's status, its pool's windows and the window that binds first."""
    windows = [window_json(w) for w in status.windows]
    pool_windows = [window_json(w) for w in status.pool_windows]
    binding = _binding([*windows, *pool_windows])
    return {
        "tenant_id": status.tenant_id,
        "plan": status.plan,
        "pool": status.pool,
        "pool_plan": status.pool_plan,
        "killed": status.killed,
        "killed_features": list(status.killed_features),
        "held": format_dollars(status.held),
        "open_holds": status.open_holds,
        "windows": windows,
        "pool_windows": pool_windows,
        "fraction": None if binding is None else binding["fraction"],
        "binding": binding,
    }


def sort_key(item: dict[str, Any]) -> tuple[int, float, str]:
    """Fullest first, tenants without a limit last, then by id."""
    fraction = item["fraction"]
    return (0 if fraction is not None else 1, -(fraction or 0.0), item["tenant_id"])
