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

Errors are JSON ``{"error": code, "message": text}``, rendered by ``web.problem`` as every
app's are: 401 ``unauthorized``, 403 ``forbidden`` / ``read_only``, 404 ``unknown_tenant`` (no
state and no plan assigned) / ``not_found``, 409 ``approval_not_pending``, 413
``body_too_large``, 422 ``invalid_body`` (with ``errors``, one per bad field) / ``invalid_id`` /
``invalid_query``, 503 ``ai_budget_unavailable``. Money is an exact decimal
string of dollars; times are ISO 8601 UTC. docs/admin.md has the details.

The package, a module per concern: ``_app`` (``admin_app``, the routes), ``_access`` (token,
loopback, read-only), ``_handlers`` (the routes' work), ``_inputs`` (bodies, ids, queries),
``_views`` (a status as JSON), ``_activity`` (recent refusals and alerts), ``_pages`` (the
dashboard files, in ``dashboard/``).
"""

from tokenfence_asgi.web.admin._activity import FenceActivity
from tokenfence_asgi.web.admin._app import admin_app

__all__ = ["FenceActivity", "admin_app"]
