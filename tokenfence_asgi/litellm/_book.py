"""The calls a ``TokenFenceCallback`` has open, and who each is for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import structlog

from tokenfence_asgi.calls.planner import CallPlanner
from tokenfence_asgi.context import FenceContext, current_context
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.engine.portal import Portal
from tokenfence_asgi.errors import TenantRequired
from tokenfence_asgi.litellm._state import Call, reservation_id
from tokenfence_asgi.pricing.book import PriceBook

__all__ = ["CallBook", "Unscoped"]

log = structlog.get_logger("tokenfence_asgi")

Unscoped = Literal["refuse", "allow"]


class CallBook:
    """The callback's state, and finding a call from LiteLLM's kwargs (a base of the callback)."""

    fence: TokenFence
    prices: PriceBook
    planner: CallPlanner
    _unscoped: Unscoped
    _trust_metadata: bool
    _trust_call_prices: bool
    _check_tool_calls: bool
    _calls: dict[str, Call]
    _by_call_id: dict[str, Call]
    _portal: Portal

    def _who(
        self, metadata: Mapping[str, Any]
    ) -> tuple[str | None, str | None, FenceContext | None]:
        ctx = current_context()
        tenant, feature = metadata.get("tenant_id"), metadata.get("feature")
        if ctx is not None and ctx.tenant_id is not None:
            # Inside a request or scope for a tenant, call metadata (maybe client-sent JSON
            # passed on) moves neither the charge nor its feature unless the app says it may.
            if self._trust_metadata:
                return (
                    tenant if tenant is not None else ctx.tenant_id,
                    feature if feature is not None else ctx.feature,
                    ctx,
                )
            if (tenant is not None and tenant != ctx.tenant_id) or (
                feature is not None and feature != ctx.feature
            ):
                log.warning(
                    "metadata_ignored",
                    tenant=ctx.tenant_id,
                    feature=ctx.feature,
                    metadata_tenant=str(tenant)[:200],
                    metadata_feature=str(feature)[:200],
                )
            return ctx.tenant_id, ctx.feature, ctx
        if ctx is not None and not self._trust_metadata:
            ctx.require_tenant()  # an anonymous request is refused, whatever the metadata says
        if tenant is None:
            if ctx is None:
                if self._unscoped == "allow":
                    return None, None, None
                raise TenantRequired(
                    "a LiteLLM call was made outside any request or tenant_scope and without "
                    "metadata={'tenant_id': ...}"
                )
            tenant = ctx.require_tenant()  # an anonymous request: refused
        return tenant, feature, ctx

    def _find(self, kwargs: Mapping[str, object]) -> Call | None:
        rid = reservation_id(kwargs)
        call = self._calls.get(rid) if isinstance(rid, str) else None
        if call is None:
            call_id = kwargs.get("litellm_call_id")
            call = self._by_call_id.get(call_id) if isinstance(call_id, str) else None
        return call

    def _claim(self, kwargs: Mapping[str, object]) -> Call | None:
        call = self._find(kwargs)
        if call is None or call.state != "open":
            return None
        call.state = "settling"
        return call
