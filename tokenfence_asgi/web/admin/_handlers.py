"""The admin API's route handlers over one fence: reads, plan and pool changes, kill switches."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import UnknownPlan
from tokenfence_asgi.money import format_dollars
from tokenfence_asgi.results import TenantStatus
from tokenfence_asgi.web.admin._access import route_path
from tokenfence_asgi.web.admin._activity import FenceActivity, now_text
from tokenfence_asgi.web.admin._inputs import (
    MAX_DAYS,
    date_range,
    field_id,
    invalid,
    path_id,
    query_int,
    read_body,
)
from tokenfence_asgi.web.admin._pages import PAGE_HEADERS, PUBLIC, TYPES, dashboard_file
from tokenfence_asgi.web.admin._views import sort_key, status_json
from tokenfence_asgi.web.problem import Problem

__all__ = ["AdminHandlers"]

log = structlog.get_logger("tokenfence_asgi")

_CONCURRENCY = 16


def _today(fence: TokenFence) -> date:
    """Today (UTC) by the fence's clock (a simulation's, when it has one)."""
    return datetime.fromtimestamp(fence.now(), UTC).date()


class AdminHandlers:
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
        self.files = {name: dashboard_file(name) for name in TYPES}

    # -- helpers ----------------------------------------------------------------------------

    def today(self) -> date:
        """Today (UTC), by the fence's clock when it has one."""
        return _today(self.fence)

    async def status_or_404(self, tenant: str) -> TenantStatus:
        await self.require_known(tenant)
        return await self.fence.status(tenant)

    async def require_known(self, tenant: str) -> None:
        if not await self.fence.has_tenant(tenant):
            raise Problem(
                404, "unknown_tenant", f"no tenant {tenant!r}: it has no state and no plan assigned"
            )

    async def describe(
        self, status: TenantStatus, global_killed: bool | None = None
    ) -> dict[str, Any]:
        """The status as JSON, with which switch stops the tenant: its own or the global one."""
        data = status_json(status)
        if global_killed is None:
            global_killed = (await self.switches())["killed"]
        own = status.killed
        if own and global_killed:
            own = await self.fence.tenant_switch(status.tenant_id)
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
        items.sort(key=sort_key)
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
        result = [{"tenant_id": tenant, "cost": format_dollars(cost)} for tenant, cost in rows]
        if self.scan_cache_s:
            if len(self._tops) > 64:
                self._tops.clear()
            self._tops[(start, end, n)] = (now + self.scan_cache_s, result)
        return result

    # -- pages ------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        name = PUBLIC[route_path(request.scope)]
        return Response(self.files[name], media_type=TYPES[name], headers=PAGE_HEADERS)

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
                            "max_cost": format_dollars(limit.max_cost),
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
        days = query_int(request, "days", self.top_days, 1, MAX_DAYS)
        end = self.today()
        start = end - timedelta(days=days - 1)
        (items, truncated), top, switches = await asyncio.gather(
            self.tenant_items(), self.top(start, end, 10), self.switches()
        )
        fractions = [i["fraction"] for i in items if i["fraction"] is not None]
        return JSONResponse(
            {
                "generated_at": now_text(),
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
        tenant = path_id(request, "tenant", "tenant_id")
        return JSONResponse(await self.describe(await self.status_or_404(tenant)))

    async def usage(self, request: Request) -> Response:
        tenant = path_id(request, "tenant", "tenant_id")
        start, end = date_range(request, self.today(), 30)
        await self.status_or_404(tenant)
        rows = await self.fence.usage(tenant, start, end)
        days = [
            {
                "day": row.day.isoformat(),
                "plan": row.plan,
                "cost": format_dollars(row.cost),
                "requests": row.requests,
                "refusals": row.refusals,
                "limit": format_dollars(row.limit),
            }
            for row in rows
        ]
        return JSONResponse(
            {"tenant_id": tenant, "start": start.isoformat(), "end": end.isoformat(), "days": days}
        )

    async def top_route(self, request: Request) -> Response:
        start, end = date_range(request, self.today(), self.top_days)
        n = query_int(request, "n", 10, 1, 1000)
        return JSONResponse(
            {
                "start": start.isoformat(),
                "end": end.isoformat(),
                "tenants": await self.top(start, end, n),
            }
        )

    async def activity_route(self, request: Request) -> Response:
        limit = query_int(request, "limit", 50, 1, 10_000)
        return JSONResponse(self.activity.snapshot(limit))

    async def switches_route(self, request: Request) -> Response:
        return JSONResponse(await self.switches())

    # -- changes ----------------------------------------------------------------------------

    def _plan(self, data: dict[str, Any], field: str = "plan", *, required: bool) -> str | None:
        plan = data.get(field)
        if plan is None:
            if required:
                raise invalid(field, "is required")
            return None
        if plan not in self.fence.plans:
            raise invalid(field, str(UnknownPlan(plan, tuple(self.fence.plans)).message))
        return str(plan)

    async def set_plan(self, request: Request) -> Response:
        tenant = path_id(request, "tenant", "tenant_id")
        data = await read_body(request, {"plan": (str,)})
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
        tenant = path_id(request, "tenant", "tenant_id")
        data = await read_body(request, {"pool": (str, type(None)), "plan": (str, type(None))})
        if "pool" not in data:
            raise invalid("pool", "is required (a pool id, or null to leave the pool)")
        pool = field_id(data, "pool", "pool")
        plan = self._plan(data, required=False)
        if pool is None and plan is not None:
            raise invalid("plan", "a plan needs a pool")
        await self.fence.set_pool(tenant, pool, plan=plan)
        self._ids = None
        self.audit(request, "set_pool", tenant=tenant, pool=pool, plan=plan)
        return JSONResponse(await self.describe(await self.fence.status(tenant)))

    async def set_pool_plan(self, request: Request) -> Response:
        pool = path_id(request, "pool", "pool")
        data = await read_body(request, {"plan": (str,)})
        plan = self._plan(data, required=True)
        assert plan is not None
        await self.fence.set_pool_plan(pool, plan)
        self.audit(request, "set_pool_plan", pool=pool, plan=plan)
        return JSONResponse({"pool": pool, "plan": plan})

    async def tenant_switch(self, request: Request) -> Response:
        return await self.switch(request, path_id(request, "tenant", "tenant_id"))

    async def global_switch(self, request: Request) -> Response:
        return await self.switch(request, None)

    async def switch(self, request: Request, tenant: str | None) -> Response:
        kill = request.url.path.endswith("/kill")
        data = await read_body(request, {"feature": (str, type(None))})
        feature = field_id(data, "feature", "feature")
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
        await read_body(request, {})
        decided = await (self.fence.approve if approve else self.fence.deny)(approval)
        if not decided:
            raise Problem(
                409,
                "approval_not_pending",
                f"approval {approval!r} is not pending: decided before or expired",
            )
        state = "approved" if approve else "denied"
        self.audit(request, state, approval=approval)
        return JSONResponse({"approval_id": approval, "state": state})
