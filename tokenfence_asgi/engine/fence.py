"""``TokenFence``: reserve, commit, release, status, plans, pools and kill switches.

Every check-and-update runs as one Lua script in the store (see ``store/lua/``): one round trip per
reserve and per commit. Money crosses this API as ``Decimal`` dollars and is integer nano-dollars
below it; time is the store's clock (Redis TIME) unless a ``clock`` is injected. Where a tenant
lives (its own hash tag or its pool's) and which plan it is on are cached per instance and
corrected by the scripts themselves, so a change made on one instance costs the others one extra
round trip, once.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar

import structlog
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ResponseError

from tokenfence_asgi.calls.portal import Portal
from tokenfence_asgi.config import BUILTIN_PLANS, Plan, PlanSet, default_plan_for
from tokenfence_asgi.engine.alerts import AlertHook, AlertHub
from tokenfence_asgi.engine.allowance import Allowance, Owed
from tokenfence_asgi.engine.observe import FenceObserver, Observers
from tokenfence_asgi.errors import (
    ApprovalRequired,
    ConfigError,
    Contended,
    InvalidAmount,
    InvalidId,
    PolicyDenied,
    Refused,
    ReservationIdConflict,
    StoreUnavailable,
    TenantDisabled,
    UnknownPlan,
)
from tokenfence_asgi.money import MoneyInput, from_nanos, to_nanos
from tokenfence_asgi.policy import Decision, Policy
from tokenfence_asgi.pricing.book import ModelPrice, PriceBook
from tokenfence_asgi.results import (
    Alert,
    DailyUsage,
    FenceCounters,
    Reservation,
    Settlement,
    TenantStatus,
    UsageRecord,
)
from tokenfence_asgi.store import codecs
from tokenfence_asgi.store.client import STORE_ERRORS, Store
from tokenfence_asgi.store.compiled import ScriptSettings, compiled_sources
from tokenfence_asgi.store.keys import OWN, KeySpace, TenantKeys, decode_id, encode_id, validate_id
from tokenfence_asgi.store.ledger import (
    LedgerKeys,
    day_number,
    parse_days,
    read_stream,
    scan_keys,
    tag_pool,
)
from tokenfence_asgi.store.specs import NO_LIMITS, CompiledPlan, compile_plan

__all__ = ["TokenFence"]

log = structlog.get_logger("tokenfence_asgi")

Clock = Callable[[], float]
OnStoreError = Literal["closed", "open", "allowance"]
T = TypeVar("T")
C = TypeVar("C")
_MAX_TOKENS = 10**12
_HOPS = 8  # plan, pool plan, location and moved-hold corrections one call may follow


def _script_error(exc: ResponseError) -> Exception:
    """A script's refusal to count past 2^53 - 1 nano-dollars as a documented error."""
    if "tokenfence: counter overflow" in str(exc):
        return InvalidAmount(
            "this charge would take a window's spend past $9,007,199.25, the most its counters "
            "keep exactly; nothing was charged"
        )
    return exc


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


Candidates = Sequence[tuple[str | None, int]] | Callable[[Plan], Sequence[tuple[str | None, int]]]


def _date_range(start: date, end: date) -> tuple[int, int]:
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, date):
            raise TypeError(f"{name} must be a date, got {type(value).__name__}")
    first, last = day_number(start), day_number(end)
    if last < first:
        raise ValueError(f"end {end} is before start {start}")
    return first, last


def _origin(reservation: Reservation) -> str:
    """The location a reservation was made at."""
    if reservation.pool is None:
        return OWN
    return encode_id(validate_id(reservation.pool, what="pool"))


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a tenant's keys are and the plans that apply there."""

    location: str
    keys: TenantKeys
    plan: CompiledPlan
    pool_plan: CompiledPlan
    follow_stubs: str = "1"
    plan_name: str = ""  # the stored name (plan may be a fallback this instance has)
    pool_plan_name: str = ""

    def plan_args(self, default_plan: str) -> list[str]:
        """The plan names the scripts check: tenant's, default, pool's ('' off a pool)."""
        in_pool = self.keys.pool_state is not None
        return codecs.plan_args(self.plan_name, default_plan, self.pool_plan_name, in_pool)

    def specs(self) -> list[str]:
        """Feature arguments, then the tenant's and the pool's limit specs."""
        return codecs.limit_specs(self.plan, self.pool_plan, self.keys.pool_state is not None)

    @property
    def pool(self) -> str | None:
        return None if self.location == OWN else decode_id(self.location)


class TokenFence:
    """Per-tenant dollar budgets, enforced atomically in Redis.

    ``redis_url`` (or ``redis``, a ``redis.asyncio`` client you own) selects the store; with
    neither, an embedded in-process store runs the same scripts (single process only).
    ``plans`` defaults to the built-in free / starter / pro / enterprise plans; tenants without
    an assigned plan are on ``default_plan``. ``clock`` (epoch seconds) replaces the store's
    clock in tests and simulations. When the store is unreachable the default refuses calls with
    ``StoreUnavailable``; ``on_store_error="open"`` lets them through (logged and counted), and
    ``"allowance"`` lets each tenant spend up to ``outage_allowance`` dollars per fence instance
    from a local counter, then refuses, writing that spend back when the store answers again
    (see ``tokenfence_asgi.engine.allowance``).
    ``enforce=False`` runs every plan in shadow mode. ``hold_ttl`` is the lease of a hold in
    seconds; ``record_ttl`` how long a settled reservation is remembered, so repeats are
    recognised. Without ``default_plan``, the default is the plan file's own ``default_plan``
    (plans from ``load_plans``), else ``"free"``, else a ``ConfigError`` naming ``default_plan``.

    Every commit that charges also writes one entry to the usage ledger (a Redis Stream per
    tag) and adds to the tenant's daily usage, in the same script. ``ledger_retention``
    (seconds, default 7 days) and ``ledger_maxlen`` (entries per stream, approximate, default
    100,000) bound the ledger; None lifts a bound, ``ledger_maxlen=0`` writes no ledger at all.
    ``usage_days`` is how many days of daily usage are kept (default 400).

    ``max_open_holds`` bounds each tenant's calls in flight (reserved, not yet settled; default
    1,000, ``None`` for no bound): a reserve beyond it raises ``TooManyOpenHolds`` (429), in
    shadow mode too. Expired holds are reclaimed first, so a crashed process cannot lock a
    tenant out for longer than ``hold_ttl``.
    ``default_output_tokens`` (default 4,096) is the output allowance of an LLM call that sets
    none (no ``max_tokens``) on a plan that names none: the integrations write it into the call,
    so its hold is a true bound without reserving the model's whole output (gpt-4o: 16,384
    tokens; claude-sonnet-4-5: 64,000). ``None``: the model's maximum output.
    ``prices`` (model -> ``ModelPrice``, or a ``PriceBook``) and ``default_price`` make the
    fence's one price book, ``fence.prices``, shared by the LiteLLM callback, the SDK guards and
    the HTTP API: configured prices first, then LiteLLM's bundled price map, then
    ``default_price``; a model nothing prices is refused.
    """

    def __init__(
        self,
        *,
        redis_url: str | None = None,
        redis: Redis | RedisCluster | None = None,
        plans: Sequence[Plan] | None = None,
        default_plan: str | None = None,
        prefix: str = "tf",
        clock: Clock | None = None,
        on_store_error: OnStoreError = "closed",
        outage_allowance: MoneyInput = "0.10",
        enforce: bool = True,
        hold_ttl: float = 600,
        record_ttl: float = 86400,
        timeout_s: float = 0.5,
        reclaim_batch: int = 16,
        kill_cache_s: float = 1.0,
        cache_size: int = 10_000,
        policy: Policy | None = None,
        approval_ttl: float = 3600,
        ledger_retention: float | None = 7 * 86400,
        ledger_maxlen: int | None = 100_000,
        usage_days: int = 400,
        max_open_holds: int | None = 1000,
        default_output_tokens: int | None = 4096,
        prices: Mapping[str, ModelPrice] | PriceBook | None = None,
        default_price: ModelPrice | None = None,
    ) -> None:
        if default_output_tokens is not None and not (
            type(default_output_tokens) is int and 1 <= default_output_tokens <= 10_000_000
        ):
            raise ConfigError(
                "default_output_tokens must be an int in [1, 10000000] or None, "
                f"got {default_output_tokens!r}"
            )
        self.default_output_tokens = default_output_tokens
        """The output allowance of an LLM call that sets none and whose plan names none."""
        if isinstance(prices, PriceBook):
            if default_price is not None:
                raise ConfigError("give default_price to the PriceBook passed as prices")
            self.prices = prices
        else:
            self.prices = PriceBook(prices, default_price=default_price)
        """The price book every integration of this fence prices calls with (see ``prices``)."""
        plan_list = tuple(BUILTIN_PLANS if plans is None else plans)
        compiled: dict[str, CompiledPlan] = {}
        for plan in plan_list:
            if not isinstance(plan, Plan):
                raise ConfigError(f"plans must be Plan instances, got {type(plan).__name__}")
            if plan.name in compiled:
                raise ConfigError(f"plans: duplicate plan name {plan.name!r}")
            compiled[plan.name] = compile_plan(plan)
        # A PlanSet carries its file's default_plan; any other sequence was read into plan_list.
        named = plans if isinstance(plans, PlanSet) else plan_list
        default_plan = default_plan_for(named, default_plan)
        if on_store_error not in ("closed", "open", "allowance"):
            raise ConfigError(
                f"on_store_error must be 'closed', 'open' or 'allowance', got {on_store_error!r}"
            )
        try:
            allowance_nanos = to_nanos(outage_allowance, field="outage_allowance")
        except InvalidAmount as exc:
            raise ConfigError(exc.message) from None
        self._allowance = Allowance(allowance_nanos) if on_store_error == "allowance" else None
        self._writing_back: asyncio.Task[int] | None = None
        self._write_back_running = False
        if not isinstance(enforce, bool):
            raise ConfigError(f"enforce must be True or False, got {enforce!r}")
        if clock is not None and not callable(clock):
            raise ConfigError("clock must be a callable returning epoch seconds")
        for name, value, low, high in (
            ("reclaim_batch", reclaim_batch, 1, 1000),
            ("cache_size", cache_size, 0, 10**7),
            ("usage_days", usage_days, 1, 3660),
            ("ledger_maxlen", 1 if ledger_maxlen is None else ledger_maxlen, 0, 10**9),
            ("max_open_holds", 1 if max_open_holds is None else max_open_holds, 1, 10**7),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name} must be an int in [{low}, {high}], got {value!r}")
        if policy is not None and not isinstance(policy, Policy):
            raise ConfigError(f"policy must be a Policy, got {type(policy).__name__}")
        self._policy = policy
        self._approval_ttl = str(
            math.ceil(_positive("approval_ttl", approval_ttl, maximum=30 * 86400))
        )
        hold_s = _positive("hold_ttl", hold_ttl, maximum=7 * 86400)
        record_s = _positive("record_ttl", record_ttl, maximum=90 * 86400)
        self._ledger_retention = (
            ""
            if ledger_retention is None
            else str(
                max(1, round(_positive("ledger_retention", ledger_retention, maximum=3660 * 86400)
                             * 1000))
            )
        )  # fmt: skip
        self._ledger_maxlen = "" if ledger_maxlen is None else str(ledger_maxlen)
        self._usage_days = str(usage_days)
        self._max_open_holds = "" if max_open_holds is None else str(max_open_holds)
        self._kill_cache_s = (
            0.0 if kill_cache_s == 0 else _positive("kill_cache_s", kill_cache_s, maximum=60)
        )

        self._plans = compiled
        self._default_plan = default_plan
        self._keys = KeySpace(prefix)
        self._ledger_keys = LedgerKeys(prefix)
        self._clock = clock
        self._on_store_error: OnStoreError = on_store_error
        self._enforce = enforce
        self._hold_ms = str(max(1, round(hold_s * 1000)))
        self._record_ttl = str(max(1, math.ceil(record_s)))
        self._reclaim = str(reclaim_batch)
        self._cache_size = cache_size
        self._tenant_plans: OrderedDict[str, str] = OrderedDict()
        self._locations: OrderedDict[str, str] = OrderedDict()
        self._pool_plans: OrderedDict[str, str] = OrderedDict()
        self._switches: frozenset[str] = frozenset()
        self._switches_read_at = -math.inf
        self._store = Store.connect(redis_url=redis_url, redis=redis, timeout_s=timeout_s)
        self._store.install(
            compiled_sources(
                compiled,
                ScriptSettings(
                    default_plan=default_plan,
                    hold_ms=self._hold_ms,
                    reclaim=self._reclaim,
                    record_ttl_s=self._record_ttl,
                    usage_days=self._usage_days,
                    max_open_holds=self._max_open_holds,
                    ledger_maxlen=self._ledger_maxlen,
                    ledger_retention_ms=self._ledger_retention,
                ),
            )
        )
        self.portal = Portal("use the async client (AsyncOpenAI, AsyncAnthropic) there")
        """Runs this fence's coroutines for sync callers (see ``run_sync``)."""
        self.counters = FenceCounters()
        self._alerts = AlertHub(self.counters)
        self._observers = Observers()

    # -- configuration -----------------------------------------------------------------------

    @property
    def plans(self) -> dict[str, Plan]:
        """The configured plans by name."""
        return {name: compiled.plan for name, compiled in self._plans.items()}

    @property
    def default_plan(self) -> str:
        """The plan of tenants that have none assigned."""
        return self._default_plan

    @property
    def record_ttl(self) -> int:
        """Seconds a settled reservation is remembered (repeats within it are recognised)."""
        return int(self._record_ttl)

    @property
    def hold_ttl(self) -> float:
        """The lease of a hold, in seconds."""
        return int(self._hold_ms) / 1000

    async def global_switches(self) -> tuple[bool, tuple[str, ...]]:
        """The fence-wide kill switches: (everything killed, killed features), at most
        ``kill_cache_s`` old."""
        fields = await self._global_switches()
        features = tuple(sorted(decode_id(f[2:]) for f in fields if f.startswith("k:")))
        return "k" in fields, features

    def on_alert(self, hook: AlertHook) -> AlertHook:
        """Call ``hook(alert)`` (sync or async) for every threshold alert; usable as a decorator.

        Hooks run in the background: a slow or failing hook never delays or fails a call.
        """
        self._alerts.add(hook)
        return hook

    def observe(self, observer: FenceObserver) -> FenceObserver:
        """Call ``observer`` on every reservation, refusal, settlement and store script."""
        self._observers.add(observer)
        return observer

    def guard(self, client: C, *, tenant: str | None = None, feature: str | None = None) -> C:
        """A fenced copy of an ``openai`` or ``anthropic`` SDK client, used exactly like it.

        ``fence.guard(AsyncOpenAI())`` charges each call to the current request's or
        ``tenant_scope``'s tenant; ``tenant=`` / ``feature=`` fix them. See
        ``tokenfence_asgi.guard``.
        """
        from tokenfence_asgi.guard import guard

        return guard(self, client, tenant=tenant, feature=feature)

    def run_sync(self, function: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``await function(*args, **kwargs)`` from sync code, on the loop this fence's
        connections belong to (the one sync guarded clients use): ``fence.run_sync(
        fence.status, "acme")``. Raises ``RuntimeError`` on a thread running an event loop."""
        return self.portal.run(lambda: function(*args, **kwargs), None)

    # -- caches and routing ------------------------------------------------------------------

    def _remember(self, cache: OrderedDict[str, str], key: str, value: str) -> None:
        if self._cache_size == 0:
            return
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self._cache_size:
            cache.popitem(last=False)

    def _compiled(self, name: str) -> CompiledPlan:
        compiled = self._plans.get(name)
        if compiled is None:
            # Assigned a plan this instance's configuration does not have: enforce the default
            # plan's limits rather than none.
            log.error("plan_not_configured", plan=name, using=self._default_plan)
            return self._plans[self._default_plan]
        return compiled

    def _route(
        self, tenant_enc: str, location: str, plan: str, pool_plan: str, follow_stubs: str
    ) -> _Route:
        pool_compiled = NO_LIMITS
        if location != OWN and pool_plan:
            pool_compiled = self._compiled(pool_plan)
        keys = self._keys.tenant(tenant_enc, location)
        return _Route(location, keys, self._compiled(plan), pool_compiled, follow_stubs,
                      plan, pool_plan)  # fmt: skip

    async def _call(
        self,
        script: str,
        tenant_enc: str,
        build: Callable[[_Route], codecs.Call],
        start: str | None = None,
    ) -> tuple[list[str], _Route]:
        """Run ``script`` for a tenant where it lives, following the scripts' corrections.

        ``start`` is where to look first instead of the cached location (a reservation's own
        location, where its record is).
        """
        location = start if start is not None else self._locations.get(tenant_enc, OWN)
        plan = self._tenant_plans.get(tenant_enc, self._default_plan)
        follow_stubs = "1"
        pool_plans: dict[str, str] = {}
        for _ in range(_HOPS):
            pool_plan = ""
            if location != OWN:
                pool_plan = pool_plans.get(location) or self._pool_plans.get(location, "")
            route = self._route(tenant_enc, location, plan, pool_plan, follow_stubs)
            keys, args = build(route)
            reply = await self._run(script, keys, args)
            corrected = codecs.correction(reply)
            if corrected is None:
                if start is None:  # not a settlement that may end at an old location
                    self._remember(self._locations, tenant_enc, location)
                return reply, route
            if corrected.kind == "moved":
                location = corrected.value
                # A hold's forwarding stub is followed only until the tenant itself is.
                follow_stubs = "1" if corrected.for_record and follow_stubs == "1" else "0"
                if not corrected.for_record:
                    self._remember(self._locations, tenant_enc, location)
            elif corrected.kind == "plan":
                plan = corrected.value
                self._remember(self._tenant_plans, tenant_enc, plan)
            else:
                pool_plans[location] = corrected.value
                self._remember(self._pool_plans, location, corrected.value)
        raise Contended("the tenant's plan or pool kept changing during the call; try again")

    def _now_arg(self) -> str:
        if self._clock is None:
            return ""
        now = self._clock()
        if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
            raise ConfigError(f"clock() must return finite epoch seconds, got {now!r}")
        return str(int(now * 1000))

    async def _run(self, name: str, keys: list[str], args: list[str]) -> list[str]:
        if self._observers.items:
            return await self._run_observed(name, keys, args)
        try:
            reply = await self._store.run(name, keys, args)
        except StoreUnavailable:
            self.counters.store_errors += 1
            raise
        except ResponseError as exc:
            raise _script_error(exc) from exc
        if self._allowance is not None and self._allowance.owed:
            self._start_write_back()
        return reply

    async def _run_observed(self, name: str, keys: list[str], args: list[str]) -> list[str]:
        started = time.perf_counter()
        try:
            reply = await self._store.run(name, keys, args)
        except StoreUnavailable:
            self.counters.store_errors += 1
            self._observers.script(name, time.perf_counter() - started, False)
            raise
        except ResponseError as exc:
            raise _script_error(exc) from exc
        self._observers.script(name, time.perf_counter() - started, True)
        return reply

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

    def _alerts_from(
        self,
        raw: list[str],
        tenant: str,
        feature: str | None,
        route: _Route,
        reservation_id: str,
        repeated: bool = False,
    ) -> list[Alert]:
        return codecs.alerts(
            raw,
            tenant=tenant,
            feature=feature,
            pool=route.pool,
            reservation_id=reservation_id,
            repeated=repeated,
        )

    # -- reserve / commit / release ------------------------------------------------------------

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

        Checks every limit of the tenant's plan and pool, the feature shares and the kill
        switches in one atomic step. Raises ``BudgetExceeded``, ``RequestLimitExceeded``,
        ``TenantDisabled``, ``StoreUnavailable`` (unless ``on_store_error="open"``), or
        ``InvalidAmount`` / ``InvalidId`` for bad input (``amount`` must be above $0: a hold of
        nothing limits nothing), ``TooManyOpenHolds`` when the tenant has ``max_open_holds``
        calls in flight. A repeated ``reservation_id`` returns the same hold (and the alerts the
        first call raised, marked ``repeated``).
        """
        nanos = to_nanos(amount, rounding="up", field="amount")
        if nanos == 0:
            raise InvalidAmount(
                f"amount: zero amount {amount!r}; reserve the call's worst-case cost, above $0"
            )
        return await self.reserve_first(
            tenant_id, [(model, nanos)], feature=feature, reservation_id=reservation_id
        )

    async def reserve_first(
        self,
        tenant_id: str,
        candidates: Candidates,
        *,
        feature: str | None = None,
        reservation_id: str | None = None,
        force: bool = False,
    ) -> Reservation:
        """Hold the first ``(model, amount_nanos)`` candidate that fits every limit.

        The building block of model downgrade: candidates are tried in order inside one
        atomic step. ``candidates`` may be a callable taking the tenant's ``Plan`` (as the store
        knows it, so never stale) and returning them: that is where a caller applies the plan's
        model allow-list and input limits, raising ``ModelNotAllowed`` / ``InputTooLong``.
        Raises as ``reserve`` does, for the last candidate when none fits. ``force=True``
        holds the first candidate whatever the limits say (for money already spent; a killed
        tenant still raises ``TenantDisabled``).
        """
        if not self._observers.items:
            return await self._reserve_first(tenant_id, candidates, feature, reservation_id, force)
        try:
            reservation = await self._reserve_first(
                tenant_id, candidates, feature, reservation_id, force
            )
        except (Refused, TenantDisabled) as error:
            self._observers.refused(error, tenant_id, feature)
            raise
        self._observers.reserved(reservation)
        return reservation

    async def _reserve_first(
        self,
        tenant_id: str,
        candidates: Candidates,
        feature: str | None,
        reservation_id: str | None,
        force: bool = False,
    ) -> Reservation:
        tenant = validate_id(tenant_id, what="tenant_id")
        tenant_enc = encode_id(tenant)
        feat = None if feature is None else validate_id(feature, what="feature")
        feat_enc = "" if feat is None else encode_id(feat)
        rid = validate_id(uuid.uuid4().hex if reservation_id is None else reservation_id,
                          what="reservation_id")  # fmt: skip
        rid_enc = encode_id(rid)
        chosen_from: list[Sequence[tuple[str | None, int]]] = []

        def build(route: _Route) -> codecs.Call:
            offered = candidates(route.plan.plan) if callable(candidates) else candidates
            amounts = codecs.candidate_amounts(offered)
            chosen_from.append(offered)
            return codecs.reserve_call(
                route.keys,
                now=self._now_arg(),
                plan=route.plan_name,
                tenant=tenant_enc,
                reservation=rid_enc,
                feature=feat_enc,
                location=route.location,
                pool_plan=route.pool_plan_name,
                enforce=self._enforce and route.plan.plan.enforce and not force,
                amounts=amounts,
            )

        try:
            switches = await self._global_switches()
            if "k" in switches or (feat is not None and f"k:{feat_enc}" in switches):
                raise TenantDisabled(tenant_id=tenant, feature=feat, scope="global")
            reply, route = await self._call("reserve", tenant_enc, build)
        except StoreUnavailable:
            if self._on_store_error == "closed":
                raise
            plan = self._compiled(self._tenant_plans.get(tenant_enc, self._default_plan)).plan
            offered = candidates(plan) if callable(candidates) else candidates
            codecs.candidate_amounts(offered)
            model, nanos = offered[0]
            if self._allowance is not None and not self._allowance.take(rid, tenant, nanos):
                self.counters.outage_allowance_refusals += 1
                log.warning("outage_allowance_spent", tenant=tenant, feature=feat,
                            limit_nanos=self._allowance.limit_nanos)  # fmt: skip
                raise
            self.counters.allowed_without_store += 1
            log.warning("reserve_allowed_without_store", tenant=tenant, feature=feat)
            return Reservation(rid, tenant, feat, model, from_nanos(nanos), nanos,
                               plan.name, degraded=True)  # fmt: skip
        candidates = chosen_from[-1]

        answer = codecs.reserve_reply(reply)
        kind, raw_alerts = answer.kind, answer.alerts
        repeated = kind == "ok" and answer.existing
        if raw_alerts and not repeated:
            self._alerts.dispatch(self._alerts_from(raw_alerts, tenant, feat, route, rid))
        plan = route.plan.plan
        if kind == "ok":
            index, nanos, expires = answer.index, answer.amount_nanos, answer.expires_ms
            if index >= len(candidates):  # a retry of an id held for a longer candidate list
                raise ReservationIdConflict(
                    f"reservation_id {rid!r} already holds candidate {index + 1} of another call",
                    settled=False,
                )
            if raw_alerts and repeated:  # the first call's reply may have been lost
                self._alerts.dispatch(
                    self._alerts_from(raw_alerts, tenant, feat, route, rid, repeated=True)
                )
            shadow = None
            if answer.refusal is not None and not force:
                shadow = self._refusal(answer.refusal, tenant, feat, route)
                self.counters.shadow_refusals += 1
                log.warning(
                    "reserve_would_refuse", tenant=tenant, feature=feat, error=shadow.error_code,
                    detail=shadow.message,
                )  # fmt: skip
            return Reservation(
                id=rid, tenant_id=tenant, feature=feat, model=candidates[index][0],
                amount=from_nanos(nanos), amount_nanos=nanos, plan=plan.name, pool=route.pool,
                expires_at=datetime.fromtimestamp(expires / 1000, UTC), shadow_refusal=shadow,
            )  # fmt: skip
        if kind == "killed":
            log.info("reserve_refused", tenant=tenant, feature=feat, reason="killed")
            raise TenantDisabled(tenant_id=tenant, feature=feat, scope=answer.scope)
        if kind == "duplicate":
            raise ReservationIdConflict(
                f"reservation_id {rid!r} was already used and settled", settled=True
            )
        assert answer.refusal is not None  # every other kind is a refusal
        refusal = self._refusal(answer.refusal, tenant, feat, route)
        log.info("reserve_refused", tenant=tenant, feature=feat, reason=refusal.error_code)
        raise refusal

    def _refusal(
        self, details: list[str], tenant: str, feature: str | None, route: _Route
    ) -> Refused:
        return codecs.refusal(
            details,
            tenant=tenant,
            feature=feature,
            plan=route.plan.plan,
            pool_plan=route.pool_plan.plan,
            pool=route.pool,
            hold_ttl_s=self.hold_ttl,
        )

    async def commit(
        self,
        reservation: Reservation,
        cost: MoneyInput,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        model: str | None = None,
        request_id: str | None = None,
    ) -> Settlement:
        """Replace the hold with the actual ``cost`` in dollars. Idempotent.

        A commit after the hold's lease ran out still charges the cost and is marked late.
        A cost above the hold is charged in full (providers may bill more than estimated).
        The commit that charges writes one usage record (see ``usage_records``): ``model`` is
        the model actually used (default: the reservation's), ``request_id`` ties it to the
        request; a repeat writes none.
        """
        settlement = await self._commit(
            reservation, cost, input_tokens, output_tokens, model, request_id
        )
        if self._observers.items:
            self._observers.committed(reservation, settlement)
        return settlement

    async def _commit(
        self,
        reservation: Reservation,
        cost: MoneyInput,
        input_tokens: int,
        output_tokens: int,
        model: str | None = None,
        request_id: str | None = None,
    ) -> Settlement:
        if not isinstance(reservation, Reservation):
            raise TypeError(f"commit needs a Reservation, got {type(reservation).__name__}")
        nanos = to_nanos(cost, rounding="half_up", field="cost")
        _tokens("input_tokens", input_tokens)
        _tokens("output_tokens", output_tokens)
        requested = reservation.model
        requested_arg = "" if requested is None else codecs.label(str(requested), "model")
        used_arg = codecs.label(model, "model")
        if used_arg == requested_arg:
            used_arg = ""  # the ledger stores the model used only when it differs
        request_arg = codecs.label(request_id, "request_id")
        tenant = validate_id(reservation.tenant_id, what="tenant_id")
        rid = validate_id(reservation.id, what="reservation_id")
        tenant_enc, rid_enc = encode_id(tenant), encode_id(rid)
        feature = reservation.feature
        feat_enc = "" if feature is None else encode_id(validate_id(feature, what="feature"))

        def build(route: _Route) -> codecs.Call:
            return codecs.commit_call(
                route.keys,
                now=self._now_arg(),
                tenant=tenant_enc,
                reservation=rid_enc,
                cost_nanos=nanos,
                feature=feat_enc,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                location=route.location,
                follow_stubs=route.follow_stubs,
                plan=route.plan_name,
                pool_plan=route.pool_plan_name,
                model_requested=requested_arg,
                model_used=used_arg,
                request_id=request_arg,
            )

        try:
            # Its record is where it was reserved: a settled one there answers a repeat even
            # after the tenant moved to another pool; an open one forwards to where it moved.
            reply, route = await self._call("commit", tenant_enc, build, _origin(reservation))
        except StoreUnavailable:
            if self._on_store_error == "closed":
                raise
            if self._allowance is not None:
                self._allowance.owe(Owed(reservation, nanos, input_tokens, output_tokens,
                                         model, request_id))  # fmt: skip
                log.warning("commit_owed", tenant=tenant, reservation=reservation.id,
                            cost_nanos=nanos)  # fmt: skip
            else:
                log.warning("commit_not_recorded", tenant=tenant, reservation=reservation.id)
            return Settlement(reservation.id, from_nanos(nanos), recorded=False)
        if self._allowance is not None and reservation.degraded:
            self._allowance.forget(reservation)
        settled = codecs.commit_reply(reply)
        if settled.alerts:  # a duplicate repeats the first commit's (its reply may be lost)
            alerts = self._alerts_from(
                settled.alerts, tenant, feature, route, rid, settled.duplicate
            )
            self._alerts.dispatch(alerts)
        charged, late = settled.charged_nanos, settled.late
        if settled.duplicate:
            log.info("commit_duplicate", tenant=tenant, reservation=reservation.id)
            # cost: what the first settlement charged (a retried call learns it was charged)
            return Settlement(reservation.id, from_nanos(charged), duplicate=True)
        if late:
            log.warning("commit_late", tenant=tenant, reservation=reservation.id, cost_nanos=nanos)
        return Settlement(reservation.id, from_nanos(charged), late=late)

    async def charge(
        self,
        tenant_id: str,
        cost: MoneyInput,
        *,
        feature: str | None = None,
        model: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        request_id: str | None = None,
    ) -> Settlement:
        """Charge ``cost`` dollars already spent, with no hold before it, whatever the limits.

        For a call that could not be fenced before it was made (a sync LiteLLM call): it is
        held and committed at once, and counted in ``counters.charged_unfenced``. Raises
        ``TenantDisabled`` for a killed tenant (nothing is charged) and ``StoreUnavailable``.
        """
        nanos = to_nanos(cost, rounding="half_up", field="cost")
        reservation = await self.reserve_first(
            tenant_id, [(model, max(nanos, 1))], feature=feature, force=True
        )
        self.counters.charged_unfenced += 1
        return await self.commit(
            reservation, from_nanos(nanos), input_tokens=input_tokens,
            output_tokens=output_tokens, model=model, request_id=request_id,
        )  # fmt: skip

    async def release(self, reservation: Reservation) -> Settlement:
        """Drop the hold without charging (the call failed before costing anything). Idempotent."""
        settlement = await self._release(reservation)
        if self._observers.items:
            self._observers.released(reservation, settlement)
        return settlement

    async def _release(self, reservation: Reservation) -> Settlement:
        if not isinstance(reservation, Reservation):
            raise TypeError(f"release needs a Reservation, got {type(reservation).__name__}")
        if reservation.degraded:
            if self._allowance is not None:
                self._allowance.forget(reservation)
            return Settlement(reservation.id, Decimal(0), recorded=False)
        tenant_enc = encode_id(validate_id(reservation.tenant_id, what="tenant_id"))
        rid_enc = encode_id(validate_id(reservation.id, what="reservation_id"))

        def build(route: _Route) -> codecs.Call:
            return codecs.release_call(
                route.keys,
                now=self._now_arg(),
                tenant=tenant_enc,
                reservation=rid_enc,
                record_ttl=self._record_ttl,
                reclaim=self._reclaim,
                location=route.location,
                follow_stubs=route.follow_stubs,
                default_plan=self._default_plan,
                usage_days=self._usage_days,
            )

        try:
            reply, _ = await self._call("release", tenant_enc, build, _origin(reservation))
        except StoreUnavailable:
            if self._on_store_error == "closed":
                raise
            log.warning("release_not_recorded", tenant=reservation.tenant_id,
                        reservation=reservation.id)  # fmt: skip
            return Settlement(reservation.id, Decimal(0), recorded=False)
        released = codecs.release_reply(reply).released
        return Settlement(reservation.id, Decimal(0), duplicate=not released)

    # -- status --------------------------------------------------------------------------------

    async def status(self, tenant_id: str) -> TenantStatus:
        """The tenant's plan, pool, kill switches, open holds and every window of its plans."""
        tenant = validate_id(tenant_id, what="tenant_id")
        tenant_enc = encode_id(tenant)

        def build(route: _Route) -> codecs.Call:
            return codecs.status_call(
                route.keys,
                now=self._now_arg(),
                default_plan=self._default_plan,
                reclaim=self._reclaim,
                record_ttl=self._record_ttl,
                location=route.location,
                plan=route.plan_name,
                pool_plan=route.pool_plan_name,
                specs=route.specs(),
            )

        reply, route = await self._call("status", tenant_enc, build)
        switches = await self._global_switches()
        return codecs.status_reply(
            reply,
            tenant=tenant,
            plan=route.plan,
            pool_plan=route.pool_plan,
            in_pool=route.keys.pool_state is not None,
            pool=route.pool,
            killed_globally="k" in switches,
        )

    # -- usage: daily counters and the ledger --------------------------------------------------

    async def usage(self, tenant_id: str, start: date, end: date) -> list[DailyUsage]:
        """The tenant's daily usage from ``start`` to ``end`` (UTC days, inclusive), by day.

        Days without any commit, refusal or release are left out. The counters are written by
        the same scripts as the charges, so they are exact; they are kept ``usage_days``.
        """
        tenant = validate_id(tenant_id, what="tenant_id")
        tenant_enc = encode_id(tenant)
        first, last = _date_range(start, end)

        def build(route: _Route) -> codecs.Call:
            return codecs.usage_call(route.keys, route.location)

        reply, route = await self._call("usage", tenant_enc, build)
        return codecs.usage_days(reply, tenant, route.pool, first, last)

    async def daily_usage(self, start: date, end: date) -> AsyncIterator[DailyUsage]:
        """Every tenant's daily usage from ``start`` to ``end`` (inclusive), tenant by tenant.

        Scans the store (every primary of a cluster): meant for reports and admin pages, not
        for a request path. A tenant whose move between pools is under way may be missing.
        """
        first, last = _date_range(start, end)
        client = self._store.client
        batch: list[tuple[str, str, str]] = []

        async def flush() -> list[DailyUsage]:
            pipe = client.pipeline(transaction=False)
            for key, _, _ in batch:
                pipe.hget(key[:-1] + "s", "loc")
                pipe.hgetall(key)
            try:
                replies = await pipe.execute()
            except STORE_ERRORS as exc:
                raise StoreUnavailable(f"budget store unavailable: {exc}") from exc
            out: list[DailyUsage] = []
            for k, (_, location, tenant_enc) in enumerate(batch):
                moved_away, flat = replies[2 * k], replies[2 * k + 1]
                if moved_away is not None or not flat:
                    continue  # the tenant moved on: its days are where it lives now
                pairs = [x for item in flat.items() for x in item]
                out += parse_days(pairs, decode_id(tenant_enc), tag_pool(location), first, last)
            batch.clear()
            return out

        async for key in scan_keys(client, self._ledger_keys.days_pattern, "hash"):
            parsed = self._ledger_keys.days_key(key)
            if parsed is None:
                continue
            batch.append((key, *parsed))
            if len(batch) >= 200:
                for usage in await flush():
                    yield usage
        if batch:
            for usage in await flush():
                yield usage

    async def top_spenders(self, start: date, end: date, n: int = 10) -> list[tuple[str, Decimal]]:
        """The ``n`` tenants that spent the most from ``start`` to ``end`` (inclusive), with
        their spend, highest first (ties by tenant id). Tenants that spent nothing are left out.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        totals: dict[str, int] = {}
        async for day in self.daily_usage(start, end):
            totals[day.tenant_id] = totals.get(day.tenant_id, 0) + day.cost_nanos
        ranked = sorted((t for t in totals.items() if t[1] > 0), key=lambda t: (-t[1], t[0]))
        return [(tenant, from_nanos(nanos)) for tenant, nanos in ranked[:n]]

    async def tenants(self) -> AsyncIterator[str]:
        """The ids of every tenant the store has state for, in no particular order.

        Scans the store (every primary of a cluster); each tenant once.
        """
        async for key in scan_keys(self._store.client, self._ledger_keys.state_pattern, "hash"):
            tenant = self._ledger_keys.tenant_of_state(key)
            if tenant is None:
                continue
            try:
                validate_id(tenant)
            except InvalidId:
                continue  # not a tenant's (the readiness probe's key)
            yield tenant

    async def has_tenant(self, tenant_id: str) -> bool:
        """Whether the store has state for the tenant (what ``tenants()`` lists): it reserved, or
        was given a plan, a pool or a kill switch. ``status`` and ``revive`` create none.

        One read of the tenant's own key; for operator tools that must not act on a typo.
        """
        tenant_enc = encode_id(validate_id(tenant_id, what="tenant_id"))
        return bool(await self._store.hgetall(self._keys.tenant(tenant_enc).state))

    async def ledger_streams(self) -> AsyncIterator[str]:
        """The keys of every usage ledger stream (one per tenant on its own, one per pool)."""
        async for key in scan_keys(self._store.client, self._ledger_keys.stream_pattern, "stream"):
            if self._ledger_keys.stream_location(key) is not None:
                yield key

    async def read_ledger(
        self, stream: str, after: str = "0", count: int = 1000
    ) -> list[UsageRecord]:
        """Up to ``count`` records of one ledger stream, oldest first, after entry id ``after``.

        ``after`` is a record's ``entry_id`` (``"0"``: from the start); the exporter's cursor.
        """
        location = self._ledger_keys.stream_location(stream)
        if location is None:
            raise ValueError(f"not a ledger stream of prefix {self._keys.prefix!r}: {stream!r}")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100_000:
            raise ValueError(f"count must be an int in [1, 100000], got {count!r}")
        return await read_stream(self._store.client, stream, location, after, count)

    async def usage_records(
        self,
        *,
        tenant_id: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> AsyncIterator[UsageRecord]:
        """The ledger's records (still retained), stream by stream, oldest first in each.

        Optionally only one tenant's (from every stream it wrote to, pools included) and only
        those with ``start <= timestamp < end``. Scans the store: for reports and exports.
        """
        tenant = None if tenant_id is None else validate_id(tenant_id, what="tenant_id")
        own = None if tenant is None else self._keys.tenant(encode_id(tenant)).tag + "l"
        async for stream in self.ledger_streams():
            if (
                tenant is not None
                and stream != own
                and self._ledger_keys.stream_location(stream) == OWN
            ):
                continue  # another tenant's own stream
            after = "0"
            while True:
                records = await self.read_ledger(stream, after, 1000)
                for record in records:
                    if tenant is not None and record.tenant_id != tenant:
                        continue
                    if start is not None and record.timestamp < start:
                        continue
                    if end is not None and record.timestamp >= end:
                        continue
                    yield record
                if len(records) < 1000:
                    break
                after = records[-1].entry_id

    # -- tool-call policy -----------------------------------------------------------------------

    def policy_for(self, plan: Plan) -> Policy:
        """The tool-call policy of a plan: the fence's policy merged with the plan's."""
        fence = self._policy or Policy()
        return fence.merge(plan.policy) if plan.policy is not None else fence

    async def plan_of(self, tenant_id: str) -> Plan:
        """The tenant's plan as this instance last saw it (one status read when never seen)."""
        tenant_enc = encode_id(validate_id(tenant_id, what="tenant_id"))
        name = self._tenant_plans.get(tenant_enc)
        if name is None:
            name = (await self.status(tenant_id)).plan
        return self._compiled(name).plan

    async def check_tool(
        self, action: str, *, tenant_id: str, approval_id: str | None = None
    ) -> None:
        """Check a tool call (``action`` like ``"tool:db:delete:users"``) against the policy.

        Returns when it is allowed. Raises ``PolicyDenied`` when denied, and ``ApprovalRequired``
        (carrying a new pending ``approval_id``, kept ``approval_ttl`` seconds) when it needs an
        operator; once approved (``approve``), the call passes again once with that id.
        """
        tenant = validate_id(tenant_id, what="tenant_id")
        decision = self.policy_for(await self.plan_of(tenant)).decide(action)
        if decision == Decision.DENY:
            raise PolicyDenied(action, tenant_id=tenant)
        if decision == Decision.ALLOW:
            return
        if approval_id is not None:
            key = self._approval_key(approval_id, tenant)
            state = codecs.approval_state(
                await self._run("approval", *codecs.approval_call(key, "consume", action))
            )
            if state == "approved":
                log.info("approval_used", tenant=tenant, action=action, approval=approval_id)
                return
            if state == "denied":
                raise PolicyDenied(action, tenant_id=tenant)
            if state is not None:  # still pending
                raise ApprovalRequired(action, approval_id, tenant_id=tenant)
        approval = f"{encode_id(tenant)}:{uuid.uuid4().hex}"
        key = self._approval_key(approval, tenant)
        await self._run(
            "approval", *codecs.approval_call(key, "create", action, self._approval_ttl)
        )
        log.info("approval_requested", tenant=tenant, action=action, approval=approval)
        raise ApprovalRequired(action, approval, tenant_id=tenant)

    def _approval_key(self, approval_id: str, tenant: str | None = None) -> str:
        tenant_enc, _, token = str(approval_id).rpartition(":")
        if not tenant_enc or len(token) != 32 or not all(c in "0123456789abcdef" for c in token):
            raise InvalidId(f"not an approval id: {approval_id!r}")
        if tenant is not None and tenant_enc != encode_id(tenant):
            raise InvalidId(f"approval {approval_id!r} belongs to another tenant")
        validate_id(decode_id(tenant_enc), what="approval tenant")
        return f"{self._keys.prefix}:{{t.{tenant_enc}}}:ap:{token}"

    async def approve(self, approval_id: str) -> bool:
        """Approve a pending tool call; False when it was not pending (decided or expired)."""
        return await self._decide_approval(approval_id, "approved")

    async def deny(self, approval_id: str) -> bool:
        """Deny a pending tool call; False when it was not pending (decided or expired)."""
        return await self._decide_approval(approval_id, "denied")

    async def _decide_approval(self, approval_id: str, state: str) -> bool:
        key = self._approval_key(approval_id)
        reply = await self._run("approval", *codecs.approval_call(key, "decide", state))
        return codecs.approval_state(reply) == "pending"

    # -- plans, pools, switches ----------------------------------------------------------------

    async def set_plan(self, tenant_id: str, plan: str) -> None:
        """Assign a configured plan to a tenant; every instance honours it on its next reserve."""
        tenant_enc = encode_id(validate_id(tenant_id, what="tenant_id"))
        if plan not in self._plans:
            raise UnknownPlan(plan, tuple(self._plans))
        await self._admin(tenant_enc, "set_plan", plan)
        self._remember(self._tenant_plans, tenant_enc, plan)

    async def _admin(self, tenant_enc: str, op: str, arg: str) -> None:
        def build(route: _Route) -> codecs.Call:
            return codecs.admin_tenant_call(route.keys, op, arg, route.location)

        await self._call("admin", tenant_enc, build)

    async def set_pool(self, tenant_id: str, pool: str | None, *, plan: str | None = None) -> None:
        """Put a tenant in a pool (``None``: take it out), optionally setting the pool's plan.

        A pool's limits are checked in the same script as its members' own limits. The tenant's
        spend, open holds, plan and switches move with it: nothing is lost or counted twice;
        spend already charged to a pool's limits stays with that pool. A pool needs a plan,
        given here the first time (``plan=``) or set before with ``set_pool_plan``. Safe to
        repeat: an interrupted move is completed by calling again with the same arguments.
        """
        tenant_enc = encode_id(validate_id(tenant_id, what="tenant_id"))
        target = OWN if pool is None else encode_id(validate_id(pool, what="pool"))
        if plan is not None:
            if pool is None:
                raise ConfigError("set_pool(..., plan=...) needs a pool")
            await self.set_pool_plan(pool, plan)
        elif pool is not None:
            known = await self._store.hget(self._keys.pool_state(target), "plan")
            if known is None:
                raise ConfigError(f"pool {pool!r} has no plan yet: pass plan=")
        own = self._keys.tenant(tenant_enc)
        directory = await self._store.hgetall(own.state)
        if "mvid" in directory:  # a move that was interrupted: finish it first
            await self._move(tenant_enc, directory["mvfrom"], directory["mvto"], directory["mvid"])
        source = await self._store.hget(own.state, "loc") or OWN
        if source != target:
            await self._move(tenant_enc, source, target, uuid.uuid4().hex)
        self._remember(self._locations, tenant_enc, target)
        log.info("tenant_moved", tenant=tenant_id, pool=pool)

    async def _move(self, tenant_enc: str, source: str, target: str, move_id: str) -> None:
        """Move a tenant from ``source`` to ``target`` in idempotent steps (see store/lua/move.lua).

        The own tag records the move first, so a move interrupted at any step is resumed with
        the same id (every step is idempotent for it) by the next ``set_pool``.
        """
        own = self._keys.tenant(tenant_enc)
        for _ in range(_HOPS):
            if source == target:
                return
            await self._run(
                "move", *codecs.move_call(own, "begin", tenant_enc, target, move_id, source)
            )
            keys = self._keys.tenant(tenant_enc, source)
            dump = await self._run(
                "move", *codecs.move_call(keys, "out", tenant_enc, target, move_id, source)
            )
            moved = codecs.moved_to(dump)
            if moved is not None:  # an earlier move went elsewhere: follow it
                source = moved
                continue
            dest = self._keys.tenant(tenant_enc, target)
            state = codecs.move_dump(dump)
            await self._run(
                "move", *codecs.move_call(dest, "in", tenant_enc, source, move_id, target, state)
            )
            if OWN not in (source, target):
                await self._run(
                    "move", *codecs.move_call(own, "point", tenant_enc, target, move_id, OWN)
                )
            drop = codecs.move_call(
                keys, "drop", tenant_enc, target, move_id, source, [self._record_ttl]
            )
            await self._run("move", *drop)
            await self._run("move", *codecs.move_call(own, "end", tenant_enc, target, move_id, OWN))
            return
        raise Contended("the tenant kept moving during set_pool; try again")

    async def set_pool_plan(self, pool: str, plan: str) -> None:
        """Set the plan whose limits apply to a pool as a whole."""
        pool_enc = encode_id(validate_id(pool, what="pool"))
        if plan not in self._plans:
            raise UnknownPlan(plan, tuple(self._plans))
        await self._run(
            "admin", *codecs.admin_other_call(self._keys.pool_state(pool_enc), "set_plan", plan)
        )
        self._remember(self._pool_plans, pool_enc, plan)

    async def _switch(self, op: str, tenant_id: str | None, feature: str | None) -> None:
        field = "k"
        if feature is not None:
            field = f"k:{encode_id(validate_id(feature, what='feature'))}"
        if tenant_id is None:
            await self._run(
                "admin", *codecs.admin_other_call(self._keys.global_switches, op, field)
            )
            self._switches_read_at = -math.inf
        else:
            await self._admin(encode_id(validate_id(tenant_id, what="tenant_id")), op, field)

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
        keys = self._keys.tenant("%00ping")  # no validated id encodes to this
        await self._run(
            "status", *codecs.ping_call(keys, now=self._now_arg(), default_plan=self._default_plan)
        )

    # -- outage allowance ------------------------------------------------------------------------

    def _start_write_back(self) -> None:
        if not self._write_back_running:
            self._writing_back = asyncio.get_running_loop().create_task(self.write_back())

    async def write_back(self) -> int:
        """Write the commits owed since an outage to the store; returns how many landed.

        Runs by itself after the first script that reaches the store again; call it to wait
        for it (e.g. before shutting down). Each is a commit of an id the store never saw:
        charged once, however often it is retried. Stops at the first store error.
        """
        allowance = self._allowance
        if allowance is None or self._write_back_running:
            return 0
        self._write_back_running = True
        written = 0
        try:
            for owed in allowance.pending():
                try:
                    settlement = await self._commit(
                        owed.reservation, from_nanos(owed.cost_nanos), owed.input_tokens,
                        owed.output_tokens, owed.model, owed.request_id,
                    )  # fmt: skip
                except Exception:  # a bug must not keep the rest back, nor loop
                    log.exception("write_back_failed", reservation=owed.reservation.id)
                else:
                    if not settlement.recorded:
                        break  # the store is away again: still owed, tried again later
                allowance.written(owed.reservation.id)
                written += 1
        finally:
            self._write_back_running = False
        if written:
            self.counters.written_back += written
            log.info("outage_spend_written_back", commits=written)
        allowance.recovered()
        return written

    async def aclose(self) -> None:
        """Wait briefly for alert deliveries in flight; close the store if the fence opened it.

        Spend owed since an outage is written back first when the store answers; what cannot
        be is logged (``outage_spend_lost``) with its amount.
        """
        if self._allowance is not None and self._allowance.owed:
            await self.write_back()
            if self._allowance.owed:
                log.error("outage_spend_lost", cost_nanos=self._allowance.owed_nanos(),
                          commits=len(self._allowance.pending()))  # fmt: skip
        await self._alerts.drain()
        await self._store.aclose()
