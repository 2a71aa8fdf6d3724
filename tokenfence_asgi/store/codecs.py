"""One codec per Lua script: the KEYS and ARGV a call sends, and what its reply means.

Each ``<script>_call`` returns ``(keys, args)`` in the order the script's header lists them
(``store/lua/<script>.lua``); the decoders below read the replies back into values and errors.
The client turns a reply into a flat list of ``str`` (``scripts.decode``); every reply starts
with its kind; scripts that may raise alerts reply
``{kind, number of alerts A, A alert strings, details...}`` (see ``split``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

from tokenfence_asgi._text import replace_control
from tokenfence_asgi.config import Plan
from tokenfence_asgi.errors import (
    BudgetExceeded,
    InvalidAmount,
    Refused,
    RequestLimitExceeded,
    TooManyOpenHolds,
)
from tokenfence_asgi.money import MAX_CALL_NANOS, from_nanos
from tokenfence_asgi.results import Alert, DailyUsage, TenantStatus, WindowStatus
from tokenfence_asgi.store.keys import OWN, TenantKeys, decode_id
from tokenfence_asgi.store.ledger import parse_days
from tokenfence_asgi.store.specs import NO_LIMITS, CompiledPlan

__all__ = [
    "Call",
    "admin_other_call",
    "admin_tenant_call",
    "alerts",
    "approval_call",
    "approval_state",
    "candidate_amounts",
    "commit_call",
    "commit_charged",
    "correction",
    "label",
    "limit_specs",
    "location_arg",
    "move_call",
    "move_dump",
    "moved_to",
    "ping_call",
    "plan_args",
    "refusal",
    "release_call",
    "released",
    "reserve_call",
    "reserve_existing",
    "reserve_held",
    "reserve_shadow",
    "split",
    "status_call",
    "status_reply",
    "usage_call",
    "usage_days",
]

Call = tuple[list[str], list[str]]
"""A script call's KEYS and ARGV."""

MAX_LABEL = 200  # characters kept of a model name in the ledger


# -- argument pieces shared by several scripts ------------------------------------------------


def location_arg(location: str) -> str:
    """The location a caller assumed, as a script argument ('' for the tenant's own tag)."""
    return location if location != OWN else ""


def limit_specs(plan: CompiledPlan, pool_plan: CompiledPlan, in_pool: bool) -> list[str]:
    """Feature arguments, then the tenant's and the pool's limit specs."""
    pool = pool_plan.limit_args if in_pool else NO_LIMITS.limit_args
    return [*plan.feature_args, *plan.limit_args, *pool]


def plan_args(plan: str, default_plan: str, pool_plan: str, in_pool: bool) -> list[str]:
    """The plan names the scripts check: tenant's, default, pool's ('' off a pool)."""
    return [plan, default_plan, pool_plan if in_pool else ""]


def candidate_amounts(candidates: Sequence[tuple[str | None, int]]) -> list[str]:
    """The candidates' amounts as script arguments, validated like any amount."""
    if not candidates:
        raise ValueError("reserve_first needs at least one candidate")
    amounts = []
    for _, nanos in candidates:
        if isinstance(nanos, bool) or not isinstance(nanos, int):
            raise InvalidAmount(f"candidate amounts must be int nano-dollars, got {nanos!r}")
        if not 0 <= nanos <= MAX_CALL_NANOS:
            raise InvalidAmount(f"candidate amount must be in [0, {MAX_CALL_NANOS}], got {nanos!r}")
        amounts.append(str(nanos))
    return amounts


def label(value: object, what: str) -> str:
    """An optional ledger label (model, request id) as a script argument ('' for None).

    A label never fails a commit (the charge matters more): it is cut to 200 characters and
    control characters become U+FFFD. Only a non-string is refused (a programming error).
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string or None, got {type(value).__name__}")
    text = value[:MAX_LABEL]
    if not text.isprintable():
        text = replace_control(text)
    return text


# -- calls: KEYS and ARGV of each script -------------------------------------------------------


def reserve_call(
    keys: TenantKeys,
    *,
    now: str,
    plan: str,
    default_plan: str,
    tenant: str,
    reservation: str,
    feature: str,
    hold_ms: str,
    reclaim: str,
    record_ttl: str,
    location: str,
    pool_plan: str,
    enforce: bool,
    mode: str,
    usage_days: str,
    max_open_holds: str,
    specs: Sequence[str],
    amounts: Sequence[str],
) -> Call:
    """reserve.lua: hold the first candidate amount that fits (ids encoded)."""
    return keys.with_pool([keys.state, keys.record(reservation), keys.holds]), [
        now,
        plan,
        default_plan,
        tenant,
        reservation,
        feature,
        hold_ms,
        reclaim,
        record_ttl,
        location_arg(location),
        pool_plan if keys.pool_state else "",
        "1" if enforce else "0",
        mode,
        usage_days,
        max_open_holds,
        *specs,
        str(len(amounts)),
        *amounts,
    ]


def commit_call(
    keys: TenantKeys,
    *,
    now: str,
    tenant: str,
    reservation: str,
    cost_nanos: int,
    record_ttl: str,
    reclaim: str,
    feature: str,
    input_tokens: int,
    output_tokens: int,
    location: str,
    follow_stubs: str,
    plans: Sequence[str],
    model_requested: str,
    model_used: str,
    request_id: str,
    ledger_maxlen: str,
    ledger_retention: str,
    usage_days: str,
    specs: Sequence[str],
) -> Call:
    """commit.lua: replace a hold with the actual cost (ids encoded; ``plans``: plan_args)."""
    return keys.with_pool([keys.state, keys.record(reservation), keys.holds]), [
        now,
        tenant,
        reservation,
        str(cost_nanos),
        record_ttl,
        reclaim,
        feature,
        str(input_tokens),
        str(output_tokens),
        location_arg(location),
        follow_stubs,
        *plans,
        model_requested,
        model_used,
        request_id,
        ledger_maxlen,
        ledger_retention,
        usage_days,
        *specs,
    ]


def release_call(
    keys: TenantKeys,
    *,
    now: str,
    tenant: str,
    reservation: str,
    record_ttl: str,
    reclaim: str,
    location: str,
    follow_stubs: str,
    default_plan: str,
    usage_days: str,
) -> Call:
    """release.lua: drop a hold without charging (ids encoded)."""
    return keys.with_pool([keys.state, keys.record(reservation), keys.holds]), [
        now,
        tenant,
        reservation,
        record_ttl,
        reclaim,
        location_arg(location),
        follow_stubs,
        default_plan,
        usage_days,
    ]


def status_call(
    keys: TenantKeys,
    *,
    now: str,
    default_plan: str,
    reclaim: str,
    record_ttl: str,
    location: str,
    plan: str,
    pool_plan: str,
    specs: Sequence[str],
) -> Call:
    """status.lua: a tenant's plan, switches, holds and the counters of every window."""
    return keys.with_pool([keys.state, keys.holds]), [
        now,
        default_plan,
        reclaim,
        record_ttl,
        location_arg(location),
        plan,
        pool_plan if keys.pool_state else "",
        *specs,
    ]


def ping_call(keys: TenantKeys, *, now: str, default_plan: str) -> Call:
    """status.lua on a key no tenant has: the readiness probe."""
    args = [now, default_plan, "1", "1", "", default_plan, "", "0", "0", "0"]
    return [keys.state, keys.holds], args


def admin_tenant_call(keys: TenantKeys, op: str, arg: str, location: str) -> Call:
    """admin.lua on a tenant's state where it lives (``set_plan``, ``kill``, ``revive``)."""
    return [keys.state], [op, arg, "tenant", location_arg(location)]


def admin_other_call(key: str, op: str, arg: str) -> Call:
    """admin.lua on a pool's state or the global switches."""
    return [key], [op, arg, "other", ""]


def move_call(
    keys: TenantKeys,
    step: str,
    tenant: str,
    other: str,
    move_id: str,
    here: str,
    extra: Sequence[str] = (),
) -> Call:
    """move.lua: one step (begin, out, in, point, drop, end) of a move between locations."""
    return keys.with_pool([keys.state, keys.holds]), [step, tenant, other, move_id, here, *extra]


def approval_call(key: str, op: str, *args: str) -> Call:
    """approval.lua: ``create`` (action, ttl s), ``consume`` (action) or ``decide`` (state)."""
    return [key], [op, *args]


def usage_call(keys: TenantKeys, location: str) -> Call:
    """usage.lua: a tenant's daily usage hash where it lives."""
    return [keys.state, keys.base + "d"], [location_arg(location)]


# -- replies -------------------------------------------------------------------------------------


def split(reply: list[str]) -> tuple[str, list[str], list[str]]:
    """A script reply as (kind, alert strings, details)."""
    count = int(reply[1])
    return reply[0], reply[2 : 2 + count], reply[2 + count :]


def correction(reply: list[str]) -> tuple[str, str, bool] | None:
    """A reply that sends the caller elsewhere as (kind, value, for a record), else None.

    ``moved``: where the tenant (or, for a record, a hold's forwarding stub) lives now;
    ``plan`` / ``pool_plan``: the stored plan the caller should have assumed.
    """
    kind = reply[0]
    if kind not in ("moved", "plan", "pool_plan"):
        return None
    return kind, reply[2], reply[3:4] == ["record"]


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


def reserve_existing(details: list[str]) -> bool:
    """Whether an ``ok`` reserve reply repeats a hold already made with the same id."""
    return details[3] == "existing"


def reserve_held(details: list[str]) -> tuple[int, int, int]:
    """An ``ok`` reserve reply as (candidate index from 0, amount nanos, lease expiry ms)."""
    return int(details[0]) - 1, int(details[1]), int(details[2])


def reserve_shadow(details: list[str]) -> list[str] | None:
    """The refusal details a shadow-mode ``ok`` reserve reply carries, if any."""
    return details[4:] if len(details) > 4 else None


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


def commit_charged(kind: str, details: list[str]) -> tuple[int, bool]:
    """A commit reply as (nanos charged, late); a duplicate gives what the first one charged."""
    if kind == "duplicate":
        return int(details[1]), False
    return int(details[0]), details[1] == "late"


def released(reply: list[str]) -> bool:
    """Whether a release reply dropped a hold (else the id was settled or unknown)."""
    return reply[0] == "released"


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


def approval_state(reply: list[str]) -> str | None:
    """The state an approval was in when the script acted on it (None: not found/expired)."""
    return reply[2] if reply[0] == "done" else None


def moved_to(reply: list[str]) -> str | None:
    """Where an ``out`` move step found the tenant had already moved, else None."""
    return reply[2] if reply[0] == "moved" else None


def move_dump(reply: list[str]) -> list[str]:
    """The tenant's state an ``out`` move step took, for the ``in`` step."""
    return reply[2:]
