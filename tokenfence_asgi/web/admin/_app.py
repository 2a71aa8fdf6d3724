"""``admin_app(fence, token=...)``: the admin API, dashboard and ``/metrics`` as a Starlette app."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import ConfigError, MissingExtra, TokenFenceError
from tokenfence_asgi.web.admin._access import AccessGuard
from tokenfence_asgi.web.admin._activity import FenceActivity
from tokenfence_asgi.web.admin._handlers import AdminHandlers
from tokenfence_asgi.web.admin._inputs import MAX_DAYS
from tokenfence_asgi.web.problem import FenceErrorResponse, Problem, http_exception_response

__all__ = ["admin_app"]

_MIN_TOKEN = 16
_TOKEN = re.compile(rf"[!-~]{{{_MIN_TOKEN},4096}}")

Handler = Callable[[Request], Awaitable[Response]]


def _answering(handler: Handler) -> Handler:
    """Answer the admin API's problems and the fence's errors with their JSON bodies.

    A fence error takes its status from ``web.problem`` (and its ``Retry-After`` and RateLimit
    headers when it has them), except a ``ConfigError`` (an unknown plan): a bad value sent
    by the caller, 422.
    """

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except Problem as problem:
            return problem.response()
        except TokenFenceError as error:
            status = 422 if isinstance(error, ConfigError) else None
            return FenceErrorResponse(error, status_code=status)

    return run


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
        ("top_days", top_days, MAX_DAYS),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise ConfigError(f"{name} must be an int in [1, {high}], got {value!r}")
    exporter = _metrics_for(fence, metrics)
    if exporter is None and public_metrics:
        raise ConfigError("public_metrics=True but no metrics are served")
    admin = AdminHandlers(
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
    guard = Middleware(AccessGuard, token=token, read_only=read_only, public_metrics=public_metrics)
    app = Starlette(
        routes=routes,
        middleware=[guard],
        exception_handlers={HTTPException: http_exception_response},
    )
    app.state.fence = fence
    app.state.metrics = exporter
    app.state.activity = admin.activity
    return app
