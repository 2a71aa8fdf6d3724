"""The admin app: a JSON API, a dashboard page and Prometheus metrics for one fence.

::

    from tokenfence_asgi.web.admin import admin_app

    app.mount("/admin", admin_app(fence, token=os.environ["TOKENFENCE_ADMIN_TOKEN"]))

Every API route and ``/metrics`` need ``Authorization: Bearer <token>`` (compared in constant
time); without it the answer is 401. The dashboard page and its two static files hold no data
and are served without the token: the page asks for the token, keeps it in the tab's
``sessionStorage`` and sends it as a Bearer header with every request it makes.

Without a token the app is only built with ``read_only=True``, and then it answers only
requests made on the loopback interface: client and server address both loopback, ``Host``
``localhost``, ``127.0.0.1`` or ``[::1]`` (any port; another name is a page using DNS
rebinding), and no header a proxy or CDN adds (``Forwarded``, ``Via``, ``X-Forwarded-*``,
``X-Real-IP``, ``True-Client-IP``, ``CF-*``, ...): anything else gets 403. A read-only app
(with or without a token) refuses every change with 403.

Routes, relative to where the app is mounted (``{tenant}`` and ``{pool}`` percent-encoded, so
an id may contain ``/``). Every ``/api/tenants/{tenant}...`` route is also served as
``/api/tenant...?id=<tenant>`` (and ``/api/pools/{pool}/plan`` as ``/api/pool/plan?id=``): the
only form for the ids ``.`` and ``..``, which clients resolve as relative path steps and which
are therefore refused (422) as path segments::

    GET  /                              the dashboard
    GET  /api/info                      plans, default plan, read-only, what is available
    GET  /api/overview                  what the dashboard shows, in one request
    GET  /api/tenants                   tenants with spend and remaining budget, fullest first
    GET  /api/tenants/{tenant}          one tenant's status
    GET  /api/tenants/{tenant}/usage    daily usage (?start=YYYY-MM-DD&end=YYYY-MM-DD)
    PUT  /api/tenants/{tenant}/plan     {"plan": "pro"}
    PUT  /api/tenants/{tenant}/pool     {"pool": "acme-org" | null, "plan": "team"}
    POST /api/tenants/{tenant}/kill     {} or {"feature": "chat"}
    POST /api/tenants/{tenant}/revive   {} or {"feature": "chat"}
    PUT  /api/pools/{pool}/plan         {"plan": "team"}
    GET  /api/switches                  the global kill switches
    POST /api/kill, /api/revive         global: {} (everything) or {"feature": "chat"}
    POST /api/approvals/{id}/approve    a pending tool call; 409 when it is not pending
    POST /api/approvals/{id}/deny
    GET  /api/top                       top spenders (?start=&end=&n=10)
    GET  /api/activity                  recent refusals and alerts seen by this process
    GET  /metrics                       Prometheus text format (needs prometheus-client)

Errors are JSON ``{"error": code, "message": text}``: 401 ``unauthorized``, 403 ``forbidden`` /
``read_only``, 404 ``unknown_tenant`` (no state and no plan assigned) / ``not_found``, 409
``approval_not_pending``, 413 ``body_too_large``, 422 ``invalid_body`` (with ``errors``, one per
bad field) / ``invalid_id`` / ``invalid_query``, 503 ``ai_budget_unavailable``. Money is an
exact decimal string of dollars; times are ISO 8601 UTC. docs/admin.md has the details.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from importlib import resources
from typing import Any
from urllib.parse import unquote

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenfence_asgi.engine.alerts import alert_to_dict
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.engine.observe import FenceObserver
from tokenfence_asgi.errors import (
    BudgetExceeded,
    ConfigError,
    InvalidId,
    MissingExtra,
    RequestLimitExceeded,
    StoreUnavailable,
    TokenFenceError,
    UnknownPlan,
)
from tokenfence_asgi.results import Alert, TenantStatus, WindowStatus
from tokenfence_asgi.store.client import STORE_ERRORS
from tokenfence_asgi.store.keys import encode_id, validate_id
from tokenfence_asgi.web.auth import token_matches

__all__ = ["FenceActivity", "admin_app"]

log = structlog.get_logger("tokenfence_asgi")

_MIN_TOKEN = 16
_TOKEN = re.compile(rf"[!-~]{{{_MIN_TOKEN},4096}}")
_MAX_BODY = 16 * 1024
_MAX_DAYS = 366
_CONCURRENCY = 16
_PUBLIC = {"/": "index.html", "/dashboard.js": "dashboard.js", "/dashboard.css": "dashboard.css"}
_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
# Headers a reverse proxy, load balancer or CDN adds to say whom it forwards for: a no-token
# app refuses a request carrying any of them (its peer is loopback, the client is not).
_PROXY_HEADERS = frozenset(
    b"forwarded via x-forwarded x-real-ip x-client-ip client-ip true-client-ip x-cluster-client-ip"
    b" x-proxyuser-ip x-originating-ip x-remote-ip x-remote-addr x-host wl-proxy-client-ip"
    b" proxy-client-ip".split()
)
_PROXY_HEADER_PREFIXES = tuple(
    b"x-forwarded- x-original- x-real- cf- fastly- x-envoy- x-azure- x-appengine- x-amzn-".split()
)
# The Host of a browser that really talks to a loopback address (DNS rebinding sends its own).
_LOOPBACK_HOST = re.compile(rb"(?:localhost|127\.0\.0\.1|\[::1\])(?::[0-9]{1,5})?", re.IGNORECASE)
_WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_DOT_SEGMENTS = (".", "..")
_QUERY_ROUTES = {"tenant": "/api/tenant", "pool": "/api/pool"}


# -- recent activity -------------------------------------------------------------------------

_ACTIVITY: weakref.WeakKeyDictionary[TokenFence, FenceActivity] = weakref.WeakKeyDictionary()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _money(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:f}"


class FenceActivity(FenceObserver):
    """The last ``size`` refusals and alerts of a fence, in memory, for the dashboard.

    ``FenceActivity.for_fence(fence)`` makes one per fence (observing its refusals and its
    alerts) and returns the same one after. It sees what this process saw: with several
    instances, each dashboard shows its own instance's recent events.
    """

    def __init__(self, size: int = 200) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 100_000:
            raise ConfigError(f"size must be an int in [1, 100000], got {size!r}")
        self.refusals: deque[dict[str, Any]] = deque(maxlen=size)
        self.alerts: deque[dict[str, Any]] = deque(maxlen=size)

    @classmethod
    def for_fence(cls, fence: TokenFence, size: int = 200) -> FenceActivity:
        """The activity log of ``fence``, made and attached on first use."""
        activity = _ACTIVITY.get(fence)
        if activity is None:
            activity = cls(size)
            fence.observe(activity)
            fence.on_alert(activity.alert)
            _ACTIVITY[fence] = activity
        return activity

    def refused(self, error: TokenFenceError, tenant_id: str, feature: str | None) -> None:
        entry: dict[str, Any] = {
            "at": _now_iso(),
            "tenant_id": tenant_id,
            "feature": feature,
            "error": error.error_code,
            "message": error.message[:500],
            "window": getattr(error, "window", None),
        }
        if isinstance(error, BudgetExceeded):
            entry.update(
                reason=error.reason, scope=error.scope, pool=error.pool,
                used=_money(error.total_cost), held=_money(error.held),
                limit=_money(error.max_cost), requested=_money(error.requested),
            )  # fmt: skip
        elif isinstance(error, RequestLimitExceeded):
            entry.update(scope=error.scope, pool=error.pool, requests=error.requests,
                         max_requests=error.max_requests)  # fmt: skip
        else:
            entry["scope"] = getattr(error, "scope", None)
        self.refusals.append(entry)

    async def alert(self, alert: Alert) -> None:
        """The ``on_alert`` hook: remember the alert."""
        self.alerts.append({"at": _now_iso(), **alert_to_dict(alert)})

    def snapshot(self, limit: int = 50) -> dict[str, list[dict[str, Any]]]:
        """The newest ``limit`` refusals and alerts, newest first."""
        return {
            "refusals": list(reversed(self.refusals))[:limit],
            "alerts": list(reversed(self.alerts))[:limit],
        }


# -- JSON shapes -----------------------------------------------------------------------------


def _fraction(used: Decimal | int, limit: Decimal | int | None) -> float | None:
    if limit is None or limit <= 0:
        return None
    return round(float(Decimal(used) / Decimal(limit)), 4)


def _window_json(w: WindowStatus) -> dict[str, Any]:
    return {
        "window": w.window,
        "kind": w.kind,
        "scope": w.scope,
        "used": _money(w.used),
        "held": _money(w.held),
        "limit": _money(w.limit),
        "remaining": _money(w.remaining),
        "carried": _money(w.carried),
        "requests": w.requests,
        "max_requests": w.max_requests,
        "resets_at": w.resets_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "features": {name: _money(v) for name, v in w.features.items()},
        "fraction": _fraction(w.used + w.held, w.limit),
        "request_fraction": _fraction(w.requests, w.max_requests),
    }


def _binding(windows: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The window closest to its limit (cost or requests): the one that refuses first."""
    best: dict[str, Any] | None = None
    for w in windows:
        for metric, key in (("cost", "fraction"), ("requests", "request_fraction")):
            value = w[key]
            if value is not None and (best is None or value > best["fraction"]):
                best = {
                    "window": w["window"],
                    "scope": w["scope"],
                    "metric": metric,
                    "fraction": value,
                    "used": w["used"],
                    "held": w["held"],
                    "limit": w["limit"],
                    "remaining": w["remaining"],
                    "requests": w["requests"],
                    "max_requests": w["max_requests"],
                    "resets_at": w["resets_at"],
                }
    return best


def _status_json(status: TenantStatus) -> dict[str, Any]:
    windows = [_window_json(w) for w in status.windows]
    pool_windows = [_window_json(w) for w in status.pool_windows]
    binding = _binding([*windows, *pool_windows])
    return {
        "tenant_id": status.tenant_id,
        "plan": status.plan,
        "pool": status.pool,
        "pool_plan": status.pool_plan,
        "killed": status.killed,
        "killed_features": list(status.killed_features),
        "held": _money(status.held),
        "open_holds": status.open_holds,
        "windows": windows,
        "pool_windows": pool_windows,
        "fraction": None if binding is None else binding["fraction"],
        "binding": binding,
    }


def _sort_key(item: dict[str, Any]) -> tuple[int, float, str]:
    fraction = item["fraction"]
    return (0 if fraction is not None else 1, -(fraction or 0.0), item["tenant_id"])


# -- errors ----------------------------------------------------------------------------------


class _Problem(Exception):
    """An HTTP error answer of the admin API."""

    def __init__(
        self, status: int, error: str, message: str, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.errors = errors

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.error, "message": self.message}
        if self.errors:
            body["errors"] = self.errors
        headers = {"WWW-Authenticate": 'Bearer realm="tokenfence-admin"'}
        return JSONResponse(
            body, status_code=self.status, headers=headers if self.status == 401 else None
        )


def _invalid(field: str, message: str) -> _Problem:
    return _Problem(
        422, "invalid_body", f"{field}: {message}", [{"field": field, "message": message}]
    )


def _fence_error(error: TokenFenceError) -> JSONResponse:
    status = error.http_status
    if isinstance(error, ConfigError):  # a bad value sent by the caller (plan, pool)
        status = 422
    return JSONResponse(error.to_dict(), status_code=status)


# -- request helpers -------------------------------------------------------------------------


async def _body(request: Request, allowed: dict[str, tuple[type, ...]]) -> dict[str, Any]:
    """The JSON object body, its fields checked against ``allowed`` (name -> accepted types)."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > _MAX_BODY:
            raise _Problem(413, "body_too_large", f"the body is larger than {_MAX_BODY} bytes")
    if not raw.strip():
        data: object = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise _Problem(422, "invalid_body", f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _Problem(422, "invalid_body", "the body must be a JSON object")
    errors = []
    for key, value in data.items():
        if key not in allowed:
            errors.append({"field": key, "message": f"unknown field; expected {sorted(allowed)}"})
            continue
        types = allowed[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            errors.append({"field": key, "message": f"must be {names}, got {json.dumps(value)}"})
    if errors:
        text = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise _Problem(422, "invalid_body", text, errors)
    return data


def _path_id(request: Request, name: str, what: str) -> str:
    """The id named by the route: its ``{name}`` path segment, or on the ``?id=`` routes (which
    have no such segment) the one ``id`` query parameter."""
    if name in request.path_params:
        value = unquote(request.path_params[name])
        if value in _DOT_SEGMENTS:
            # A browser, httpx or curl resolves "." and ".." (also as %2E) as relative path
            # steps: /api/tenants/../kill is sent as /api/kill, the global switch. Whether such
            # a segment arrives intact depends on the client and any proxy, so it is never
            # read from a path.
            raise _Problem(
                422,
                "invalid_id",
                f"{what} {value!r} cannot be a URL path segment (clients resolve it as a"
                f" relative path); give it as ?id= on the {_QUERY_ROUTES[name]} routes",
            )
    else:
        values = request.query_params.getlist("id")
        if len(values) != 1:
            raise _Problem(422, "invalid_query", f"id (the {what}) is required, once: ?id=<{what}>")
        value = values[0]
    try:
        return validate_id(value, what=what)
    except InvalidId as exc:
        raise _Problem(422, "invalid_id", exc.message) from None


def _field_id(data: dict[str, Any], field: str, what: str) -> str | None:
    value = data.get(field)
    if value is None:
        return None
    try:
        return validate_id(value, what=what)
    except InvalidId as exc:
        raise _invalid(field, exc.message) from None


def _query_date(request: Request, name: str, default: date) -> date:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise _Problem(
            422, "invalid_query", f"{name} must be a date YYYY-MM-DD, got {text!r}"
        ) from None


def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise _Problem(422, "invalid_query", f"{name} must be an integer in [{low}, {high}]")
    return int(text)


def _date_range(request: Request, today: date, default_days: int) -> tuple[date, date]:
    end = _query_date(request, "end", today)
    start = _query_date(request, "start", end - timedelta(days=default_days - 1))
    if start > end:
        raise _Problem(422, "invalid_query", f"start ({start}) is after end ({end})")
    if (end - start).days >= _MAX_DAYS:
        raise _Problem(422, "invalid_query", f"at most {_MAX_DAYS} days at a time")
    return start, end


# -- access control --------------------------------------------------------------------------


def _loopback(address: object) -> bool:
    if not isinstance(address, list | tuple) or not address:
        return False
    host = str(address[0])
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _on_loopback(scope: Scope) -> bool:
    """Whether a request came straight from this machine, by a name only this machine has.

    Both addresses loopback (nobody else can connect), no proxy header (a proxy on this
    machine would forward others), and one ``Host`` naming a loopback address: a page whose
    name an attacker points at 127.0.0.1 (DNS rebinding) sends its own name and is refused.
    """
    if not (_loopback(scope.get("client")) and _loopback(scope.get("server"))):
        return False
    hosts = []
    for name, value in scope.get("headers", ()):
        if name in _PROXY_HEADERS or name.startswith(_PROXY_HEADER_PREFIXES):
            return False
        if name == b"host":
            hosts.append(value)
    return len(hosts) == 1 and _LOOPBACK_HOST.fullmatch(hosts[0]) is not None


def _partly_decoded(raw: bytes) -> str:
    """``raw`` percent-decoded except ``%2F`` and ``%25``, so an id may hold ``/`` (and ``%``)."""

    def decode(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        return match.group(0) if code.upper() in (b"2F", b"25") else bytes([int(code, 16)])

    return _ESCAPE.sub(decode, raw).decode("utf-8", "replace")


class _Guard:
    """Token and loopback checks, read-only refusals, and ids that may contain ``/``."""

    def __init__(
        self, app: ASGIApp, *, token: str | None, read_only: bool, public_metrics: bool
    ) -> None:
        self.app = app
        self.token = token
        self.read_only = read_only
        self.public_metrics = public_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        scope = self._with_raw_ids(scope)
        route = _route_path(scope)
        request = Request(scope)
        problem = self._check(scope, route, request)
        if problem is not None:
            await problem.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope, route: str, request: Request) -> _Problem | None:
        if self.token is None and not _on_loopback(scope):
            return _Problem(
                403,
                "forbidden",
                "this admin app has no token: it answers on loopback only (a loopback address,"
                " Host localhost, 127.0.0.1 or [::1], no proxy in between)",
            )
        public = route in _PUBLIC or (route == "/metrics" and self.public_metrics)
        if (
            self.token is not None
            and not public
            and not token_matches(request.headers.get("authorization"), self.token)
        ):
            return _Problem(
                401,
                "unauthorized",
                "a valid admin token is required (Authorization: Bearer <token>)",
            )
        if self.read_only and scope["method"] in _WRITE_METHODS:
            return _Problem(403, "read_only", "this admin app is read-only")
        return None

    @staticmethod
    def _with_raw_ids(scope: Scope) -> Scope:
        raw = scope.get("raw_path")
        if not isinstance(raw, bytes) or b"%" not in raw:
            return scope
        raw = raw.split(b"?", 1)[0]
        path = _partly_decoded(raw)
        if unquote(path) != scope["path"] or path == scope["path"]:
            return scope  # a server or proxy rewrote the path: keep the decoded one
        return {**scope, "path": path}


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root) :]
    return path or "/"


# -- what the engine does not offer publicly (yet) ------------------------------------------


def _today(fence: TokenFence) -> date:
    """Today (UTC) by the fence's clock when it has one (a simulation), else the wall's."""
    clock = getattr(fence, "_clock", None)
    now = clock() if callable(clock) else time.time()
    return datetime.fromtimestamp(now, UTC).date()


async def _tenant_switch(fence: TokenFence, tenant: str) -> bool:
    """Whether the tenant's own kill switch is on (``status().killed`` also counts the global
    one). Read from its state hash, where it lives now: its own tag or its pool's."""
    enc = encode_id(tenant)
    own = fence._keys.tenant(enc)
    try:
        killed, location = await fence._store.client.hmget(own.state, ["k", "loc"])
        if location:
            location = location.decode() if isinstance(location, bytes) else str(location)
            killed = await fence._store.client.hget(fence._keys.tenant(enc, location).state, "k")
    except STORE_ERRORS as exc:
        raise StoreUnavailable(f"budget store unavailable: {exc}") from exc
    return killed is not None


# -- the app ---------------------------------------------------------------------------------


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("dashboard", name).read_bytes()


class _Admin:
    """The route handlers, bound to one fence."""

    def __init__(
        self,
        fence: TokenFence,
        *,
        read_only: bool,
        has_token: bool,
        metrics: Any,
        activity: FenceActivity,
        max_tenants: int,
        top_days: int,
        scan_cache_s: float,
    ) -> None:
        self.fence = fence
        self.scan_cache_s = scan_cache_s
        self._ids: tuple[float, list[str], bool] | None = None
        self._tops: dict[tuple[date, date, int], tuple[float, list[dict[str, Any]]]] = {}
        self.read_only = read_only
        self.has_token = has_token
        self.metrics = metrics
        self.activity = activity
        self.max_tenants = max_tenants
        self.top_days = top_days
        self.files = {name: _static(name) for name in _TYPES}

    # -- helpers ----------------------------------------------------------------------------

    def today(self) -> date:
        """Today (UTC), by the fence's clock when it has one."""
        return _today(self.fence)

    async def status_or_404(self, tenant: str) -> TenantStatus:
        await self.require_known(tenant)
        return await self.fence.status(tenant)

    async def require_known(self, tenant: str) -> None:
        if not await self.fence.has_tenant(tenant):
            raise _Problem(
                404, "unknown_tenant", f"no tenant {tenant!r}: it has no state and no plan assigned"
            )

    async def describe(
        self, status: TenantStatus, global_killed: bool | None = None
    ) -> dict[str, Any]:
        """The status as JSON, with which switch stops the tenant: its own or the global one."""
        data = _status_json(status)
        if global_killed is None:
            global_killed = (await self.switches())["killed"]
        own = status.killed
        if own and global_killed:
            own = await _tenant_switch(self.fence, status.tenant_id)
        data["tenant_killed"] = own
        data["global_killed"] = global_killed
        return data

    def audit(self, request: Request, action: str, **fields: Any) -> None:
        client = request.client.host if request.client else None
        log.info("admin_action", action=action, client=client, **fields)

    async def tenant_ids(self) -> tuple[list[str], bool]:
        """Up to ``max_tenants`` tenant ids (a store scan, cached ``scan_cache_s``)."""
        now = time.monotonic()
        if self._ids is not None and self._ids[0] > now:
            return self._ids[1], self._ids[2]
        ids: list[str] = []
        truncated = False
        found = self.fence.tenants()
        try:
            async for tenant in found:
                if len(ids) >= self.max_tenants:
                    truncated = True
                    break
                ids.append(tenant)
        finally:
            close = getattr(found, "aclose", None)
            if close is not None:
                await close()  # the scan stops here, not when the generator is collected
        if self.scan_cache_s:
            self._ids = (now + self.scan_cache_s, ids, truncated)
        return ids, truncated

    async def tenant_items(self) -> tuple[list[dict[str, Any]], bool]:
        ids, truncated = await self.tenant_ids()
        gate = asyncio.Semaphore(_CONCURRENCY)

        async def one(tenant: str) -> dict[str, Any]:
            async with gate:
                return await self.describe(await self.fence.status(tenant), global_killed)

        global_killed = (await self.switches())["killed"]
        items = list(await asyncio.gather(*(one(t) for t in ids)))
        items.sort(key=_sort_key)
        return items, truncated

    async def switches(self) -> dict[str, Any]:
        killed, features = await self.fence.global_switches()
        return {"killed": killed, "killed_features": list(features)}

    async def top(self, start: date, end: date, n: int) -> list[dict[str, Any]]:
        """The top spenders (a store scan, cached ``scan_cache_s``)."""
        now = time.monotonic()
        cached = self._tops.get((start, end, n))
        if cached is not None and cached[0] > now:
            return cached[1]
        rows = await self.fence.top_spenders(start, end, n)
        result = [{"tenant_id": tenant, "cost": _money(cost)} for tenant, cost in rows]
        if self.scan_cache_s:
            if len(self._tops) > 64:
                self._tops.clear()
            self._tops[(start, end, n)] = (now + self.scan_cache_s, result)
        return result

    # -- pages ------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        name = _PUBLIC[_route_path(request.scope)]
        return Response(self.files[name], media_type=_TYPES[name], headers=_PAGE_HEADERS)

    async def metrics_route(self, request: Request) -> Response:
        body, content_type = self.metrics.exposition(request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    # -- reads ------------------------------------------------------------------------------

    async def info(self, request: Request) -> Response:
        plans = []
        for plan in self.fence.plans.values():
            plans.append(
                {
                    "name": plan.name,
                    "limits": [
                        {
                            "window": limit.window,
                            "kind": limit.kind,
                            "max_cost": _money(limit.max_cost),
                            "max_requests": limit.max_requests,
                        }
                        for limit in plan.limits
                    ],
                    "features": dict(plan.features or {}),
                    "enforce": plan.enforce,
                }
            )
        return JSONResponse(
            {
                "read_only": self.read_only,
                "auth": "token" if self.has_token else "loopback",
                "default_plan": self.fence.default_plan,
                "plans": plans,
                "metrics": self.metrics is not None,
                "max_tenants": self.max_tenants,
            }
        )

    async def overview(self, request: Request) -> Response:
        days = _query_int(request, "days", self.top_days, 1, _MAX_DAYS)
        end = self.today()
        start = end - timedelta(days=days - 1)
        (items, truncated), top, switches = await asyncio.gather(
            self.tenant_items(), self.top(start, end, 10), self.switches()
        )
        fractions = [i["fraction"] for i in items if i["fraction"] is not None]
        return JSONResponse(
            {
                "generated_at": _now_iso(),
                "read_only": self.read_only,
                "tenants": items,
                "truncated": truncated,
                "summary": {
                    "tenants": len(items),
                    "at_risk": sum(1 for f in fractions if 0.8 <= f < 1),
                    "exhausted": sum(1 for f in fractions if f >= 1),
                    "killed": sum(1 for i in items if i["tenant_killed"]),
                },
                "top_spenders": {
                    "start": start.isoformat(),
                    "end": end.isoformat(),
                    "days": days,
                    "tenants": top,
                },
                "switches": switches,
                "activity": self.activity.snapshot(25),
                "counters": {
                    "store_errors": self.fence.counters.store_errors,
                    "allowed_without_store": self.fence.counters.allowed_without_store,
                    "alerts": self.fence.counters.alerts,
                    "alert_hook_errors": self.fence.counters.alert_hook_errors,
                },
            }
        )

    async def tenants(self, request: Request) -> Response:
        items, truncated = await self.tenant_items()
        return JSONResponse({"tenants": items, "truncated": truncated})

    async def tenant(self, request: Request) -> Response:
        tenant = _path_id(request, "tenant", "tenant_id")
        return JSONResponse(await self.describe(await self.status_or_404(tenant)))

    async def usage(self, request: Request) -> Response:
        tenant = _path_id(request, "tenant", "tenant_id")
        start, end = _date_range(request, self.today(), 30)
        await self.status_or_404(tenant)
        rows = await self.fence.usage(tenant, start, end)
        days = [
            {
                "day": row.day.isoformat(),
                "plan": row.plan,
                "cost": _money(row.cost),
                "requests": row.requests,
                "refusals": row.refusals,
                "limit": _money(row.limit),
            }
            for row in rows
        ]
        return JSONResponse(
            {"tenant_id": tenant, "start": start.isoformat(), "end": end.isoformat(), "days": days}
        )

    async def top_route(self, request: Request) -> Response:
        start, end = _date_range(request, self.today(), self.top_days)
        n = _query_int(request, "n", 10, 1, 1000)
        return JSONResponse(
            {
                "start": start.isoformat(),
                "end": end.isoformat(),
                "tenants": await self.top(start, end, n),
            }
        )

    async def activity_route(self, request: Request) -> Response:
        limit = _query_int(request, "limit", 50, 1, 10_000)
        return JSONResponse(self.activity.snapshot(limit))

    async def switches_route(self, request: Request) -> Response:
        return JSONResponse(await self.switches())

    # -- changes ----------------------------------------------------------------------------

    def _plan(self, data: dict[str, Any], field: str = "plan", *, required: bool) -> str | None:
        plan = data.get(field)
        if plan is None:
            if required:
                raise _invalid(field, "is required")
            return None
        if plan not in self.fence.plans:
            raise _invalid(field, str(UnknownPlan(plan, tuple(self.fence.plans)).message))
        return str(plan)

    async def set_plan(self, request: Request) -> Response:
        tenant = _path_id(request, "tenant", "tenant_id")
        data = await _body(request, {"plan": (str,)})
        plan = self._plan(data, required=True)
        assert plan is not None
        existed = await self.fence.has_tenant(tenant)
        await self.fence.set_plan(tenant, plan)
        if not existed:
            self._ids = None  # a new tenant: list it at once
        self.audit(request, "set_plan", tenant=tenant, plan=plan, created=not existed)
        status = await self.describe(await self.fence.status(tenant))
        return JSONResponse(status, status_code=200 if existed else 201)

    async def set_pool(self, request: Request) -> Response:
        tenant = _path_id(request, "tenant", "tenant_id")
        data = await _body(request, {"pool": (str, type(None)), "plan": (str, type(None))})
        if "pool" not in data:
            raise _invalid("pool", "is required (a pool id, or null to leave the pool)")
        pool = _field_id(data, "pool", "pool")
        plan = self._plan(data, required=False)
        if pool is None and plan is not None:
            raise _invalid("plan", "a plan needs a pool")
        await self.fence.set_pool(tenant, pool, plan=plan)
        self._ids = None
        self.audit(request, "set_pool", tenant=tenant, pool=pool, plan=plan)
        return JSONResponse(await self.describe(await self.fence.status(tenant)))

    async def set_pool_plan(self, request: Request) -> Response:
        pool = _path_id(request, "pool", "pool")
        data = await _body(request, {"plan": (str,)})
        plan = self._plan(data, required=True)
        assert plan is not None
        await self.fence.set_pool_plan(pool, plan)
        self.audit(request, "set_pool_plan", pool=pool, plan=plan)
        return JSONResponse({"pool": pool, "plan": plan})

    async def tenant_switch(self, request: Request) -> Response:
        return await self.switch(request, _path_id(request, "tenant", "tenant_id"))

    async def global_switch(self, request: Request) -> Response:
        return await self.switch(request, None)

    async def switch(self, request: Request, tenant: str | None) -> Response:
        kill = request.url.path.endswith("/kill")
        data = await _body(request, {"feature": (str, type(None))})
        feature = _field_id(data, "feature", "feature")
        if tenant is not None:
            await self.require_known(tenant)
        if kill:
            await self.fence.kill(tenant, feature=feature)
        else:
            await self.fence.revive(tenant, feature=feature)
        self.audit(request, "kill" if kill else "revive", tenant=tenant, feature=feature)
        if tenant is None:
            return JSONResponse(await self.switches())
        return JSONResponse(await self.describe(await self.fence.status(tenant)))

    async def decide(self, request: Request) -> Response:
        approve = request.url.path.endswith("/approve")
        approval = unquote(request.path_params["approval"])
        await _body(request, {})
        decided = await (self.fence.approve if approve else self.fence.deny)(approval)
        if not decided:
            raise _Problem(
                409,
                "approval_not_pending",
                f"approval {approval!r} is not pending: decided before or expired",
            )
        state = "approved" if approve else "denied"
        self.audit(request, state, approval=approval)
        return JSONResponse({"approval_id": approval, "state": state})


Handler = Callable[[Request], Awaitable[Response]]


def _answering(handler: Handler) -> Handler:
    """Turn the admin API's problems and the fence's errors into JSON answers."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except _Problem as problem:
            return problem.response()
        except TokenFenceError as error:
            return _fence_error(error)

    return run


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": code, "message": exc.detail}, status_code=exc.status_code, headers=exc.headers
    )


def _metrics_for(fence: TokenFence, metrics: object) -> Any:
    if metrics is False:
        return None
    try:
        from tokenfence_asgi.ops.metrics import FenceMetrics
    except MissingExtra:
        if metrics is None:  # the default: metrics when prometheus-client is installed
            return None
        raise
    if metrics is None or metrics is True:
        return FenceMetrics.for_fence(fence)
    if not isinstance(metrics, FenceMetrics):
        raise ConfigError(f"metrics must be a FenceMetrics, a bool or None, got {metrics!r}")
    return metrics


def admin_app(
    fence: TokenFence,
    *,
    token: str | None = None,
    read_only: bool = False,
    metrics: Any = None,
    public_metrics: bool = False,
    max_tenants: int = 500,
    top_days: int = 7,
    activity_size: int = 200,
    scan_cache_s: float = 10.0,
) -> Starlette:
    """The admin API, dashboard and ``/metrics`` of ``fence`` as a Starlette app to mount.

    ``token`` (at least 16 characters) is the admin Bearer token; without one the app is only
    built with ``read_only=True`` and then answers on loopback only. ``read_only`` refuses
    every change (403). ``metrics`` is a ``FenceMetrics`` to serve at ``/metrics``; ``None``
    (default) serves the fence's (``FenceMetrics.for_fence``) when ``prometheus-client`` is
    installed, ``False`` serves none. ``public_metrics=True`` lets ``/metrics`` be scraped
    without the token. ``max_tenants`` bounds the tenants listed (fullest first; ``truncated``
    says when there were more); ``top_days`` is the dashboard's top-spender period;
    ``activity_size`` how many recent refusals and alerts are kept. Listing tenants and top
    spenders scans the store; ``scan_cache_s`` is how long a scan's result is reused (statuses
    are read fresh on every request; 0: scan every time).

    ``token`` and the other options are fixed when the app is built; mount one app per fence.
    """
    if not isinstance(fence, TokenFence):
        raise ConfigError(f"admin_app needs a TokenFence, got {type(fence).__name__}")
    if not isinstance(read_only, bool) or not isinstance(public_metrics, bool):
        raise ConfigError("read_only and public_metrics must be True or False")
    if token is None:
        if not read_only:
            raise ConfigError(
                "admin_app needs token=...: the admin API changes budgets and kill switches."
                " Without a token it can only be read_only=True, served on loopback"
            )
    elif not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise ConfigError(
            f"token must be at least {_MIN_TOKEN} printable ASCII characters without spaces"
            " (e.g. secrets.token_urlsafe(32))"
        )
    if (
        isinstance(scan_cache_s, bool)
        or not isinstance(scan_cache_s, int | float)
        or not 0 <= scan_cache_s <= 3600
    ):
        raise ConfigError(f"scan_cache_s must be a number in [0, 3600], got {scan_cache_s!r}")
    for name, value, high in (
        ("max_tenants", max_tenants, 100_000),
        ("top_days", top_days, _MAX_DAYS),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise ConfigError(f"{name} must be an int in [1, {high}], got {value!r}")
    exporter = _metrics_for(fence, metrics)
    if exporter is None and public_metrics:
        raise ConfigError("public_metrics=True but no metrics are served")
    admin = _Admin(
        fence,
        read_only=read_only,
        has_token=token is not None,
        metrics=exporter,
        activity=FenceActivity.for_fence(fence, activity_size),
        max_tenants=max_tenants,
        top_days=top_days,
        scan_cache_s=float(scan_cache_s),
    )
    routes = [
        Route("/", admin.page, methods=["GET"]),
        Route("/dashboard.js", admin.page, methods=["GET"]),
        Route("/dashboard.css", admin.page, methods=["GET"]),
        Route("/api/info", _answering(admin.info), methods=["GET"]),
        Route("/api/overview", _answering(admin.overview), methods=["GET"]),
        Route("/api/tenants", _answering(admin.tenants), methods=["GET"]),
    ]
    # Each tenant route twice: the id as a path segment, or (for any id, and the only way for
    # "." and "..") as ?id= on /api/tenant..., which is what the dashboard sends.
    for t in ("/api/tenants/{tenant}", "/api/tenant"):
        routes += [
            Route(t, _answering(admin.tenant), methods=["GET"]),
            Route(t + "/usage", _answering(admin.usage), methods=["GET"]),
            Route(t + "/plan", _answering(admin.set_plan), methods=["PUT"]),
            Route(t + "/pool", _answering(admin.set_pool), methods=["PUT"]),
            Route(t + "/kill", _answering(admin.tenant_switch), methods=["POST"]),
            Route(t + "/revive", _answering(admin.tenant_switch), methods=["POST"]),
        ]
    routes += [
        Route("/api/pools/{pool}/plan", _answering(admin.set_pool_plan), methods=["PUT"]),
        Route("/api/pool/plan", _answering(admin.set_pool_plan), methods=["PUT"]),
        Route("/api/switches", _answering(admin.switches_route), methods=["GET"]),
        Route("/api/kill", _answering(admin.global_switch), methods=["POST"]),
        Route("/api/revive", _answering(admin.global_switch), methods=["POST"]),
        Route("/api/approvals/{approval}/approve", _answering(admin.decide), methods=["POST"]),
        Route("/api/approvals/{approval}/deny", _answering(admin.decide), methods=["POST"]),
        Route("/api/top", _answering(admin.top_route), methods=["GET"]),
        Route("/api/activity", _answering(admin.activity_route), methods=["GET"]),
    ]
    if exporter is not None:
        routes.append(Route("/metrics", admin.metrics_route, methods=["GET"]))
    guard = Middleware(_Guard, token=token, read_only=read_only, public_metrics=public_metrics)
    app = Starlette(
        routes=routes, middleware=[guard], exception_handlers={HTTPException: _http_error}
    )
    app.state.fence = fence
    app.state.metrics = exporter
    app.state.activity = admin.activity
    return app
