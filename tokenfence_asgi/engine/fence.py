"""``TokenFence``: the engine's public face, a thin facade over one part per concern.

``settings`` (options, validated once), ``routing`` (where a script runs; plan and pool
corrections), ``holds`` (reserve, commit, release), ``controls`` (plans, pools, switches),
``usage`` (status, daily usage, ledger; its facade methods are the ``UsageMethods`` mixin),
``approvals`` (tool calls), ``alerts``, ``observe``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis, RedisCluster

from tokenfence_asgi.config import Plan
from tokenfence_asgi.engine.alerts import AlertHook, AlertHub
from tokenfence_asgi.engine.approvals import Approvals
from tokenfence_asgi.engine.commits import CommitQueue
from tokenfence_asgi.engine.controls import Controls
from tokenfence_asgi.engine.holds import Candidates, Holds
from tokenfence_asgi.engine.observe import FenceObserver, Observers
from tokenfence_asgi.engine.portal import Portal
from tokenfence_asgi.engine.routing import Router
from tokenfence_asgi.engine.settings import Clock, FenceSettings, OnStoreError
from tokenfence_asgi.engine.usage import UsageMethods, UsageReader
from tokenfence_asgi.errors import BudgetExceeded, InvalidAmount, TooManyOpenHolds
from tokenfence_asgi.money import MoneyInput, from_nanos, to_nanos
from tokenfence_asgi.policy import Policy
from tokenfence_asgi.pricing.book import ModelPrice, PriceBook
from tokenfence_asgi.results import (
    FenceCounters,
    Reservation,
    Settlement,
)
from tokenfence_asgi.store.client import Store
from tokenfence_asgi.store.compiled import ScriptSettings, compiled_sources
from tokenfence_asgi.store.keys import KeySpace

__all__ = ["TokenFence"]

T = TypeVar("T")
C = TypeVar("C")


class TokenFence(UsageMethods):
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
    ``commit_queue`` (default 1,000) bounds the commits ``commit_soon`` may leave to the
    background (``fence.commits``, see ``tokenfence_asgi.engine.commits``); 0 sends each one
    before ``commit_soon`` returns.
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
        commit_queue: int = 1000,
    ) -> None:
        settings = FenceSettings.of(
            plans=plans,
            default_plan=default_plan,
            prefix=prefix,
            clock=clock,
            on_store_error=on_store_error,
            outage_allowance=outage_allowance,
            enforce=enforce,
            hold_ttl=hold_ttl,
            record_ttl=record_ttl,
            timeout_s=timeout_s,
            reclaim_batch=reclaim_batch,
            kill_cache_s=kill_cache_s,
            cache_size=cache_size,
            policy=policy,
            approval_ttl=approval_ttl,
            ledger_retention=ledger_retention,
            ledger_maxlen=ledger_maxlen,
            usage_days=usage_days,
            max_open_holds=max_open_holds,
            default_output_tokens=default_output_tokens,
            prices=prices,
            default_price=default_price,
        )
        self.settings = settings
        """The fence's options, validated (a frozen ``FenceSettings``)."""
        self.default_output_tokens = settings.default_output_tokens
        """The output allowance of an LLM call that sets none and whose plan names none."""
        self.prices = settings.prices
        """The price book every integration of this fence prices calls with (see ``prices``)."""
        self.portal = Portal("use the async client (AsyncOpenAI, AsyncAnthropic) there")
        """Runs this fence's coroutines for sync callers (see ``run_sync``)."""
        self.counters = FenceCounters()
        self._keys = KeySpace(settings.prefix)
        self._store = Store.connect(redis_url=redis_url, redis=redis, timeout_s=timeout_s)
        scripts = ScriptSettings(
            default_plan=settings.default_plan,
            hold_ms=settings.hold_ms_arg,
            reclaim=settings.reclaim_arg,
            record_ttl_s=settings.record_ttl_arg,
            usage_days=settings.usage_days_arg,
            max_open_holds=settings.max_open_holds_arg,
            ledger_maxlen=settings.ledger_maxlen_arg,
            ledger_retention_ms=settings.ledger_retention_arg,
        )
        self._store.install(compiled_sources(settings.plans, scripts))
        self._alerts = AlertHub(self.counters)
        self._observers = Observers()
        self._router = Router(settings, self._store, self._keys, self.counters, self._observers)
        self._holds = Holds(settings, self._router, self.counters, self._alerts, self._observers)
        self._controls = Controls(self._router)
        self._usage = UsageReader(self._router)
        self._approvals = Approvals(self._router, self._usage.stored_plan)
        self.commits = CommitQueue(
            self.commit, self._store, self.counters, max_pending=commit_queue
        )
        """The commits ``commit_soon`` left to the background; ``await fence.commits.flush()``
        waits for them."""

    # -- configuration -----------------------------------------------------------------------

    @property
    def plans(self) -> dict[str, Plan]:
        """The configured plans by name."""
        return {name: compiled.plan for name, compiled in self.settings.plans.items()}

    @property
    def default_plan(self) -> str:
        """The plan of tenants that have none assigned."""
        return self.settings.default_plan

    @property
    def record_ttl(self) -> int:
        """Seconds a settled reservation is remembered (repeats within it are recognised)."""
        return int(self.settings.record_ttl_arg)

    @property
    def hold_ttl(self) -> float:
        """The lease of a hold, in seconds."""
        return int(self.settings.hold_ms_arg) / 1000

    @property
    def prefix(self) -> str:
        """The prefix of every key this fence writes (``"tf"`` by default)."""
        return self.settings.prefix

    def now(self) -> float:
        """The time in epoch seconds by the fence's clock when it has one (a simulation), else
        this machine's. The scripts use the store's clock (Redis TIME) unless a clock is set."""
        clock = self.settings.clock
        return float(clock()) if clock is not None else time.time()

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

    # -- reserve ---------------------------------------------------------------------------------

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
        tenant still raises ``TenantDisabled``). Refused for budget or open holds while commits
        of the tenant (or its pool) wait in ``commits``, it tries once more after they landed:
        their holds may be taking more than those calls cost. Only the refusal the caller gets
        is counted (daily usage, observers): a first try made while commits wait counts none.
        """
        holds = self._holds
        if not self.commits.pending:
            return await holds.reserve_first(tenant_id, candidates, feature, reservation_id, force)
        try:
            return await holds.reserve_first(
                tenant_id, candidates, feature, reservation_id, force, count_refusal=False
            )
        except (BudgetExceeded, TooManyOpenHolds) as refusal:
            if self.commits.holds_queued(tenant_id, getattr(refusal, "pool", None)):
                await self.commits.flush()
        return await holds.reserve_first(tenant_id, candidates, feature, reservation_id, force)

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
            reservation,
            from_nanos(nanos),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model=model,
            request_id=request_id,
        )

    # -- settle and close: every commit and release passes through here -------------------------

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
        return await self._holds.commit(
            reservation, cost, input_tokens, output_tokens, model, request_id
        )

    async def commit_soon(
        self,
        reservation: Reservation,
        cost: MoneyInput,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        model: str | None = None,
        request_id: str | None = None,
    ) -> None:
        """``commit``, sent in the background with others (one round trip for many).

        For a caller that does not need the ``Settlement``: the hold covers the call until the
        commit lands, so the limits hold meanwhile. Arguments are checked now (``commit``'s
        errors); a store error later is logged and counted (``counters.commit_errors``). When
        ``commit_queue`` commits already wait, this one is made now, awaited. ``aclose`` sends
        what is queued; ``await fence.commits.flush()`` waits for it.
        """
        await self.commits.put(
            reservation,
            cost,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model=model,
            request_id=request_id,
        )

    async def release(self, reservation: Reservation) -> Settlement:
        """Drop the hold without charging (the call failed before costing anything). Idempotent."""
        return await self._holds.release(reservation)

    async def write_back(self) -> int:
        """Write the commits owed since an outage to the store; returns how many landed.

        Runs by itself after the first script that reaches the store again; call it to wait
        for it (e.g. before shutting down). Each is a commit of an id the store never saw:
        charged once, however often it is retried. Stops at the first store error.
        """
        return await self._holds.write_back()

    async def aclose(self) -> None:
        """Wait briefly for alert deliveries in flight; close the store if the fence opened it.

        Spend owed since an outage is written back first when the store answers; what cannot
        be is logged (``outage_spend_lost``) with its amount. Commits queued by
        ``commit_soon`` are sent first, and the holds of reserves cancelled in flight that
        wait for a retried release are released at once.
        """
        self.commits.close()
        await self.commits.flush()
        await self._holds.release_orphans_now()
        await self._holds.settle_owed()
        await self._alerts.drain()
        await self._store.aclose()

    # -- tool-call policy -----------------------------------------------------------------------

    def policy_for(self, plan: Plan) -> Policy:
        """The tool-call policy of a plan: the fence's policy merged with the plan's."""
        return self._approvals.policy_for(plan)

    async def plan_of(self, tenant_id: str) -> Plan:
        """The tenant's plan as this instance last saw it (one status read when never seen)."""
        return await self._approvals.plan_of(tenant_id)

    async def check_tool(
        self, action: str, *, tenant_id: str, approval_id: str | None = None
    ) -> None:
        """Check a tool call (``action`` like ``"tool:db:delete:users"``) against the policy.

        Returns when it is allowed. Raises ``PolicyDenied`` when denied, and ``ApprovalRequired``
        (carrying a new pending ``approval_id``, kept ``approval_ttl`` seconds) when it needs an
        operator; once approved (``approve``), the call passes again once with that id.
        """
        await self._approvals.check_tool(action, tenant_id, approval_id)

    async def approve(self, approval_id: str) -> bool:
        """Approve a pending tool call; False when it was not pending (decided or expired)."""
        return await self._approvals.decide(approval_id, "approved")

    async def deny(self, approval_id: str) -> bool:
        """Deny a pending tool call; False when it was not pending (decided or expired)."""
        return await self._approvals.decide(approval_id, "denied")

    # -- operator controls: plans, pools, switches ------------------------------------------------

    async def set_plan(self, tenant_id: str, plan: str) -> None:
        """Assign a configured plan to a tenant; every instance honours it on its next reserve."""
        await self._controls.set_plan(tenant_id, plan)

    async def set_pool(self, tenant_id: str, pool: str | None, *, plan: str | None = None) -> None:
        """Put a tenant in a pool (``None``: take it out), optionally setting the pool's plan.

        A pool's limits are checked in the same script as its members' own limits. The tenant's
        spend, open holds, plan and switches move with it: nothing is lost or counted twice;
        spend already charged to a pool's limits stays with that pool. A pool needs a plan,
        given here the first time (``plan=``) or set before with ``set_pool_plan``. Safe to
        repeat: an interrupted move is completed by calling again with the same arguments.
        """
        await self._controls.set_pool(tenant_id, pool, plan)

    async def set_pool_plan(self, pool: str, plan: str) -> None:
        """Set the plan whose limits apply to a pool as a whole."""
        await self._controls.set_pool_plan(pool, plan)

    async def kill(self, tenant_id: str | None = None, *, feature: str | None = None) -> None:
        """Refuse AI calls: of a tenant, of one feature of a tenant, or (no tenant) of everyone.

        Takes effect at once for the tenant's switches and within ``kill_cache_s`` (default
        1 s) on every instance for the global ones.
        """
        await self._controls.switch("kill", tenant_id, feature)

    async def revive(self, tenant_id: str | None = None, *, feature: str | None = None) -> None:
        """Undo ``kill`` with the same arguments."""
        await self._controls.switch("revive", tenant_id, feature)

    async def tenant_switch(self, tenant_id: str) -> bool:
        """Whether the tenant's own kill switch is on (``status().killed`` also counts the
        global one). One or two reads of its state where it lives, own tag or pool."""
        return await self._controls.tenant_switch(tenant_id)

    async def global_switches(self) -> tuple[bool, tuple[str, ...]]:
        """The fence-wide kill switches: (everything killed, killed features), at most
        ``kill_cache_s`` old."""
        return await self._controls.global_switches()
