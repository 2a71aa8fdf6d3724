"""Script replies as the library's values: alerts, refusals, a tenant's status, daily usage.

The codecs (``store/codecs.py``) decode each script's reply into its typed parts; the functions
here turn those parts into the objects users see.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from tokenfence_asgi.config import Plan
from tokenfence_asgi.errors import (
    BudgetExceeded,
    Refused,
    RequestLimitExceeded,
    TooManyOpenHolds,
)
from tokenfence_asgi.money import from_nanos
from tokenfence_asgi.results import Alert, DailyUsage, TenantStatus, WindowStatus
from tokenfence_asgi.store.keys import decode_id
from tokenfence_asgi.store.ledger import parse_days
from tokenfence_asgi.store.specs import CompiledPlan

__all__ = ["alerts", "refusal", "status_reply", "usage_days"]


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def alerts(
    raw: list[str],
    *,
    tenant: str,
    feature: str | None,
    pool: str | None,
    reservation_id: str,
    repeated: bool = False,
) -> list[Alert]:
    """The alert strings of a reply (``scope|window|metric|threshold|used|limit``)."""
    out = []
    for item in raw:
        scope, window, metric, threshold, used, limit = item.split("|")
        money = metric == "cost"
        out.append(
            Alert(
                tenant_id=tenant,
                feature=feature,
                scope=scope,
                pool=pool,
                window=window,
                metric=metric,
                threshold=int(threshold),
                used=from_nanos(int(used)) if money else Decimal(used),
                limit=from_nanos(int(limit)) if money else Decimal(limit),
                reservation_id=reservation_id,
                repeated=repeated,
            )
        )
    return out


def refusal(
    details: list[str],
    *,
    tenant: str,
    feature: str | None,
    plan: Plan,
    pool_plan: Plan,
    pool: str | None,
    hold_ttl_s: float,
) -> Refused:
    """A refusal (kind first, then its details) as the error it raises."""
    kind, scope, window = details[0], details[1], details[2]
    upgrade_url = (pool_plan if scope == "pool" else plan).upgrade_url
    if kind == "holds":
        return TooManyOpenHolds(
            tenant_id=tenant,
            feature=feature,
            open_holds=int(details[3]),
            max_open_holds=int(details[4]),
            resets_at=datetime.fromtimestamp(int(details[5]) / 1000, UTC),
            upgrade_url=upgrade_url,
        )
    if kind == "requests":
        return RequestLimitExceeded(
            tenant_id=tenant,
            feature=feature,
            window=window,
            requests=int(details[3]),
            max_requests=int(details[4]),
            resets_at=_utc(int(details[5])),
            upgrade_url=upgrade_url,
            scope=scope,
            pool=pool,
        )
    used, held, limit, resets, amount, carried, reason = details[3:10]
    return BudgetExceeded(
        tenant_id=tenant,
        feature=feature,
        window=window,
        total_cost=from_nanos(int(used)),
        held=from_nanos(int(held)),
        max_cost=from_nanos(int(limit)),
        resets_at=_utc(int(resets)),
        requested=from_nanos(int(amount)),
        upgrade_url=upgrade_url,
        scope=scope,
        pool=pool,
        reason=reason,
        carried=from_nanos(int(carried)),
        hold_ttl_s=hold_ttl_s,
    )


def _windows(
    plan: Plan, values: list[str], held: int, scope: str, features: list[str]
) -> tuple[tuple[WindowStatus, ...], list[str]]:
    windows = []
    for limit in plan.limits:
        used, requests, carried, resets = (int(x) for x in values[:4])
        per_feature = values[4 : 4 + len(features)]
        values = values[4 + len(features) :]
        effective = None
        if limit.max_cost_nanos is not None:
            effective = limit.max_cost_nanos + carried
        windows.append(
            WindowStatus(
                window=limit.window,
                kind=limit.kind,
                used=from_nanos(used),
                held=from_nanos(held),
                limit=None if effective is None else from_nanos(effective),
                remaining=(
                    None if effective is None else from_nanos(max(0, effective - used - held))
                ),
                carried=from_nanos(carried),
                requests=requests,
                max_requests=limit.max_requests,
                resets_at=_utc(resets),
                scope=scope,
                features={
                    name: from_nanos(int(v))
                    for name, v in zip(features, per_feature, strict=True)
                    if v != "-"
                },
            )
        )
    return tuple(windows), values


def status_reply(
    reply: list[str],
    *,
    tenant: str,
    plan: CompiledPlan,
    pool_plan: CompiledPlan,
    in_pool: bool,
    pool: str | None,
    killed_globally: bool,
) -> TenantStatus:
    """A status reply as the tenant's ``TenantStatus``."""
    held, pool_held = int(reply[5]), int(reply[9])
    names = [name for name, _ in plan.feature_ppm]
    rest = reply[10:]
    windows, rest = _windows(plan.plan, rest, held, "tenant", names)
    pool_windows: tuple[WindowStatus, ...] = ()
    if in_pool:
        pool_windows, rest = _windows(pool_plan.plan, rest, pool_held, "pool", [])
    return TenantStatus(
        tenant_id=tenant,
        plan=reply[3],
        killed=reply[4] == "1" or killed_globally,
        killed_features=tuple(decode_id(f) for f in reply[7].split(",") if f),
        held=from_nanos(held),
        open_holds=int(reply[6]),
        windows=windows,
        pool=pool,
        pool_plan=(reply[8] or None) if in_pool else None,
        pool_windows=pool_windows,
    )


def usage_days(
    reply: list[str], tenant: str, pool: str | None, first: int, last: int
) -> list[DailyUsage]:
    """A usage reply's days ``first..last`` (day numbers, inclusive), sorted."""
    return parse_days(reply[3:], tenant, pool, first, last)
