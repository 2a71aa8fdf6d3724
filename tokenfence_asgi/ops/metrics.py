"""Prometheus metrics of a fence (prometheus-client: the ``metrics`` extra).

::

    metrics = FenceMetrics(fence)                        # its own CollectorRegistry
    metrics = FenceMetrics(fence, registry=REGISTRY)     # or your app's registry
    app.mount("/metrics", metrics.asgi_app())            # or the admin app's /metrics route

Every series has bounded labels; a tenant id is never a label (thousands of tenants would be
thousands of series per metric: ask the admin API about one tenant instead). ``plan`` is one of
the configured plans, ``feature`` one of the features listed in a plan (or in ``features=``),
else ``"other"`` (``"none"`` for a call without a feature), ``reason`` and ``scope`` are fixed
sets. Exported (with the default ``namespace="tokenfence"``)::

    tokenfence_reservations_total{plan,feature}        holds granted (degraded ones included)
    tokenfence_refusals_total{reason,scope,feature}    reason: budget, budget_share, feature_cap,
                                                       requests, open_holds, killed, or the
                                                       error code
    tokenfence_spend_dollars_total{plan,feature}       charged by commits (repeats not counted)
    tokenfence_settlements_total{kind}                 committed, late, duplicate, released,
                                                       unrecorded
    tokenfence_holds_open, tokenfence_held_dollars     holds this process made and has not seen
                                                       settled, until their lease runs out
    tokenfence_script_duration_seconds{script}         store round trip of every script
    tokenfence_script_errors_total{script}             scripts that could not reach the store
    tokenfence_store_errors_total                      every store outage the fence saw
    tokenfence_allowed_without_store_total             calls let through by on_store_error="open"
    tokenfence_shadow_refusals_total                   refusals a shadow-mode plan did not raise
    tokenfence_alerts_total{threshold,metric,scope,window}
    tokenfence_alert_hook_errors_total
    tokenfence_webhook_{queued,delivered,attempts_failed,retries,dropped}_total,
    tokenfence_webhook_pending                         for each sender given to track_webhook

Counts are of this process: sum them across instances in PromQL. The observer runs inline on
every call and only counts (a dict update and a few increments).
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.engine.observe import FenceObserver
from tokenfence_asgi.errors import (
    BudgetExceeded,
    ConfigError,
    MissingExtra,
    RequestLimitExceeded,
    TenantDisabled,
    TokenFenceError,
    TooManyOpenHolds,
)
from tokenfence_asgi.ops.webhooks import WebhookSender
from tokenfence_asgi.results import Alert, Reservation, Settlement

try:  # imported when this module is: `from tokenfence_asgi import FenceMetrics` loads it lazily
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.registry import Collector
except ImportError as exc:
    raise MissingExtra(
        "prometheus-client", "metrics", needed_for="FenceMetrics", module=exc.name
    ) from exc

__all__ = ["LATENCY_BUCKETS", "FenceMetrics"]

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    float("inf"),
)
"""Script latency buckets in seconds: a healthy Redis answers in well under a millisecond."""

_MAX_TRACKED_HOLDS = 100_000
_BY_FENCE: weakref.WeakKeyDictionary[TokenFence, FenceMetrics] = weakref.WeakKeyDictionary()


def _reason(error: TokenFenceError) -> tuple[str, str]:
    """(reason, scope) labels of a refusal, from fixed sets."""
    if isinstance(error, BudgetExceeded):
        reason = {"share": "budget_share", "cap": "feature_cap"}.get(error.reason, "budget")
        return reason, error.scope if error.scope in ("tenant", "pool") else "tenant"
    if isinstance(error, TooManyOpenHolds):  # calls in flight, not a request limit
        return "open_holds", "tenant"
    if isinstance(error, RequestLimitExceeded):
        return "requests", error.scope if error.scope in ("tenant", "pool") else "tenant"
    if isinstance(error, TenantDisabled):
        scope = error.scope if error.scope in ("global", "tenant", "feature") else "tenant"
        return "killed", scope
    return error.error_code[:40], "tenant"


class FenceMetrics(FenceObserver):
    """Counts a fence's reservations, refusals, spend, holds and scripts for Prometheus.

    Made with a fence, it observes it at once (``fence.observe``) and counts its alerts
    (``fence.on_alert``). ``registry`` defaults to a new ``CollectorRegistry`` of its own, so
    several fences (or tests) never collide; pass ``prometheus_client.REGISTRY`` to export
    through your app's existing ``/metrics``. ``features`` adds feature names allowed as label
    values besides those the plans list. ``namespace`` prefixes every name.
    """

    def __init__(
        self,
        fence: TokenFence,
        *,
        registry: CollectorRegistry | None = None,
        namespace: str = "tokenfence",
        features: Collection[str] = (),
        buckets: Iterable[float] = LATENCY_BUCKETS,
    ) -> None:
        if not isinstance(fence, TokenFence):
            raise ConfigError(f"FenceMetrics needs a TokenFence, got {type(fence).__name__}")
        if isinstance(features, str):
            raise ConfigError("features must be a collection of feature names, not a string")
        self.fence = fence
        self.registry = CollectorRegistry() if registry is None else registry
        self.namespace = namespace
        known = set(features)
        for plan in fence.plans.values():
            known.update(plan.features or ())
        self._features = frozenset(known)
        self._lease_s = fence.hold_ttl
        self._holds: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._webhooks: list[WebhookSender] = []
        reg = self.registry
        at: dict[str, Any] = {"namespace": namespace, "registry": reg}  # every series' home
        plan_feature = ["plan", "feature"]
        self.reservations = Counter("reservations", "Reservations granted.", plan_feature, **at)
        self.refusals = Counter(
            "refusals", "Reservations refused, by reason.", ["reason", "scope", "feature"], **at
        )
        self.spend = Counter("spend_dollars", "Dollars charged by commits.", plan_feature, **at)
        self.settlements = Counter(
            "settlements", "Commits and releases, by outcome.", ["kind"], **at
        )
        self.script_seconds = Histogram(
            "script_duration_seconds",
            "Store round trip of each script.",
            ["script"],
            buckets=tuple(buckets),
            **at,
        )
        self.script_errors = Counter(
            "script_errors", "Scripts that could not reach the store.", ["script"], **at
        )
        self.alerts = Counter(
            "alerts", "Threshold alerts.", ["threshold", "metric", "scope", "window"], **at
        )
        self.holds_open = Gauge(
            "holds_open", "Holds this process made that are neither settled nor expired.", **at
        )
        self.holds_open.set_function(lambda: self._prune()[0])
        self.held = Gauge("held_dollars", "Dollars held by this process's open holds.", **at)
        self.held.set_function(lambda: self._prune()[1])
        reg.register(_CountersCollector(self))
        fence.observe(self)
        fence.on_alert(self._count_alert)
        _BY_FENCE.setdefault(fence, self)

    @classmethod
    def for_fence(cls, fence: TokenFence) -> FenceMetrics:
        """The metrics made first for ``fence``; made now (own registry) when there are none."""
        existing = _BY_FENCE.get(fence)
        return existing if existing is not None else cls(fence)

    def track_webhook(self, sender: WebhookSender) -> WebhookSender:
        """Export ``sender``'s delivery counts (``tokenfence_webhook_*``, labelled by its name)."""
        if not isinstance(sender, WebhookSender):
            raise ConfigError(f"track_webhook needs a WebhookSender, got {type(sender).__name__}")
        self._webhooks.append(sender)
        return sender

    # -- exposition ---------------------------------------------------------------------------

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in the text format the ``Accept`` header asks for: (body, content type)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def asgi_app(self) -> Callable[..., Any]:
        """An ASGI app serving this registry (``prometheus_client.make_asgi_app``)."""
        return make_asgi_app(self.registry)

    # -- the observer -------------------------------------------------------------------------

    def _feature(self, feature: str | None) -> str:
        if feature is None:
            return "none"
        return feature if feature in self._features else "other"

    def reserved(self, reservation: Reservation) -> None:
        self.reservations.labels(reservation.plan, self._feature(reservation.feature)).inc()
        if reservation.degraded:
            return
        holds = self._holds
        holds[reservation.id] = (time.monotonic() + self._lease_s, float(reservation.amount))
        if len(holds) > _MAX_TRACKED_HOLDS:
            holds.popitem(last=False)

    def refused(self, error: TokenFenceError, tenant_id: str, feature: str | None) -> None:
        reason, scope = _reason(error)
        self.refusals.labels(reason, scope, self._feature(feature)).inc()

    def committed(self, reservation: Reservation, settlement: Settlement) -> None:
        self._holds.pop(reservation.id, None)
        if settlement.duplicate:
            self.settlements.labels("duplicate").inc()
            return
        kind = (
            "unrecorded"
            if not settlement.recorded
            else "late"
            if settlement.late
            else ("committed")
        )
        self.settlements.labels(kind).inc()
        if settlement.cost:
            feature = self._feature(reservation.feature)
            self.spend.labels(reservation.plan, feature).inc(float(settlement.cost))

    def released(self, reservation: Reservation, settlement: Settlement) -> None:
        self._holds.pop(reservation.id, None)
        self.settlements.labels("duplicate" if settlement.duplicate else "released").inc()

    def script(self, name: str, seconds: float, ok: bool) -> None:
        self.script_seconds.labels(name).observe(seconds)
        if not ok:
            self.script_errors.labels(name).inc()

    async def _count_alert(self, alert: Alert) -> None:
        self.alerts.labels(str(alert.threshold), alert.metric, alert.scope, alert.window).inc()

    def _prune(self) -> tuple[int, float]:
        """Forget holds whose lease ran out; (count, dollars) of the rest."""
        now = time.monotonic()
        holds = self._holds
        while holds:
            oldest = next(iter(holds.values()))
            if oldest[0] > now:
                break
            holds.popitem(last=False)
        return len(holds), sum(amount for _, amount in holds.values())


class _CountersCollector(Collector):
    """The fence's own ``FenceCounters`` and the tracked webhook senders, read at scrape time."""

    def __init__(self, metrics: FenceMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return list(self._families(describe=True))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(describe=False))

    def _families(self, *, describe: bool) -> Iterator[Metric]:
        ns = self._metrics.namespace
        counters = self._metrics.fence.counters
        for name, doc, value in (
            ("store_errors", "Store outages the fence saw.", counters.store_errors),
            (
                "allowed_without_store",
                "Calls let through without the store.",
                counters.allowed_without_store,
            ),
            (
                "shadow_refusals",
                "Refusals a shadow-mode plan did not raise.",
                counters.shadow_refusals,
            ),
            ("alert_hook_errors", "Alert hooks that raised.", counters.alert_hook_errors),
            (
                "charged_unfenced",
                "Calls charged after the fact, never held (sync LiteLLM).",
                counters.charged_unfenced,
            ),
        ):
            yield CounterMetricFamily(f"{ns}_{name}", doc, value=0 if describe else value)
        senders = self._metrics._webhooks
        if not senders and not describe:
            return
        labels = ["webhook"]
        families = {
            name: CounterMetricFamily(f"{ns}_webhook_{name}", doc, labels=labels)
            for name, doc in (
                ("queued", "Alerts queued for a webhook."),
                ("delivered", "Alerts a webhook accepted."),
                ("attempts_failed", "Webhook attempts that failed."),
                ("retries", "Webhook attempts retried."),
                ("dropped", "Alerts never delivered (queue full, failed for good, closed)."),
            )
        }
        pending = GaugeMetricFamily(
            f"{ns}_webhook_pending", "Alerts queued or in flight.", labels=labels
        )
        if not describe:
            for sender in senders:
                label = [sender.name]
                stats = sender.stats
                families["queued"].add_metric(label, stats.queued)
                families["delivered"].add_metric(label, stats.delivered)
                families["attempts_failed"].add_metric(label, stats.attempts_failed)
                families["retries"].add_metric(label, stats.retries)
                families["dropped"].add_metric(label, stats.dropped)
                pending.add_metric(label, sender.pending)
        yield from families.values()
        yield pending
