"""Script replies as the library's values: alerts, refusals, a tenant's status, daily usage.

Each script's reply decoded into typed parts (``ReserveReply``, ``CommitReply``, ...), and those
parts turned into the objects users see. ``store/codecs.py`` re-exports them beside the calls.
"""

from __future__ import annotations

from dataclasses import dataclass
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

__all__ = [
    "CommitReply",
    "Correction",
    "ReleaseReply",
    "ReserveReply",
    "alerts",
    "approval_state",
    "commit_reply",
    "correction",
    "move_dump",
    "moved_to",
    "refusal",
    "release_reply",
    "reserve_reply",
    "split",
    "status_reply",
    "usage_days",
]


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


# -- each script's reply, decoded ----------------------------------------------------------------


def split(reply: list[str]) -> tuple[str, list[str], list[str]]:
    """A script reply as (kind, alert strings, details)."""
    count = int(reply[1])
    return reply[0], reply[2 : 2 + count], reply[2 + count :]


@dataclass(frozen=True, slots=True)
class Correction:
    """A reply that sends the caller elsewhere: ``moved`` (``value``: where the tenant, or for
    a record a hold's forwarding stub, lives now) or ``plan`` / ``pool_plan`` (``value``: the
    stored plan the caller should have assumed)."""

    kind: str
    value: str
    for_record: bool


def correction(reply: list[str]) -> Correction | None:
    """The correction a reply asks for, else None."""
    kind = reply[0]
    if kind not in ("moved", "plan", "pool_plan"):
        return None
    return Correction(kind, reply[2], reply[3:4] == ["record"])


@dataclass(frozen=True, slots=True)
class ReserveReply:
    """A reserve reply. ``kind``: ``ok`` (held), ``killed`` (``scope``: tenant or feature),
    ``duplicate`` (the id was settled), or a refusal (``requests``, ``holds``, ``budget``:
    ``refusal`` holds its details, kind first). An ``ok`` reply has the candidate ``index``
    (from 0), ``amount_nanos``, the lease's ``expires_ms``, whether it repeats a hold made with
    the same id (``existing``), and in shadow mode the refusal it would have been (``refusal``).
    """

    kind: str
    alerts: list[str]
    index: int = -1
    amount_nanos: int = 0
    expires_ms: int = 0
    existing: bool = False
    refusal: list[str] | None = None
    scope: str = ""


def reserve_reply(reply: list[str]) -> ReserveReply:
    """Decode a reserve reply (see reserve.lua)."""
    kind, raw_alerts, details = split(reply)
    if kind == "ok":
        return ReserveReply(
            kind,
            raw_alerts,
            index=int(details[0]) - 1,
            amount_nanos=int(details[1]),
            expires_ms=int(details[2]),
            existing=details[3] == "existing",
            refusal=details[4:] if len(details) > 4 else None,
        )
    if kind in ("killed", "duplicate"):
        return ReserveReply(kind, raw_alerts, scope=details[0])
    return ReserveReply(kind, raw_alerts, refusal=[kind, *details])


@dataclass(frozen=True, slots=True)
class CommitReply:
    """A commit reply: ``charged_nanos`` (for a duplicate, what the first commit charged),
    ``late`` (the hold had run out or was unknown), ``released_nanos`` (the hold dropped)."""

    duplicate: bool
    alerts: list[str]
    charged_nanos: int
    late: bool
    released_nanos: int


def commit_reply(reply: list[str]) -> CommitReply:
    """Decode a committed or duplicate commit reply (see commit.lua)."""
    kind, raw_alerts, details = split(reply)
    if kind == "duplicate":
        return CommitReply(True, raw_alerts, int(details[1]), False, 0)
    return CommitReply(False, raw_alerts, int(details[0]), details[1] == "late", int(details[2]))


@dataclass(frozen=True, slots=True)
class ReleaseReply:
    """A release reply: whether it dropped a hold (else the id was settled or unknown), the
    amount dropped, and the state of an id it did not drop."""

    released: bool
    amount_nanos: int
    state: str


def release_reply(reply: list[str]) -> ReleaseReply:
    """Decode a released or noop release reply (see release.lua)."""
    if reply[0] == "released":
        return ReleaseReply(True, int(reply[2]), "")
    return ReleaseReply(False, 0, reply[2])


def approval_state(reply: list[str]) -> str | None:
    """The state an approval was in when the script acted on it (None: not found/expired)."""
    return reply[2] if reply[0] == "done" else None


def moved_to(reply: list[str]) -> str | None:
    """Where an ``out`` move step found the tenant had already moved, else None."""
    return reply[2] if reply[0] == "moved" else None


def move_dump(reply: list[str]) -> list[str]:
    """The tenant's state an ``out`` move step took, for the ``in`` step."""
    return reply[2:]
