"""Tool-call policy: allow, deny, or hold a tool call for an operator's approval (used once)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import structlog

from tokenfence_asgi.config import Plan
from tokenfence_asgi.engine.routing import Router
from tokenfence_asgi.errors import ApprovalRequired, InvalidId, PolicyDenied
from tokenfence_asgi.policy import Decision, Policy
from tokenfence_asgi.store import codecs
from tokenfence_asgi.store.keys import decode_id, encode_id, validate_id

__all__ = ["Approvals"]

log = structlog.get_logger("tokenfence_asgi")


class Approvals:
    """The tool-call policy of one fence and its pending approvals (see ``TokenFence``)."""

    def __init__(self, router: Router, stored_plan: Callable[[str], Awaitable[str]]) -> None:
        self.router = router
        self.settings = router.settings
        self._stored_plan = stored_plan  # a tenant's plan name as the store has it

    def policy_for(self, plan: Plan) -> Policy:
        fence = self.settings.policy or Policy()
        return fence.merge(plan.policy) if plan.policy is not None else fence

    async def plan_of(self, tenant_id: str) -> Plan:
        tenant_enc = encode_id(validate_id(tenant_id, what="tenant_id"))
        name = self.router.tenant_plans.get(tenant_enc)
        if name is None:
            name = await self._stored_plan(tenant_id)
        return self.router.compiled(name).plan

    async def check_tool(self, action: str, tenant_id: str, approval_id: str | None) -> None:
        tenant = validate_id(tenant_id, what="tenant_id")
        decision = self.policy_for(await self.plan_of(tenant)).decide(action)
        if decision == Decision.DENY:
            raise PolicyDenied(action, tenant_id=tenant)
        if decision == Decision.ALLOW:
            return
        run = self.router.run
        if approval_id is not None:
            key = self._key(approval_id, tenant)
            state = codecs.approval_state(
                await run("approval", *codecs.approval_call(key, "consume", action))
            )
            if state == "approved":
                log.info("approval_used", tenant=tenant, action=action, approval=approval_id)
                return
            if state == "denied":
                raise PolicyDenied(action, tenant_id=tenant)
            if state is not None:  # still pending
                raise ApprovalRequired(action, approval_id, tenant_id=tenant)
        approval = f"{encode_id(tenant)}:{uuid.uuid4().hex}"
        key = self._key(approval, tenant)
        ttl = self.settings.approval_ttl_arg
        await run("approval", *codecs.approval_call(key, "create", action, ttl))
        log.info("approval_requested", tenant=tenant, action=action, approval=approval)
        raise ApprovalRequired(action, approval, tenant_id=tenant)

    def _key(self, approval_id: str, tenant: str | None = None) -> str:
        tenant_enc, _, token = str(approval_id).rpartition(":")
        if not tenant_enc or len(token) != 32 or not all(c in "0123456789abcdef" for c in token):
            raise InvalidId(f"not an approval id: {approval_id!r}")
        if tenant is not None and tenant_enc != encode_id(tenant):
            raise InvalidId(f"approval {approval_id!r} belongs to another tenant")
        validate_id(decode_id(tenant_enc), what="approval tenant")
        return f"{self.router.keys.prefix}:{{t.{tenant_enc}}}:ap:{token}"

    async def decide(self, approval_id: str, state: str) -> bool:
        """Approve or deny a pending approval; False when it was not pending."""
        call = codecs.approval_call(self._key(approval_id), "decide", state)
        return codecs.approval_state(await self.router.run("approval", *call)) == "pending"
