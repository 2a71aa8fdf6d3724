"""``TokenFence``: reserve, commit, release, status, plans and kill switches, in Python terms.

Every check-and-update runs as one Lua script in the store (see ``lua/``): one round trip per
reserve and per commit. Money crosses this API as ``Decimal`` dollars and is integer nano-dollars
below it; time is the store's clock (Redis TIME) unless a ``clock`` is injected.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Literal

import structlog
from redis.asyncio import Redis, RedisCluster

from tokenfence_asgi.config import BUILTIN_PLANS, Plan
from tokenfence_asgi.errors import (
    BudgetExceeded,
    ConfigError,
    InvalidAmount,
    InvalidId,
    RequestLimitExceeded,
    StoreUnavailable,
    TenantDisabled,
    UnknownPlan,
)
from tokenfence_asgi.keys import KeySpace, TenantKeys, decode_id, encode_id, validate_id
from tokenfence_asgi.money import MAX_CALL_NANOS, MoneyInput, from_nanos, to_nanos
from tokenfence_asgi.store import Store

__all__ = [
    "FenceCounters",
    "Reservation",
    "Settlement",
    "TenantStatus",
    "TokenFence",
    "WindowStatus",
]

log = structlog.get_logger("tokenfence_asgi")

Clock = Callable[[], float]
OnStoreError = Literal["closed", "open"]
_MAX_TOKENS = 10**12
_PLAN_RETRIES = 2


@dataclass(frozen=True, slots=True)
class Reservation:
    """A hold on a tenant's budget, to be settled by ``commit`` or ``release``.

    ``amount`` is the dollars held; ``expires_at`` is when the lease runs out and the hold is
    reclaimed. ``degraded`` is true when the store was unreachable and ``on_store_error="open"``
    let the call through without a hold.
    """

    id: str
    tenant_id: str
    feature: str | None
    model: str | None
    amount: Decimal
    amount_nanos: int
    plan: str
    windows: tuple[str, ...]
    expires_at: datetime | None
    degraded: bool = False


@dataclass(frozen=True, slots=True)
class Settlement:
    """What a ``commit`` or ``release`` did.

    ``cost`` is what this call charged (zero for a release or a repeat); ``late`` marks a commit
    whose hold had already expired; ``duplicate`` marks a repeat that changed nothing;
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

    ``limit`` includes ``carried`` (rollover from the previous period); ``remaining`` is
    ``limit - used - held``, never below zero. Money is ``Decimal`` dollars.
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


@dataclass(frozen=True, slots=True)
class TenantStatus:
    """A tenant's plan, kill switches, open holds and windows."""

    tenant_id: str
    plan: str
    killed: bool
    killed_features: tuple[str, ...]
    held: Decimal
    open_holds: int
    windows: tuple[WindowStatus, ...]


@dataclass(slots=True)
class FenceCounters:
    """Counts of store trouble since the fence was created."""

    store_errors: int = 0
    allowed_without_store: int = 0


@dataclass(frozen=True, slots=True)
class _CompiledPlan:
    """What the scripts need of a plan, as argument strings built once."""

    plan: Plan
    limit_args: tuple[str, ...]
    windows: tuple[str, ...]


def _compile(plan: Plan) -> _CompiledPlan:
    args: list[str] = [str(len(plan.limits))]
    for limit in plan.limits:
        if limit.kind != "calendar":
            raise ConfigError(
                f"plan {plan.name!r}: Limit({limit.window!r}, kind={limit.kind!r}) is not"
                " supported by this engine: use kind='calendar'"
            )
        cap = 0
        if limit.max_cost_nanos is not None and limit.rollover:
            cap = int(
                (Decimal(limit.max_cost_nanos) * Decimal(str(limit.rollover))).to_integral_value(
                    ROUND_FLOOR
                )
            )
        args += [
            limit.window,
            str(limit.max_cost_nanos if limit.max_cost_nanos is not None else -1),
            str(limit.max_requests if limit.max_requests is not None else -1),
            str(cap),
        ]
    if plan.features:
        raise ConfigError(
            f"plan {plan.name!r}: feature weights are not supported by this engine yet;"
            " leave Plan.features unset"
        )
    return _CompiledPlan(plan, tuple(args), tuple(limit.window for limit in plan.limits))


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _positive(name: str, value: object, *, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not (math.isfinite(value) and 0 < value <= maximum):
        raise ConfigError(f"{name} must be in (0, {maximum:g}] seconds, got {value!r}")
    return float(value)


def _tokens(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_TOKENS:
        raise ValueError(f"{name} must be an int in [0, {_MAX_TOKENS}], got {value!r}")
    return value


class TokenFence:
    """Per-tenant dollar budgets, enforced atomically in Redis.

    ``redis_url`` (or ``redis``, a ``redis.asyncio`` client you own) selects the store; with
    neither, an embedded in-process store runs the same scripts (single process only).
    ``plans`` defaults to the built-in free / starter / pro / enterprise plans; tenants without
    an assigned plan are on ``default_plan``. ``clock`` (epoch seconds) replaces the store's
    clock in tests and simulations. ``on_store_error="open"`` lets calls through (logged and
    counted) when the store is unreachable; the default refuses them with ``StoreUnavailable``.
    ``hold_ttl`` is the lease of a hold in seconds; ``record_ttl`` how long a settled
    reservation is remembered, so repeats are recognised.
    """

    def __init__(
        self,
        *,
        redis_url: str | None = None,
        redis: Redis | RedisCluster | None = None,
        plans: Sequence[Plan] | None = None,
        default_plan: str = "free",
        prefix: str = "tf",
        clock: Clock | None = None,
        on_store_error: OnStoreError = "closed",
        hold_ttl: float = 600,
        record_ttl: float = 86400,
        timeout_s: float = 0.5,
        reclaim_batch: int = 16,
        kill_cache_s: float = 1.0,
        plan_cache_size: int = 10_000,
    ) -> None:
        plan_list = tuple(BUILTIN_PLANS if plans is None else plans)
        compiled: dict[str, _CompiledPlan] = {}
        for plan in plan_list:
            if not isinstance(plan, Plan):
                raise ConfigError(f"plans must be Plan instances, got {type(plan).__name__}")
            if plan.name in compiled:
                raise ConfigError(f"plans: duplicate plan name {plan.name!r}")
            compiled[plan.name] = _compile(plan)
        if default_plan not in compiled:
            raise UnknownPlan(default_plan, tuple(compiled))
        if on_store_error not in ("closed", "open"):
            raise ConfigError(f"on_store_error must be 'closed' or 'open', got {on_store_error!r}")
        if clock is not None and not callable(clock):
            raise ConfigError("clock must be a callable returning epoch seconds")
        if isinstance(reclaim_batch, bool) or not isinstance(reclaim_batch, int):
            raise ConfigError(f"reclaim_batch must be an int, got {reclaim_batch!r}")
        if not 1 <= reclaim_batch <= 1000:
            raise ConfigError(f"reclaim_batch must be in [1, 1000], got {reclaim_batch!r}")
        if isinstance(plan_cache_size, bool) or not isinstance(plan_cache_size, int):
            raise ConfigError(f"plan_cache_size must be an int, got {plan_cache_size!r}")
        hold_s = _positive("hold_ttl", hold_ttl, maximum=7 * 86400)
        record_s = _positive("record_ttl", record_ttl, maximum=90 * 86400)
        self._kill_cache_s = (
            0.0 if kill_cache_s == 0 else _positive("kill_cache_s", kill_cache_s, maximum=60)
        )

        self._plans = compiled
        self._default_plan = default_plan
        self._keys = KeySpace(prefix)
        self._clock = clock
        self._on_store_error: OnStoreError = on_store_error
        self._hold_ms = str(max(1, round(hold_s * 1000)))
        self._record_ttl = str(max(1, math.ceil(record_s)))
        self._reclaim = str(reclaim_batch)
        self._plan_cache: OrderedDict[str, str] = OrderedDict()
        self._plan_cache_size = max(0, plan_cache_size)
        self._switches: frozenset[str] = frozenset()
        self._switches_read_at = -math.inf
        self._store = Store.connect(redis_url=redis_url, redis=redis, timeout_s=timeout_s)
        self.counters = FenceCounters()

    # -- plans ---------------------------------------------------------------------------

    @property
    def plans(self) -> dict[str, Plan]:
        """The configured plans by name."""
        return {name: compiled.plan for name, compiled in self._plans.items()}

    @property
    def default_plan(self) -> str:
        """The plan of tenants that have none assigned."""
        return self._default_plan

    def _compiled(self, name: str) -> _CompiledPlan:
        compiled = self._plans.get(name)
        if compiled is None:
            # A tenant assigned a plan that this instance's configuration no longer has:
            # enforce the default plan's limits rather than none.
            log.error("plan_not_configured", plan=name, using=self._default_plan)
            return self._plans[self._default_plan]
        return compiled

    def _cached_plan(self, tenant_enc: str) -> str:
        name = self._plan_cache.get(tenant_enc)
        if name is None:
            return self._default_plan
        self._plan_cache.move_to_end(tenant_enc)
        return name

    def _remember_plan(self, tenant_enc: str, name: str) -> None:
        if self._plan_cache_size == 0:
            return
        self._plan_cache[tenant_enc] = name
        self._plan_cache.move_to_end(tenant_enc)
        while len(self._plan_cache) > self._plan_cache_size:
            self._plan_cache.popitem(last=False)

    # -- helpers ---------------------------------------------------------------------------

    def _now_arg(self) -> str:
        if self._clock is None:
            return ""
        now = self._clock()
        if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
            raise ConfigError(f"clock() must return finite epoch seconds, got {now!r}")
        return str(int(now * 1000))

    def _tenant(self, tenant_id: object) -> tuple[str, str, TenantKeys]:
        tenant = validate_id(tenant_id, what="tenant_id")
        encoded = encode_id(tenant)
        return tenant, encoded, self._keys.tenant(encoded)

    async def _run(self, name: str, keys: list[str], args: list[str]) -> list[str]:
        try:
            return await self._store.run(name, keys, args)
        except StoreUnavailable:
            self.counters.store_errors += 1
            raise

    async def _global_switches(self) -> frozenset[str]:
        # The global switches live in another cluster slot than any tenant, so they cannot be
        # read inside the reserve script; a cache of at most kill_cache_s keeps the cost to
        # one read per instance per interval.
        now = time.monotonic()
        if now - self._switches_read_at >= self._kill_cache_s:
            try:
                fields = await self._store.hgetall(self._keys.global_switches)
            except StoreUnavailable:
                self.counters.store_errors += 1
                raise
            self._switches = frozenset(fields)
            self._switches_read_at = now
        return self._switches

    # -- reserve / commit / release --------------------------------------------------------

    async def reserve(
        self,
        tenant_id: str,
        amount: MoneyInput,
        *,
        feature: str | None = None,
        model: str | None = None,
        reservation_id: str | None = None,
    ) -> Reservation:
        """Hold ``amount`` dollars (the call's worst-case cost) on the tenant's budget.

        Checks every limit of the tenant's plan and the kill switches in one atomic step.
        Raises ``BudgetExceeded``, ``RequestLimitExceeded``, ``TenantDisabled``,
        ``StoreUnavailable`` (unless ``on_store_error="open"``), or ``InvalidAmount`` /
        ``InvalidId`` for bad input. A repeated ``reservation_id`` returns the same hold.
        """
        nanos = to_nanos(amount, rounding="up", field="amount")
        return await self.reserve_first(
            tenant_id,
            [(model, nanos)],
            feature=feature,
            reservation_id=reservation_id,
        )

    async def reserve_first(
        self,
        tenant_id: str,
        candidates: Sequence[tuple[str | None, int]],
        *,
        feature: str | None = None,
        reservation_id: str | None = None,
    ) -> Reservation:
        """Hold the first ``(model, amount_nanos)`` candidate that fits every limit.

        The building block of model downgrade: candidates are tried in order inside one
        atomic step. Raises as ``reserve`` does, for the last candidate when none fits.
        """
        tenant, tenant_enc, keys = self._tenant(tenant_id)
        feat = None if feature is None else validate_id(feature, what="feature")
        feat_enc = "" if feat is None else encode_id(feat)
        rid = uuid.uuid4().hex if reservation_id is None else reservation_id
        rid = validate_id(rid, what="reservation_id")
        rid_enc = encode_id(rid)
        if not candidates:
            raise ValueError("reserve_first needs at least one candidate")
        amounts = []
        for _, nanos in candidates:
            if isinstance(nanos, bool) or not isinstance(nanos, int):
                raise InvalidAmount(f"candidate amounts must be int nano-dollars, got {nanos!r}")
            if not 0 <= nanos <= MAX_CALL_NANOS:
                raise InvalidAmount(
                    f"candidate amount must be in [0, {MAX_CALL_NANOS}] nanos, got {nanos!r}"
                )
            amounts.append(str(nanos))

        try:
            switches = await self._global_switches()
            if "k" in switches:
                raise TenantDisabled(tenant_id=tenant, feature=feat, scope="global")
            if feat is not None and f"k:{feat_enc}" in switches:
                raise TenantDisabled(tenant_id=tenant, feature=feat, scope="global")
            compiled = self._compiled(self._cached_plan(tenant_enc))
            assumed = compiled.plan.name
            for _ in range(_PLAN_RETRIES + 1):
                reply = await self._run(
                    "reserve",
                    [keys.state, keys.holds, keys.record(rid_enc)],
                    [
                        self._now_arg(),
                        assumed,
                        self._default_plan,
                        rid_enc,
                        feat_enc,
                        self._hold_ms,
                        self._reclaim,
                        self._record_ttl,
                        *compiled.limit_args,
                        str(len(amounts)),
                        *amounts,
                    ],
                )
                if reply[0] != "plan":
                    break
                assumed = reply[1]
                self._remember_plan(tenant_enc, assumed)
                compiled = self._compiled(assumed)
            else:  # pragma: no cover - needs set_plan racing every retry
                raise StoreUnavailable("tenant plan kept changing during reserve")
        except StoreUnavailable:
            if self._on_store_error == "closed":
                raise
            self.counters.allowed_without_store += 1
            log.warning("reserve_allowed_without_store", tenant=tenant, feature=feat)
            model, nanos = candidates[0]
            return Reservation(
                rid, tenant, feat, model, from_nanos(nanos), nanos, self._default_plan,
                (), None, degraded=True,
            )  # fmt: skip

        self._remember_plan(tenant_enc, assumed)
        kind = reply[0]
        plan = compiled.plan
        if kind == "ok":
            index = int(reply[1]) - 1
            nanos = int(reply[2])
            return Reservation(
                id=rid,
                tenant_id=tenant,
                feature=feat,
                model=candidates[index][0],
                amount=from_nanos(nanos),
                amount_nanos=nanos,
                plan=plan.name,
                windows=compiled.windows,
                expires_at=datetime.fromtimestamp(int(reply[3]) / 1000, UTC),
            )
        if kind == "killed":
            log.info("reserve_refused", tenant=tenant, feature=feat, reason="killed")
            raise TenantDisabled(tenant_id=tenant, feature=feat, scope=reply[1])
        if kind == "requests":
            log.info("reserve_refused", tenant=tenant, feature=feat, reason="requests")
            raise RequestLimitExceeded(
                tenant_id=tenant,
                feature=feat,
                window=reply[1],
                requests=int(reply[2]),
                max_requests=int(reply[3]),
                resets_at=_utc(int(reply[4])),
                upgrade_url=plan.upgrade_url,
            )
        if kind == "budget":
            log.info(
                "reserve_refused", tenant=tenant, feature=feat, reason="budget", window=reply[1]
            )
            raise BudgetExceeded(
                tenant_id=tenant,
                feature=feat,
                window=reply[1],
                total_cost=from_nanos(int(reply[2])),
                held=from_nanos(int(reply[3])),
                max_cost=from_nanos(int(reply[4])),
                resets_at=_utc(int(reply[5])),
                requested=from_nanos(int(reply[6])),
                upgrade_url=plan.upgrade_url,
            )
        if kind == "duplicate":
            raise InvalidId(f"reservation_id {rid!r} was already used and settled")
        raise RuntimeError(f"unexpected reserve reply {reply!r}")  # pragma: no cover

    async def commit(
        self,
        reservation: Reservation,
        cost: MoneyInput,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> Settlement:
        """Replace the hold with the actual ``cost`` in dollars. Idempotent.

        A commit after the hold's lease ran out still charges the cost and is marked late.
        A cost above the hold is charged in full (providers may bill more than estimated).
        """
        if not isinstance(reservation, Reservation):
            raise TypeError(f"commit needs a Reservation, got {type(reservation).__name__}")
        nanos = to_nanos(cost, rounding="half_up", field="cost")
        _tokens("input_tokens", input_tokens)
        _tokens("output_tokens", output_tokens)
        _, tenant_enc, keys = self._tenant(reservation.tenant_id)
        rid_enc = encode_id(reservation.id)
        windows = reservation.windows or self._compiled(self._cached_plan(tenant_enc)).windows
        feat_enc = "" if reservation.feature is None else encode_id(reservation.feature)
        try:
            reply = await self._run(
                "commit",
                [keys.state, keys.holds, keys.record(rid_enc)],
                [
                    self._now_arg(),
                    rid_enc,
                    str(nanos),
                    self._record_ttl,
                    self._reclaim,
                    ",".join(windows),
                    feat_enc,
                    str(input_tokens),
                    str(output_tokens),
                ],
            )
        except StoreUnavailable:
            if self._on_store_error == "closed":
                raise
            log.warning(
                "commit_not_recorded", tenant=reservation.tenant_id, reservation=reservation.id
            )
            return Settlement(reservation.id, from_nanos(nanos), recorded=False)
        if reply[0] == "duplicate":
            log.info("commit_duplicate", tenant=reservation.tenant_id, reservation=reservation.id)
            return Settlement(reservation.id, Decimal(0), duplicate=True)
        late = reply[2] == "late"
        if late:
            log.warning(
                "commit_late", tenant=reservation.tenant_id, reservation=reservation.id,
                cost_nanos=nanos,
            )  # fmt: skip
        return Settlement(reservation.id, from_nanos(int(reply[1])), late=late)

    async def release(self, reservation: Reservation) -> Settlement:
        """Drop the hold without charging (the call failed before costing anything). Idempotent."""
        if not isinstance(reservation, Reservation):
            raise TypeError(f"release needs a Reservation, got {type(reservation).__name__}")
        if reservation.degraded:
            return Settlement(reservation.id, Decimal(0), recorded=False)
        _, _, keys = self._tenant(reservation.tenant_id)
        rid_enc = encode_id(reservation.id)
        try:
            reply = await self._run(
                "release",
                [keys.state, keys.holds, keys.record(rid_enc)],
                [self._now_arg(), rid_enc, self._record_ttl, self._reclaim],
            )
        except StoreUnavailable:
            if self._on_store_error == "closed":
                raise
            log.warning(
                "release_not_recorded", tenant=reservation.tenant_id, reservation=reservation.id
            )
            return Settlement(reservation.id, Decimal(0), recorded=False)
        return Settlement(reservation.id, Decimal(0), duplicate=reply[0] != "released")

    # -- status, plans, switches -----------------------------------------------------------

    async def status(self, tenant_id: str) -> TenantStatus:
        """The tenant's plan, kill switches, open holds and every window of its plan."""
        tenant, tenant_enc, keys = self._tenant(tenant_id)
        compiled = self._compiled(self._cached_plan(tenant_enc))
        for _ in range(_PLAN_RETRIES + 1):
            reply = await self._run(
                "status",
                [keys.state, keys.holds],
                [
                    self._now_arg(),
                    self._default_plan,
                    self._reclaim,
                    self._record_ttl,
                    str(len(compiled.windows)),
                    *compiled.windows,
                ],
            )
            stored = reply[1]
            if stored == compiled.plan.name or stored not in self._plans:
                break
            self._remember_plan(tenant_enc, stored)
            compiled = self._plans[stored]
        switches = await self._global_switches()
        held = int(reply[3])
        windows = []
        for n, limit in enumerate(compiled.plan.limits):
            used, requests, previous, start, end = (int(x) for x in reply[6 + 5 * n : 11 + 5 * n])
            del start
            carried = 0
            max_nanos = limit.max_cost_nanos
            if max_nanos is not None and limit.rollover:
                cap = int(
                    (Decimal(max_nanos) * Decimal(str(limit.rollover))).to_integral_value(
                        ROUND_FLOOR
                    )
                )
                carried = min(max(0, max_nanos - previous), cap)
            effective = None if max_nanos is None else max_nanos + carried
            windows.append(
                WindowStatus(
                    window=limit.window,
                    kind=limit.kind,
                    used=from_nanos(used),
                    held=from_nanos(held),
                    limit=None if effective is None else from_nanos(effective),
                    remaining=None
                    if effective is None
                    else from_nanos(max(0, effective - used - held)),
                    carried=from_nanos(carried),
                    requests=requests,
                    max_requests=limit.max_requests,
                    resets_at=_utc(end),
                )
            )
        return TenantStatus(
            tenant_id=tenant,
            plan=stored,
            killed=reply[2] == "1" or "k" in switches,
            killed_features=tuple(decode_id(f) for f in reply[5].split(",") if f),
            held=from_nanos(held),
            open_holds=int(reply[4]),
            windows=tuple(windows),
        )

    async def set_plan(self, tenant_id: str, plan: str) -> None:
        """Assign a configured plan to a tenant; every instance honours it on its next reserve."""
        _, tenant_enc, keys = self._tenant(tenant_id)
        if plan not in self._plans:
            raise UnknownPlan(plan, tuple(self._plans))
        await self._run("admin", [keys.state], ["set_plan", plan])
        self._remember_plan(tenant_enc, plan)

    async def _switch(self, op: str, tenant_id: str | None, feature: str | None) -> None:
        field = "k"
        if feature is not None:
            field = f"k:{encode_id(validate_id(feature, what='feature'))}"
        if tenant_id is None:
            await self._run("admin", [self._keys.global_switches], [op, field])
            self._switches_read_at = -math.inf
        else:
            _, _, keys = self._tenant(tenant_id)
            await self._run("admin", [keys.state], [op, field])

    async def kill(self, tenant_id: str | None = None, *, feature: str | None = None) -> None:
        """Refuse AI calls: of a tenant, of one feature of a tenant, or (no tenant) of everyone.

        Takes effect at once for the tenant's switches and within ``kill_cache_s`` (default
        1 s) on every instance for the global ones.
        """
        await self._switch("kill", tenant_id, feature)

    async def revive(self, tenant_id: str | None = None, *, feature: str | None = None) -> None:
        """Undo ``kill`` with the same arguments."""
        await self._switch("revive", tenant_id, feature)

    async def ping(self) -> None:
        """Readiness check: runs a script (not PING), so a lost script cache is caught too.

        Raises ``StoreUnavailable`` when the store cannot be reached.
        """
        base = f"{self._keys.prefix}:{{ping}}:"
        await self._run(
            "status",
            [base + "s", base + "h"],
            [self._now_arg(), self._default_plan, "1", "1", "0"],
        )

    async def aclose(self) -> None:
        """Close the store connection if the fence opened it."""
        await self._store.aclose()
