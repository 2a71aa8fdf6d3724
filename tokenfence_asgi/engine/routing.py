"""Where a tenant's script runs: its location, its plans, and the corrections the scripts send.

Which plan a tenant is on and where its keys live (its own hash tag or its pool's) are cached
per fence instance. A script that finds the caller assumed wrong replies with the truth
(``moved``, ``plan``, ``pool_plan``) instead of acting; the router then runs it again where it
should, at most ``HOPS`` times, and remembers the correction. So a change made on one instance
costs the others one extra round trip, once.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from redis.exceptions import ResponseError

from tokenfence_asgi.engine.observe import Observers
from tokenfence_asgi.engine.settings import FenceSettings
from tokenfence_asgi.errors import ConfigError, Contended, InvalidAmount, StoreUnavailable
from tokenfence_asgi.results import FenceCounters, Reservation
from tokenfence_asgi.store import codecs
from tokenfence_asgi.store.client import Store
from tokenfence_asgi.store.keys import OWN, KeySpace, TenantKeys, decode_id, encode_id, validate_id
from tokenfence_asgi.store.specs import NO_LIMITS, CompiledPlan

__all__ = ["HOPS", "Route", "Router", "origin"]

log = structlog.get_logger("tokenfence_asgi")

HOPS = 8
"""Plan, pool plan, location and moved-hold corrections one call may follow."""


def _script_error(exc: ResponseError) -> Exception:
    """A script's refusal to count past 2^53 - 1 nano-dollars as a documented error."""
    if "tokenfence: counter overflow" in str(exc):
        return InvalidAmount(
            "this charge would take a window's spend past $9,007,199.25, the most its counters "
            "keep exactly; nothing was charged"
        )
    return exc


def origin(reservation: Reservation) -> str:
    """The location a reservation was made at."""
    if reservation.pool is None:
        return OWN
    return encode_id(validate_id(reservation.pool, what="pool"))


@dataclass(frozen=True, slots=True)
class Route:
    """Where a tenant's keys are and the plans that apply there."""

    location: str
    keys: TenantKeys
    plan: CompiledPlan
    pool_plan: CompiledPlan
    follow_stubs: str = "1"
    plan_name: str = ""  # the stored name (plan may be a fallback this instance has)
    pool_plan_name: str = ""

    def specs(self) -> list[str]:
        """Feature arguments, then the tenant's and the pool's limit specs."""
        return codecs.limit_specs(self.plan, self.pool_plan, self.keys.pool_state is not None)

    @property
    def pool(self) -> str | None:
        return None if self.location == OWN else decode_id(self.location)


Build = Callable[[Route], codecs.Call]
"""Makes a script's KEYS and ARGV for one route (called again after each correction)."""


class Router:
    """Runs the scripts of one fence: where a tenant lives, with the plans that apply there.

    Also keeps this instance's other cached fact, the global kill switches (at most
    ``kill_cache_s`` old), and its clock as a script argument.
    """

    def __init__(
        self,
        settings: FenceSettings,
        store: Store,
        keys: KeySpace,
        counters: FenceCounters,
        observers: Observers,
    ) -> None:
        self.settings = settings
        self.store = store
        self.keys = keys
        self.counters = counters
        self.observers = observers
        self.tenant_plans: OrderedDict[str, str] = OrderedDict()
        self.locations: OrderedDict[str, str] = OrderedDict()
        self.pool_plans: OrderedDict[str, str] = OrderedDict()
        self.switches: frozenset[str] = frozenset()
        self.switches_read_at = -math.inf
        self.on_answer: Callable[[], None] | None = None
        """Called after each script the store answered (the outage write-back's trigger)."""

    # -- caches ------------------------------------------------------------------------------

    def remember(self, cache: OrderedDict[str, str], key: str, value: str) -> None:
        """Keep ``key -> value`` in one of the caches, least recently used out first."""
        size = self.settings.cache_size
        if size == 0:
            return
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > size:
            cache.popitem(last=False)

    def compiled(self, name: str) -> CompiledPlan:
        """The configured plan ``name``; the default plan's for a plan not configured here."""
        plans = self.settings.plans
        compiled = plans.get(name)
        if compiled is None:
            # Assigned a plan this instance's configuration does not have: enforce the default
            # plan's limits rather than none.
            log.error("plan_not_configured", plan=name, using=self.settings.default_plan)
            return plans[self.settings.default_plan]
        return compiled

    def cached_plan(self, tenant_enc: str) -> str:
        """The plan this instance last saw the tenant on (the default plan when never seen)."""
        return self.tenant_plans.get(tenant_enc, self.settings.default_plan)

    async def global_switches(self) -> frozenset[str]:
        """The fields set in the global switches hash, at most ``kill_cache_s`` old."""
        # The global switches live in another cluster slot than any tenant, so they cannot be
        # read inside the reserve script; a cache of at most kill_cache_s keeps the cost to
        # one read per instance per interval.
        now = time.monotonic()
        if now - self.switches_read_at >= self.settings.kill_cache_s:
            try:
                fields = await self.store.hgetall(self.keys.global_switches)
            except StoreUnavailable:
                self.counters.store_errors += 1
                raise
            self.switches = frozenset(fields)
            self.switches_read_at = now
        return self.switches

    # -- running scripts ---------------------------------------------------------------------

    def _route(
        self, tenant_enc: str, location: str, plan: str, pool_plan: str, follow_stubs: str
    ) -> Route:
        pool_compiled = NO_LIMITS
        if location != OWN and pool_plan:
            pool_compiled = self.compiled(pool_plan)
        keys = self.keys.tenant(tenant_enc, location)
        compiled = self.compiled(plan)
        return Route(location, keys, compiled, pool_compiled, follow_stubs, plan, pool_plan)

    async def call(
        self, script: str, tenant_enc: str, build: Build, start: str | None = None
    ) -> tuple[list[str], Route]:
        """Run ``script`` for a tenant where it lives, following the scripts' corrections.

        ``start`` is where to look first instead of the cached location (a reservation's own
        location, where its record is).
        """
        location = start if start is not None else self.locations.get(tenant_enc, OWN)
        plan = self.cached_plan(tenant_enc)
        follow_stubs = "1"
        pool_plans: dict[str, str] = {}
        for _ in range(HOPS):
            pool_plan = ""
            if location != OWN:
                pool_plan = pool_plans.get(location) or self.pool_plans.get(location, "")
            route = self._route(tenant_enc, location, plan, pool_plan, follow_stubs)
            keys, args = build(route)
            reply = await self.run(script, keys, args)
            corrected = codecs.correction(reply)
            if corrected is None:
                if start is None:  # not a settlement that may end at an old location
                    self.remember(self.locations, tenant_enc, location)
                return reply, route
            value, for_record = corrected.value, corrected.for_record
            if corrected.kind == "moved":
                location = value
                # A hold's forwarding stub is followed only until the tenant itself is.
                follow_stubs = "1" if for_record and follow_stubs == "1" else "0"
                if not for_record:
                    self.remember(self.locations, tenant_enc, location)
            elif corrected.kind == "plan":
                plan = value
                self.remember(self.tenant_plans, tenant_enc, plan)
            else:
                pool_plans[location] = value
                self.remember(self.pool_plans, location, value)
        raise Contended("the tenant's plan or pool kept changing during the call; try again")

    def now_arg(self) -> str:
        """The time as a script argument: the clock's, in ms, or '' for the store's TIME."""
        clock = self.settings.clock
        if clock is None:
            return ""
        now = clock()
        if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
            raise ConfigError(f"clock() must return finite epoch seconds, got {now!r}")
        return str(int(now * 1000))

    async def run(self, name: str, keys: list[str], args: list[str]) -> list[str]:
        """Run one script once; counts store errors, tells the observers how long it took."""
        if self.observers.items:
            return await self._run_observed(name, keys, args)
        try:
            reply = await self.store.run(name, keys, args)
        except StoreUnavailable:
            self.counters.store_errors += 1
            raise
        except ResponseError as exc:
            raise _script_error(exc) from exc
        if self.on_answer is not None:
            self.on_answer()
        return reply

    async def _run_observed(self, name: str, keys: list[str], args: list[str]) -> list[str]:
        started = time.perf_counter()
        try:
            reply = await self.store.run(name, keys, args)
        except StoreUnavailable:
            self.counters.store_errors += 1
            self.observers.script(name, time.perf_counter() - started, False)
            raise
        except ResponseError as exc:
            raise _script_error(exc) from exc
        self.observers.script(name, time.perf_counter() - started, True)
        if self.on_answer is not None:
            self.on_answer()
        return reply
