"""Budget alerts delivered to a webhook: signed, retried, and never in the way of an LLM call.

::

    sender = WebhookSender("https://ops.example.com/hooks/ai", secret=os.environ["HOOK_SECRET"])
    fence.on_alert(sender)
    ...
    await sender.aclose()  # at shutdown: delivers what is queued (bounded wait)

Calling the sender only puts the alert on a bounded in-memory queue and returns; a background
task POSTs it. A full queue drops the alert (counted, logged), so a dead receiver costs memory
bounded by ``queue_size`` and never time on the request path. Each delivery is tried up to
``max_attempts`` times with exponential backoff (``backoff_s`` doubling, capped at
``max_backoff_s``, with jitter; a ``Retry-After`` is honoured up to the cap) on connection
errors, timeouts, 408, 425, 429 and 5xx; any other non-2xx answer is final. A delivery that
fails for good is logged (``webhook_dropped``) and counted in ``stats``.

The request::

    POST <url>
    Content-Type: application/json
    TokenFence-Event: budget_alert
    TokenFence-Delivery: 3f0c...e1      (the same for every report of one alert: deduplicate on it)
    TokenFence-Signature: t=1767225600,v1=5d41402abc4b2a76b9719d911017c592...

    {"alert": {"feature": null, "limit": "5", "metric": "cost", "pool": null,
     "repeated": false, "reservation_id": "9b1d...07", "scope": "tenant", "tenant_id": "acme",
     "threshold": 80, "used": "4.02", "window": "1d"},
     "created_at": "2026-01-01T00:00:00Z", "id": "3f0c...e1", "text": "...", "type": "budget_alert"}

The delivery id is the same on every retry of a delivery and, when the alert names the
reservation that raised it, on every report of that alert: a call repeated after a lost reply
reports its alerts again (``"repeated": true``), from this or another instance, under the id of
the first report (see ``delivery_id``).

``v1`` is the lowercase hex HMAC-SHA256, keyed with the shared secret, of ``f"{t}."`` (the
Unix time of the attempt in seconds, then a dot) followed by the raw request body. To verify:
recompute it over the body bytes as received (before any JSON parsing), compare in constant
time, and reject a ``t`` more than a few minutes from your clock (replays). ``verify_signature``
does exactly that. Several ``v1=`` entries may appear (one per secret while a secret is rotated);
one match is enough.

Sending needs httpx (the ``webhooks`` extra); signing and verifying (``ops.webhook_signing``, whose
names this module re-exports) need nothing else.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import structlog

from tokenfence_asgi.engine.alerts import alert_to_dict
from tokenfence_asgi.errors import ConfigError, InvalidAmount, MissingExtra
from tokenfence_asgi.money import MAX_LIMIT_NANOS, format_time, format_usd, to_nanos
from tokenfence_asgi.ops.webhook_signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    delivery_id,
    secret_bytes,
    sign_payload,
    verify_signature,
)
from tokenfence_asgi.results import Alert

if TYPE_CHECKING:
    import httpx

__all__ = [
    "SIGNATURE_HEADER",
    "WebhookSender",
    "WebhookStats",
    "delivery_id",
    "sign_payload",
    "verify_signature",
]

log = structlog.get_logger("tokenfence_asgi")

_RETRY_STATUSES = frozenset({408, 425, 429})
_THRESHOLDS = (50, 80, 100)
_MAX = 10 * MAX_LIMIT_NANOS  # spend may pass a limit; it never gets near this


@dataclass(slots=True)
class WebhookStats:
    """What a ``WebhookSender`` did since it was made.

    ``attempts_failed`` counts single attempts that failed (each retry that follows is one
    ``retries``); ``dropped_full`` alerts found the queue full, ``dropped_failed`` failed for
    good (out of attempts, or a final 4xx), ``dropped_closed`` were still queued at ``aclose``.
    """

    queued: int = 0
    delivered: int = 0
    attempts_failed: int = 0
    retries: int = 0
    dropped_full: int = 0
    dropped_failed: int = 0
    dropped_closed: int = 0

    @property
    def dropped(self) -> int:
        """Alerts that were never delivered, for any reason."""
        return self.dropped_full + self.dropped_failed + self.dropped_closed


@dataclass(frozen=True, slots=True)
class _Item:
    alert: Alert
    delivery: str
    created_at: datetime


def _redact(url: str) -> str:
    """The URL for logs and labels: scheme, host and port only (paths and queries of webhook
    URLs often carry a secret, e.g. Slack's)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, "", "", ""))


def _positive(name: str, value: object, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= maximum:
        raise ConfigError(f"{name} must be a number in (0, {maximum:g}], got {value!r}")
    return float(value)


def _count(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return value


def _usd(amount: Decimal) -> str:
    try:
        return format_usd(to_nanos(amount, max_nanos=_MAX))
    except InvalidAmount:
        return f"${amount:f}"


def _describe(alert: Alert) -> str:
    who = f"tenant {alert.tenant_id!r}"
    if alert.scope == "pool":
        who = f"pool {alert.pool!r} (tenant {alert.tenant_id!r})"
    if alert.metric == "cost":
        amounts = f"{_usd(alert.used)} of {_usd(alert.limit)}"
        what = "cost limit"
    else:
        amounts = f"{alert.used:f} of {alert.limit:f} requests"
        what = "request limit"
    feature = f", feature {alert.feature!r}" if alert.feature else ""
    return f"{who} reached {alert.threshold}% of its {alert.window} {what} ({amounts}{feature})"


class WebhookSender:
    """An alert hook that POSTs each alert, HMAC-signed, to ``url`` from a background task.

    Register it with ``fence.on_alert(sender)``. ``secret`` (at least 16 bytes) keys the
    signature (see the module docs and ``verify_signature``). ``timeout_s`` bounds each attempt;
    ``max_attempts``, ``backoff_s`` and ``max_backoff_s`` shape the retries; ``queue_size``
    bounds the alerts waiting; ``concurrency`` is how many deliveries run at once (1 keeps
    them in order). ``thresholds`` (e.g. ``{80, 100}``) sends only those crossings.
    ``headers`` are added to every request. ``client`` is an ``httpx.AsyncClient`` you own
    (default: one the sender makes and ``aclose`` closes). ``name`` names the sender in logs
    and metrics (default: the URL's scheme, host and port; never its path, which may be secret).
    Needs httpx (``MissingExtra`` without it: ``pip install 'tokenfence-asgi[webhooks]'``).
    """

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        queue_size: int = 1000,
        concurrency: int = 1,
        thresholds: Collection[int] | None = None,
        headers: Mapping[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
        name: str | None = None,
    ) -> None:
        try:
            import httpx  # noqa: F401  (delivers the alerts)
        except ImportError as exc:
            raise MissingExtra(
                "httpx", "webhooks", needed_for="WebhookSender", module=exc.name
            ) from exc
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"url must be an http:// or https:// URL, got {url!r}")
        self.url = url
        self._secret = secret_bytes(secret)
        self._timeout = _positive("timeout_s", timeout_s, 300)
        self._attempts = _count("max_attempts", max_attempts, 1, 100)
        self._backoff = _positive("backoff_s", backoff_s, 3600)
        self._max_backoff = _positive("max_backoff_s", max_backoff_s, 3600)
        self._queue_size = _count("queue_size", queue_size, 1, 10**6)
        self._concurrency = _count("concurrency", concurrency, 1, 64)
        if thresholds is not None:
            bad = [t for t in thresholds if t not in _THRESHOLDS]
            if bad or isinstance(thresholds, str):
                raise ConfigError(f"thresholds must be among {_THRESHOLDS}, got {thresholds!r}")
        self._thresholds = None if thresholds is None else frozenset(thresholds)
        self._headers = dict(headers or {})
        self._client = client
        self._own_client = client is None
        self._queue: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = 0
        self._closed = False
        self.name = _redact(url) if name is None else str(name)[:100]
        self.stats = WebhookStats()

    def __repr__(self) -> str:
        return f"WebhookSender({self.name!r})"

    @property
    def _log(self) -> Any:
        # bound per use, not once: logging configured after the sender was made applies
        return log.bind(webhook=self.name)

    # -- the hook -----------------------------------------------------------------------------

    async def __call__(self, alert: Alert) -> None:
        """The ``on_alert`` hook: queue ``alert`` and return at once."""
        self.submit(alert)

    def submit(self, alert: Alert) -> bool:
        """Queue ``alert`` for delivery; False when it was dropped (queue full, closed, filtered).

        Must be called from a running event loop (the delivery task runs there).
        """
        if self._thresholds is not None and alert.threshold not in self._thresholds:
            return False
        if self._closed:
            self.stats.dropped_closed += 1
            self._log.warning("webhook_dropped", reason="closed", tenant=alert.tenant_id)
            return False
        if len(self._queue) >= self._queue_size:
            self.stats.dropped_full += 1
            self._log.warning(
                "webhook_dropped",
                reason="queue_full",
                queue_size=self._queue_size,
                tenant=alert.tenant_id,
                threshold=alert.threshold,
                window=alert.window,
            )
            return False
        self._ensure_workers()
        self._queue.append(_Item(alert, delivery_id(alert), datetime.now(UTC)))
        self.stats.queued += 1
        assert self._wakeup is not None
        self._wakeup.set()
        return True

    @property
    def pending(self) -> int:
        """Alerts queued or being delivered."""
        return len(self._queue) + self._busy

    def _ensure_workers(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new event loop (tests, a restarted app): tasks and client of the old one are dead.
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._workers = []
            self._busy = 0
            if self._own_client:
                self._client = None
        self._workers = [w for w in self._workers if not w.done()]
        while len(self._workers) < self._concurrency:
            task = loop.create_task(self._work(), name="tokenfence-webhook")
            self._workers.append(task)

    # -- delivery -----------------------------------------------------------------------------

    def body_of(self, item_alert: Alert, delivery: str, created_at: datetime) -> bytes:
        """The JSON body sent for an alert (compact, keys sorted)."""
        payload: dict[str, Any] = {
            "type": "budget_alert",
            "id": delivery,
            "created_at": format_time(created_at, timespec="seconds"),
            "alert": alert_to_dict(item_alert),
            "text": _describe(item_alert),
        }
        return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()

    async def _work(self) -> None:
        wakeup = self._wakeup
        assert wakeup is not None
        while True:
            if not self._queue:
                wakeup.clear()
                await wakeup.wait()
                continue
            item = self._queue.popleft()
            self._busy += 1
            try:
                await self._deliver(item)
            except asyncio.CancelledError:
                self.stats.dropped_closed += 1
                raise
            except Exception:  # a bug must not kill the worker
                self.stats.dropped_failed += 1
                self._log.exception("webhook_dropped", reason="error", delivery=item.delivery)
            finally:
                self._busy -= 1

    def _http(self) -> httpx.AsyncClient:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self._timeout), follow_redirects=False
            )
        return self._client

    async def _deliver(self, item: _Item) -> None:
        import httpx  # there since __init__

        alert = item.alert
        body = self.body_of(alert, item.delivery, item.created_at)
        log = self._log.bind(delivery=item.delivery, tenant=alert.tenant_id)
        last = ""
        for attempt in range(1, self._attempts + 1):
            headers = {
                **self._headers,
                "Content-Type": "application/json",
                "User-Agent": "tokenfence-asgi-webhook",
                EVENT_HEADER: "budget_alert",
                DELIVERY_HEADER: item.delivery,
                SIGNATURE_HEADER: sign_payload(self._secret, body, int(time.time())),
            }
            retry_after: float | None = None
            try:
                response = await self._http().post(
                    self.url, content=body, headers=headers, timeout=self._timeout
                )
            except httpx.HTTPError as exc:  # connection refused, timeout, protocol error
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                status = response.status_code
                if 200 <= status < 300:
                    self.stats.delivered += 1
                    log.info(
                        "webhook_delivered",
                        attempt=attempt,
                        status=status,
                        threshold=alert.threshold,
                    )
                    return
                last = f"HTTP {status}"
                if status not in _RETRY_STATUSES and status < 500:
                    self.stats.attempts_failed += 1
                    self.stats.dropped_failed += 1
                    log.error(
                        "webhook_dropped",
                        reason="rejected",
                        status=status,
                        attempt=attempt,
                        threshold=alert.threshold,
                    )
                    return
                retry_after = _retry_after(response.headers.get("retry-after"))
            self.stats.attempts_failed += 1
            if attempt == self._attempts:
                break
            delay = min(self._max_backoff, self._backoff * 2 ** (attempt - 1))
            delay *= random.uniform(0.5, 1.0)  # jitter: receivers coming back are not stampeded
            if retry_after is not None:
                delay = min(self._max_backoff, max(delay, retry_after))
            self.stats.retries += 1
            log.warning(
                "webhook_attempt_failed", attempt=attempt, error=last, retry_in_s=round(delay, 3)
            )
            await asyncio.sleep(delay)
        self.stats.dropped_failed += 1
        log.error(
            "webhook_dropped",
            reason="attempts_exhausted",
            attempts=self._attempts,
            error=last,
            threshold=alert.threshold,
            window=alert.window,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until nothing is queued or in flight (at most ``timeout_s``); True if so."""
        deadline = time.monotonic() + timeout_s
        while self.pending and self._workers:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return not self.pending

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stop taking alerts, deliver the queued ones (at most ``timeout_s``), then stop.

        What is still queued afterwards is dropped (``stats.dropped_closed``, logged).
        """
        self._closed = True
        same_loop = self._loop is asyncio.get_running_loop()
        if same_loop:
            await self.drain(timeout_s)
        left = len(self._queue)
        if left:
            self.stats.dropped_closed += left
            self._log.warning("webhook_dropped", reason="closed", count=left)
            self._queue.clear()
        if same_loop:
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._own_client and self._client is not None:
            if same_loop:
                await self._client.aclose()
            self._client = None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP date: the backoff applies instead
    return seconds if 0 <= seconds < 86400 else None
