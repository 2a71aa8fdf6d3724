"""What the engine returns: reservations, settlements, status, alerts, counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from tokenfence_asgi.errors import Refused

__all__ = [
    "Alert",
    "DailyUsage",
    "FenceCounters",
    "Reservation",
    "Settlement",
    "TenantStatus",
    "UsageRecord",
    "WindowStatus",
]


@dataclass(frozen=True, slots=True)
class Reservation:
    """A hold on a tenant's budget, to be settled by ``commit`` or ``release``.

    ``amount`` is the dollars held; ``expires_at`` is when the lease runs out and the hold is
    reclaimed. ``pool`` is the tenant's pool when it had one. ``degraded`` is true when the store
    was unreachable and ``on_store_error="open"`` let the call through without a hold;
    ``shadow_refusal`` is the refusal a plan in shadow mode (``enforce=False``) did not raise.
    """

    id: str
    tenant_id: str
    feature: str | None
    model: str | None
    amount: Decimal
    amount_nanos: int
    plan: str
    pool: str | None = None
    expires_at: datetime | None = None
    degraded: bool = False
    shadow_refusal: Refused | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Settlement:
    """What a ``commit`` or ``release`` did.

    ``cost`` is what the commit charged (zero for a release); a repeat (``duplicate``) changes
    nothing and reports what the first commit charged, so a retried call learns it was charged.
    ``late`` marks a commit whose hold had already expired;
    ``recorded`` is false when the store was unreachable and ``on_store_error="open"``.
    """

    reservation_id: str
    cost: Decimal
    late: bool = False
    duplicate: bool = False
    recorded: bool = True


@dataclass(frozen=True, slots=True)
class WindowStatus:
    """One limit's window: committed spend, open holds, the limit and what remains.

    ``scope`` is ``"tenant"`` or ``"pool"``. ``limit`` includes ``carried`` (rollover from the
    previous period); ``remaining`` is ``limit - used - held``, never below zero. ``features``
    is the spend of each feature listed in the plan (calendar limits). Money is ``Decimal``.
    """

    window: str
    kind: str
    used: Decimal
    held: Decimal
    limit: Decimal | None
    remaining: Decimal | None
    carried: Decimal
    requests: int
    max_requests: int | None
    resets_at: datetime
    scope: str = "tenant"
    features: dict[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TenantStatus:
    """A tenant's plan, pool, kill switches, open holds and windows (its own and its pool's)."""

    tenant_id: str
    plan: str
    killed: bool
    killed_features: tuple[str, ...]
    held: Decimal
    open_holds: int
    windows: tuple[WindowStatus, ...]
    pool: str | None = None
    pool_plan: str | None = None
    pool_windows: tuple[WindowStatus, ...] = ()


@dataclass(frozen=True, slots=True)
class Alert:
    """A limit crossed 50%, 80% or 100% (reported once per window and threshold).

    ``metric`` is ``"cost"`` (``used`` and ``limit`` in ``Decimal`` dollars) or ``"requests"``
    (counts). ``scope`` is ``"tenant"`` or ``"pool"``; ``pool`` names the pool.
    ``reservation_id`` is the call that raised it. ``repeated`` is true when a repeat of that
    call (same reservation id: a retried reserve, a second commit) reports it again: the first
    report may have been lost with its reply. A hook that must act once dedupes on
    ``(reservation_id, scope, window, metric, threshold)``.
    """

    tenant_id: str
    feature: str | None
    scope: str
    pool: str | None
    window: str
    metric: str
    threshold: int
    used: Decimal
    limit: Decimal
    reservation_id: str | None = None
    repeated: bool = False


@dataclass(slots=True)
class FenceCounters:
    """Counts since the fence was created: store trouble, shadow refusals, alert delivery."""

    store_errors: int = 0
    allowed_without_store: int = 0
    outage_allowance_refusals: int = 0
    written_back: int = 0
    shadow_refusals: int = 0
    alerts: int = 0
    alert_hook_errors: int = 0
    charged_unfenced: int = 0
    """Calls charged after the fact, with no hold before them (sync LiteLLM calls)."""
    released_after_cancel: int = 0
    """Holds released because their caller was cancelled while the reserve was in flight."""


@dataclass(frozen=True, slots=True)
class DailyUsage:
    """One tenant's usage on one UTC day, from the counters the scripts keep in Redis.

    ``cost`` (``Decimal`` dollars, exactly ``cost_nanos``) and ``requests`` count the commits
    that charged; ``refusals`` the reserves refused by a budget or request limit; ``releases``
    the holds released without charge. ``plan`` is the tenant's plan at the day's last event;
    ``limit`` the effective "1d" cost limit of that plan at the last commit or refusal (with
    rollover), None when the plan has none. ``pool`` is where the tenant was when read.
    """

    day: date
    tenant_id: str
    plan: str
    cost: Decimal
    cost_nanos: int
    requests: int
    refusals: int
    limit: Decimal | None
    releases: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    pool: str | None = None


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One committed call, as written to the usage ledger by the commit that charged it.

    ``id`` is the reservation id; ``model_requested`` the reservation's model, ``model`` the
    one actually used (the same unless the commit said otherwise). ``timestamp`` is the
    commit's time (the store's clock, or the injected one). ``late`` marks a commit after its
    hold's lease ran out, or for an id the store no longer knew. ``stream`` and ``entry_id``
    locate the entry in Redis (the exporter's checkpoint); ``pool`` is the pool the tenant was
    in, None on its own.
    """

    id: str
    tenant_id: str
    feature: str | None
    pool: str | None
    model_requested: str | None
    model: str | None
    input_tokens: int
    output_tokens: int
    cost: Decimal
    cost_nanos: int
    timestamp: datetime
    request_id: str | None
    late: bool
    stream: str
    entry_id: str
