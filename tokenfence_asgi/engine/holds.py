"""Reserve, commit and release: a call's hold on a tenant's budget, from the store's answer.

Each is one script run where the tenant lives (``routing``). When the store cannot be reached,
``on_store_error`` decides: refuse (``closed``), let the call through unrecorded (``open``), or
spend from this instance's outage allowance and owe the commits (``allowance``), written back
when the store answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal

import structlog

from tokenfence_asgi.config import Plan
from tokenfence_asgi.engine.alerts import AlertHub
from tokenfence_asgi.engine.allowance import Allowance, Owed
from tokenfence_asgi.engine.observe import Observers
from tokenfence_asgi.engine.routing import Route, Router, origin
from tokenfence_asgi.engine.settings import FenceSettings
from tokenfence_asgi.errors import (
    BudgetExceeded,
    Refused,
    ReservationIdConflict,
    StoreUnavailable,
    TenantDisabled,
    TooManyOpenHolds,
)
from tokenfence_asgi.money import MoneyInput, from_nanos, to_nanos
from tokenfence_asgi.results import Alert, FenceCounters, Reservation, Settlement
from tokenfence_asgi.store import codecs
from tokenfence_asgi.store.keys import encode_id, validate_id

__all__ = ["Candidates", "Holds"]

log = structlog.get_logger("tokenfence_asgi")

Candidates = Sequence[tuple[str | None, int]] | Callable[[Plan], Sequence[tuple[str | None, int]]]
"""``(model, amount nanos)`` in order of preference, or a function of the tenant's plan."""

_MAX_TOKENS = 10**12
_ORPHAN_RETRIES = (0.0, 1.0, 5.0)  # seconds before each release of a cancelled reserve's hold


def _tokens(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_TOKENS:
        raise ValueError(f"{name} must be an int in [0, {_MAX_TOKENS}], got {value!r}")
    return value


def _alerts(
    raw: list[str], tenant: str, feature: str | None, route: Route, rid: str, repeated: bool
) -> list[Alert]:
    return codecs.alerts(
        raw, tenant=tenant, feature=feature, pool=route.pool, reservation_id=rid, repeated=repeated
    )


class Holds:
    """The reserve, commit and release of one fence, and its outage write-back."""

    def __init__(
        self,
        settings: FenceSettings,
        router: Router,
        counters: FenceCounters,
        alerts: AlertHub,
        observers: Observers,
    ) -> None:
        self.settings = settings
        self.router = router
        self.counters = counters
        self.alerts = alerts
        self.observers = observers
        self.allowance: Allowance | None = None
        if settings.on_store_error == "allowance":
            self.allowance = Allowance(settings.outage_allowance_nanos)
            router.on_answer = self._answered
        self.writing_back: asyncio.Task[int] | None = None
        self._orphans: dict[asyncio.Task[None], Reservation] = {}
        self._write_back_running = False

    # -- reserve -------------------------------------------------------------------------------

    async def reserve_first(
        self,
        tenant_id: str,
        candidates: Candidates,
        feature: str | None,
        reservation_id: str | None,
        force: bool,
        count_refusal: bool = True,
    ) -> Reservation:
        """``TokenFence.reserve_first``, observed. ``count_refusal=False`` leaves a budget or
        open-holds refusal out of the daily usage (the caller tries once more)."""
        args = (tenant_id, candidates, feature, reservation_id, force, count_refusal)
        if not self.observers.items:
            return await self._reserve_first(*args)
        try:
            reservation = await self._reserve_first(*args)
        except (Refused, TenantDisabled) as error:
            if count_refusal or not isinstance(error, BudgetExceeded | TooManyOpenHolds):
                self.observers.refused(error, tenant_id, feature)
            raise
        self.observers.reserved(reservation)
        return reservation

    async def _reserve_first(
        self,
        tenant_id: str,
        candidates: Candidates,
        feature: str | None,
        reservation_id: str | None,
        force: bool = False,
        count_refusal: bool = True,
    ) -> Reservation:
        settings, router = self.settings, self.router
        tenant = validate_id(tenant_id, what="tenant_id")
        tenant_enc = encode_id(tenant)
        feat = None if feature is None else validate_id(feature, what="feature")
        feat_enc = "" if feat is None else encode_id(feat)
        rid = uuid.uuid4().hex if reservation_id is None else reservation_id
        rid = validate_id(rid, what="reservation_id")
        rid_enc = encode_id(rid)
        chosen_from: list[Sequence[tuple[str | None, int]]] = []

        def build(route: Route) -> codecs.Call:
            offered = candidates(route.plan.plan) if callable(candidates) else candidates
            amounts = codecs.candidate_amounts(offered)
            chosen_from.append(offered)
            return codecs.reserve_call(
                route.keys,
                now=router.now_arg(),
                plan=route.plan_name,
                tenant=tenant_enc,
                reservation=rid_enc,
                feature=feat_enc,
                location=route.location,
                pool_plan=route.pool_plan_name,
                enforce=settings.enforce and route.plan.plan.enforce and not force,
                amounts=amounts,
                count_refusal=count_refusal,
            )

        try:
            switches = await router.global_switches()
            if "k" in switches or (feat is not None and f"k:{feat_enc}" in switches):
                raise TenantDisabled(tenant_id=tenant, feature=feat, scope="global")
            reply, route = await router.call("reserve", tenant_enc, build)
        except asyncio.CancelledError:
            if reservation_id is None:  # an id of ours: nobody else can settle this hold
                self._release_orphan(tenant, feat, rid)
            raise
        except StoreUnavailable:
            if settings.on_store_error == "closed":
                raise
            degraded = self._reserve_without_store(tenant, tenant_enc, feat, rid, candidates)
            if degraded is None:
                raise
            return degraded
        offered = chosen_from[-1]

        answer = codecs.reserve_reply(reply)
        kind, raw_alerts = answer.kind, answer.alerts
        repeated = kind == "ok" and answer.existing
        if raw_alerts and not repeated:
            self.alerts.dispatch(_alerts(raw_alerts, tenant, feat, route, rid, False))
        if kind == "ok":
            index, nanos, expires = answer.index, answer.amount_nanos, answer.expires_ms
            if index >= len(offered):  # a retry of an id held for a longer candidate list
                raise ReservationIdConflict(
                    f"reservation_id {rid!r} already holds candidate {index + 1} of another call",
                    settled=False,
                )
            if raw_alerts and repeated:  # the first call's reply may have been lost
                self.alerts.dispatch(_alerts(raw_alerts, tenant, feat, route, rid, True))
            shadow = None
            if answer.refusal is not None and not force:
                shadow = self._refusal(answer.refusal, tenant, feat, route)
                self.counters.shadow_refusals += 1
                log.warning(
                    "reserve_would_refuse",
                    tenant=tenant,
                    feature=feat,
                    error=shadow.error_code,
                    detail=shadow.message,
                )
            return Reservation(
                id=rid,
                tenant_id=tenant,
                feature=feat,
                model=offered[index][0],
                amount=from_nanos(nanos),
                amount_nanos=nanos,
                plan=route.plan.plan.name,
                pool=route.pool,
                expires_at=datetime.fromtimestamp(expires / 1000, UTC),
                shadow_refusal=shadow,
            )
        if kind == "killed":
            log.info("reserve_refused", tenant=tenant, feature=feat, reason="killed")
            raise TenantDisabled(tenant_id=tenant, feature=feat, scope=answer.scope)
        if kind == "duplicate":
            raise ReservationIdConflict(
                f"reservation_id {rid!r} was already used and settled", settled=True
            )
        refusal = self._refusal(answer.refusal or [kind], tenant, feat, route)
        log.info("reserve_refused", tenant=tenant, feature=feat, reason=refusal.error_code)
        raise refusal

    def _release_orphan(self, tenant: str, feature: str | None, rid: str) -> None:
        """Release the hold a cancelled reserve may have made (its reply was never read).

        The store may have run the script, or may run it a moment later (the command was on its
        way): the release is tried at once and again after ``_ORPHAN_RETRIES``, until one drops
        the hold; a hold none of them finds is reclaimed when its lease ends.
        """
        zero = Decimal(0)
        orphan = Reservation(rid, tenant, feature, None, zero, amount_nanos=0, plan="")
        task = asyncio.get_running_loop().create_task(self._release_later(orphan))
        self._orphans[task] = orphan
        task.add_done_callback(self._forget_orphan)

    def _forget_orphan(self, task: asyncio.Task[None]) -> None:
        self._orphans.pop(task, None)

    async def _release_later(self, orphan: Reservation) -> None:
        for delay in _ORPHAN_RETRIES:
            await asyncio.sleep(delay)
            if await self._release_orphan_once(orphan):
                return

    async def _release_orphan_once(self, orphan: Reservation) -> bool:
        """One release of a cancelled reserve's hold; True when done (dropped, or failed)."""
        try:
            settlement = await self._release(orphan)
        except Exception as exc:
            log.warning("orphan_release_failed", reservation=orphan.id, error=repr(exc))
            return True
        if not settlement.duplicate and settlement.recorded:
            self.counters.released_after_cancel += 1
            log.info("released_after_cancel", tenant=orphan.tenant_id, reservation=orphan.id)
            return True
        return False

    async def release_orphans_now(self) -> None:
        """At close: the cancelled reserves' holds still waiting for a retry are released now,
        once each (a hold that is not there yet is left to its lease)."""
        pending = list(self._orphans.items())
        for task, _ in pending:
            task.cancel()
        for task, orphan in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self._release_orphan_once(orphan)

    def _reserve_without_store(
        self,
        tenant: str,
        tenant_enc: str,
        feat: str | None,
        rid: str,
        candidates: Candidates,
    ) -> Reservation | None:
        """A degraded reservation (``on_store_error`` open or allowance); None when this
        instance's outage allowance for the tenant is spent."""
        plan = self.router.compiled(self.router.cached_plan(tenant_enc)).plan
        offered = candidates(plan) if callable(candidates) else candidates
        codecs.candidate_amounts(offered)
        model, nanos = offered[0]
        if self.allowance is not None and not self.allowance.take(rid, tenant, nanos):
            self.counters.outage_allowance_refusals += 1
            log.warning(
                "outage_allowance_spent",
                tenant=tenant,
                feature=feat,
                limit_nanos=self.allowance.limit_nanos,
            )
            return None
        self.counters.allowed_without_store += 1
        log.warning("reserve_allowed_without_store", tenant=tenant, feature=feat)
        amount = from_nanos(nanos)
        return Reservation(rid, tenant, feat, model, amount, nanos, plan.name, degraded=True)

    def _refusal(
        self, details: list[str], tenant: str, feature: str | None, route: Route
    ) -> Refused:
        return codecs.refusal(
            details,
            tenant=tenant,
            feature=feature,
            plan=route.plan.plan,
            pool_plan=route.pool_plan.plan,
            pool=route.pool,
            hold_ttl_s=int(self.settings.hold_ms_arg) / 1000,
        )

    # -- commit --------------------------------------------------------------------------------

    async def commit(
        self,
        reservation: Reservation,
        cost: MoneyInput,
        input_tokens: int,
        output_tokens: int,
        model: str | None,
        request_id: str | None,
    ) -> Settlement:
        """Settle one reservation now (``TokenFence.commit``), observed: the one way a commit
        reaches the store, whoever sends it (the fence, or a queue that defers it)."""
        settlement = await self._commit(
            reservation, cost, input_tokens, output_tokens, model, request_id
        )
        if self.observers.items:
            self.observers.committed(reservation, settlement)
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
        settings, router = self.settings, self.router
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

        def build(route: Route) -> codecs.Call:
            return codecs.commit_call(
                route.keys,
                now=router.now_arg(),
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
            reply, route = await router.call("commit", tenant_enc, build, origin(reservation))
        except StoreUnavailable:
            if settings.on_store_error == "closed":
                raise
            if self.allowance is not None:
                owed = Owed(reservation, nanos, input_tokens, output_tokens, model, request_id)
                self.allowance.owe(owed)
                log.warning(
                    "commit_owed", tenant=tenant, reservation=reservation.id, cost_nanos=nanos
                )
            else:
                log.warning("commit_not_recorded", tenant=tenant, reservation=reservation.id)
            return Settlement(reservation.id, from_nanos(nanos), recorded=False)
        if self.allowance is not None and reservation.degraded:
            self.allowance.forget(reservation)
        settled = codecs.commit_reply(reply)
        if settled.alerts:  # a duplicate repeats the first commit's (its reply may be lost)
            repeated = settled.duplicate
            self.alerts.dispatch(_alerts(settled.alerts, tenant, feature, route, rid, repeated))
        charged, late = settled.charged_nanos, settled.late
        if settled.duplicate:
            log.info("commit_duplicate", tenant=tenant, reservation=reservation.id)
            # cost: what the first settlement charged (a retried call learns it was charged)
            return Settlement(reservation.id, from_nanos(charged), duplicate=True)
        if late:
            log.warning("commit_late", tenant=tenant, reservation=reservation.id, cost_nanos=nanos)
        return Settlement(reservation.id, from_nanos(charged), late=late)

    # -- release -------------------------------------------------------------------------------

    async def release(self, reservation: Reservation) -> Settlement:
        """``TokenFence.release``, observed."""
        settlement = await self._release(reservation)
        if self.observers.items:
            self.observers.released(reservation, settlement)
        return settlement

    async def _release(self, reservation: Reservation) -> Settlement:
        settings, router = self.settings, self.router
        if not isinstance(reservation, Reservation):
            raise TypeError(f"release needs a Reservation, got {type(reservation).__name__}")
        if reservation.degraded:
            if self.allowance is not None:
                self.allowance.forget(reservation)
            return Settlement(reservation.id, Decimal(0), recorded=False)
        tenant_enc = encode_id(validate_id(reservation.tenant_id, what="tenant_id"))
        rid_enc = encode_id(validate_id(reservation.id, what="reservation_id"))

        def build(route: Route) -> codecs.Call:
            return codecs.release_call(
                route.keys,
                now=router.now_arg(),
                tenant=tenant_enc,
                reservation=rid_enc,
                record_ttl=settings.record_ttl_arg,
                reclaim=settings.reclaim_arg,
                location=route.location,
                follow_stubs=route.follow_stubs,
                default_plan=settings.default_plan,
                usage_days=settings.usage_days_arg,
            )

        try:
            reply, _ = await router.call("release", tenant_enc, build, origin(reservation))
        except StoreUnavailable:
            if settings.on_store_error == "closed":
                raise
            log.warning(
                "release_not_recorded", tenant=reservation.tenant_id, reservation=reservation.id
            )
            return Settlement(reservation.id, Decimal(0), recorded=False)
        released = codecs.release_reply(reply).released
        return Settlement(reservation.id, Decimal(0), duplicate=not released)

    # -- outage write-back ---------------------------------------------------------------------

    def _answered(self) -> None:
        """The store answered a script: write back what is owed, in the background, once."""
        if self.allowance is not None and self.allowance.owed and not self._write_back_running:
            self.writing_back = asyncio.get_running_loop().create_task(self.write_back())

    async def write_back(self) -> int:
        """``TokenFence.write_back``: the commits owed since an outage, to the store."""
        allowance = self.allowance
        if allowance is None or self._write_back_running:
            return 0
        self._write_back_running = True
        written = 0
        try:
            for owed in allowance.pending():
                try:
                    settlement = await self._commit(
                        owed.reservation,
                        from_nanos(owed.cost_nanos),
                        owed.input_tokens,
                        owed.output_tokens,
                        owed.model,
                        owed.request_id,
                    )
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

    async def settle_owed(self) -> None:
        """At close: write back what is owed when the store answers; log what cannot be."""
        if self.allowance is None or not self.allowance.owed:
            return
        await self.write_back()
        if self.allowance.owed:
            log.error(
                "outage_spend_lost",
                cost_nanos=self.allowance.owed_nanos(),
                commits=len(self.allowance.pending()),
            )
