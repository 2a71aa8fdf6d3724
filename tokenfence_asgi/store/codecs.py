"""One codec per Lua script: the KEYS and ARGV a call sends, and what its reply means.

Each script's slots are declared once (``RESERVE``, ``COMMIT``, ...: a ``Codec`` naming its KEYS
and ARGV in order) and a test checks them against the header of its ``store/lua/<script>.lua``,
so a slot added on one side only fails a test instead of shifting every argument after it.
Each ``<script>_call`` fills the slots by name and returns ``(keys, args)``. The decoders read
the replies into typed values (``ReserveReply``, ``CommitReply``, ...) and turn their parts into
alerts, errors and statuses; they live in ``store/replies.py`` and are re-exported here. The
client turns a reply into a flat list of ``str`` (``scripts.decode``); every reply starts with
its kind; scripts that may raise alerts reply ``{kind, number of alerts A, A alert strings,
details...}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenfence_asgi._text import replace_control
from tokenfence_asgi.errors import InvalidAmount
from tokenfence_asgi.money import MAX_CALL_NANOS
from tokenfence_asgi.store.keys import OWN, TenantKeys
from tokenfence_asgi.store.replies import (
    CommitReply,
    Correction,
    ReleaseReply,
    ReserveReply,
    alerts,
    approval_state,
    commit_reply,
    correction,
    move_dump,
    moved_to,
    refusal,
    release_reply,
    reserve_reply,
    split,
    status_reply,
    usage_days,
)
from tokenfence_asgi.store.specs import NO_LIMITS, CompiledPlan

__all__ = [
    "ADMIN",
    "APPROVAL",
    "CODECS",
    "COMMIT",
    "MOVE",
    "RELEASE",
    "RESERVE",
    "STATUS",
    "USAGE",
    "Call",
    "Codec",
    "CommitReply",
    "Correction",
    "ReleaseReply",
    "ReserveReply",
    "admin_other_call",
    "admin_tenant_call",
    "alerts",
    "approval_call",
    "approval_state",
    "candidate_amounts",
    "commit_call",
    "commit_reply",
    "correction",
    "label",
    "limit_specs",
    "location_arg",
    "move_call",
    "move_dump",
    "moved_to",
    "ping_call",
    "refusal",
    "release_call",
    "release_reply",
    "reserve_call",
    "reserve_reply",
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


# -- slots: the KEYS and ARGV each script's header declares ---------------------------------------


@dataclass(frozen=True, slots=True)
class Codec:
    """The named slots of one script, as its ``.lua`` header lists them (a test checks).

    ``keys`` and ``argv`` are slot names in order; a key name ending in ``?`` is present only
    sometimes (the pool's state off a pool), an ARGV name ending in ``...`` takes the rest.
    """

    script: str
    keys: tuple[str, ...]
    argv: tuple[str, ...]

    def args(self, tail: Sequence[str] = (), /, **values: str) -> list[str]:
        """ARGV in slot order from one value per named slot (and the ``...`` slot's items)."""
        names = self.argv[:-1] if self.argv[-1].endswith("...") else self.argv
        if len(values) != len(names):
            extra = sorted(set(values) - set(names))
            missing = [name for name in names if name not in values]
            raise TypeError(f"{self.script}: slots {missing} missing, {extra} not in the script")
        out = [values[name] for name in names]
        out.extend(tail)
        return out


_TENANT_KEYS = ("state", "record", "holds", "pool_state?")

RESERVE = Codec(
    "reserve",
    _TENANT_KEYS,
    (
        "now_ms",
        "plan",
        "tenant",
        "reservation",
        "feature",
        "pool",
        "pool_plan",
        "enforce",
        "candidates...",
    ),
)
COMMIT = Codec(
    "commit",
    _TENANT_KEYS,
    (
        "now_ms",
        "tenant",
        "reservation",
        "cost",
        "feature",
        "input_tokens",
        "output_tokens",
        "pool",
        "follow_stubs",
        "plan",
        "pool_plan",
        "model",
        "model_used",
        "request_id",
    ),
)
RELEASE = Codec(
    "release",
    _TENANT_KEYS,
    (
        "now_ms",
        "tenant",
        "reservation",
        "record_ttl_s",
        "reclaim",
        "pool",
        "follow_stubs",
        "default_plan",
        "usage_days",
    ),
)
STATUS = Codec(
    "status",
    ("state", "holds", "pool_state?"),
    (
        "now_ms",
        "default_plan",
        "reclaim",
        "record_ttl_s",
        "pool",
        "plan",
        "pool_plan",
        "specs...",
    ),
)
ADMIN = Codec("admin", ("state",), ("op", "value", "target", "pool"))
MOVE = Codec(
    "move",
    ("state", "holds", "pool_state?"),
    ("step", "tenant", "other", "move_id", "here", "extra..."),
)
APPROVAL = Codec("approval", ("approval",), ("op", "operands..."))
USAGE = Codec("usage", ("state", "days"), ("pool",))

CODECS = {
    codec.script: codec
    for codec in (RESERVE, COMMIT, RELEASE, STATUS, ADMIN, MOVE, APPROVAL, USAGE)
}
"""Every script's codec by script name."""


# -- calls: KEYS and ARGV of each script -------------------------------------------------------


def reserve_call(
    keys: TenantKeys,
    *,
    now: str,
    plan: str,
    tenant: str,
    reservation: str,
    feature: str,
    location: str,
    pool_plan: str,
    enforce: bool,
    amounts: Sequence[str],
    count_refusal: bool = True,
) -> Call:
    """reserve.lua (compiled with the fence's plans): hold the first candidate amount that fits
    (ids encoded). ``count_refusal=False``: a budget or open-holds refusal is not counted in
    the daily usage (the caller tries once more, and that try counts)."""
    return keys.with_pool([keys.state, keys.record(reservation), keys.holds]), RESERVE.args(
        [str(len(amounts)), *amounts],
        now_ms=now,
        plan=plan,
        tenant=tenant,
        reservation=reservation,
        feature=feature,
        pool=location_arg(location),
        pool_plan=pool_plan if keys.pool_state else "",
        enforce=("1" if count_refusal else "2") if enforce else "0",
    )


def commit_call(
    keys: TenantKeys,
    *,
    now: str,
    tenant: str,
    reservation: str,
    cost_nanos: int,
    feature: str,
    input_tokens: int,
    output_tokens: int,
    location: str,
    follow_stubs: str,
    plan: str,
    pool_plan: str,
    model_requested: str,
    model_used: str,
    request_id: str,
) -> Call:
    """commit.lua (compiled with the fence's plans): replace a hold with the actual cost (ids
    encoded)."""
    return keys.with_pool([keys.state, keys.record(reservation), keys.holds]), COMMIT.args(
        now_ms=now,
        tenant=tenant,
        reservation=reservation,
        cost=str(cost_nanos),
        feature=feature,
        input_tokens=str(input_tokens),
        output_tokens=str(output_tokens),
        pool=location_arg(location),
        follow_stubs=follow_stubs,
        plan=plan,
        pool_plan=pool_plan if keys.pool_state else "",
        model=model_requested,
        model_used=model_used,
        request_id=request_id,
    )


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
    return keys.with_pool([keys.state, keys.record(reservation), keys.holds]), RELEASE.args(
        now_ms=now,
        tenant=tenant,
        reservation=reservation,
        record_ttl_s=record_ttl,
        reclaim=reclaim,
        pool=location_arg(location),
        follow_stubs=follow_stubs,
        default_plan=default_plan,
        usage_days=usage_days,
    )


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
    return keys.with_pool([keys.state, keys.holds]), STATUS.args(
        specs,
        now_ms=now,
        default_plan=default_plan,
        reclaim=reclaim,
        record_ttl_s=record_ttl,
        pool=location_arg(location),
        plan=plan,
        pool_plan=pool_plan if keys.pool_state else "",
    )


def ping_call(keys: TenantKeys, *, now: str, default_plan: str) -> Call:
    """status.lua on a key no tenant has: the readiness probe."""
    return [keys.state, keys.holds], STATUS.args(
        ["0", "0", "0"],
        now_ms=now,
        default_plan=default_plan,
        reclaim="1",
        record_ttl_s="1",
        pool="",
        plan=default_plan,
        pool_plan="",
    )


def admin_tenant_call(keys: TenantKeys, op: str, arg: str, location: str) -> Call:
    """admin.lua on a tenant's state where it lives (``set_plan``, ``kill``, ``revive``)."""
    return [keys.state], ADMIN.args(op=op, value=arg, target="tenant", pool=location_arg(location))


def admin_other_call(key: str, op: str, arg: str) -> Call:
    """admin.lua on a pool's state or the global switches."""
    return [key], ADMIN.args(op=op, value=arg, target="other", pool="")


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
    return keys.with_pool([keys.state, keys.holds]), MOVE.args(
        extra, step=step, tenant=tenant, other=other, move_id=move_id, here=here
    )


def approval_call(key: str, op: str, *args: str) -> Call:
    """approval.lua: ``create`` (action, ttl s), ``consume`` (action) or ``decide`` (state)."""
    return [key], APPROVAL.args(args, op=op)


def usage_call(keys: TenantKeys, location: str) -> Call:
    """usage.lua: a tenant's daily usage hash where it lives."""
    return [keys.state, keys.base + "d"], USAGE.args(pool=location_arg(location))
