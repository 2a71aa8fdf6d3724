"""Refusals: the calls the fence will not allow, and when a limit's window would let them fit."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tokenfence_asgi.errors.base import _PLACES, TokenFenceError
from tokenfence_asgi.money import format_dollars, format_time

__all__ = [
    "ApprovalRequired",
    "BudgetExceeded",
    "InputTooLong",
    "ModelNotAllowed",
    "PolicyDenied",
    "Refused",
    "RequestLimitExceeded",
    "TenantDisabled",
    "TooManyOpenHolds",
]


class Refused(TokenFenceError):
    """The fence refused a call; subclasses say why.

    ``error_code``: ``ai_refused``."""

    error_code = "ai_refused"

    def __init__(
        self,
        message: str,
        *,
        tenant_id: str | None = None,
        feature: str | None = None,
        upgrade_url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.tenant_id = tenant_id
        self.feature = feature
        self.upgrade_url = upgrade_url


class _LimitRefusal(Refused):
    """A refusal by a windowed limit; carries the window and when it resets."""

    def __init__(
        self,
        message: str,
        *,
        tenant_id: str,
        feature: str | None,
        window: str,
        resets_at: datetime,
        upgrade_url: str | None = None,
    ) -> None:
        super().__init__(message, tenant_id=tenant_id, feature=feature, upgrade_url=upgrade_url)
        self.window = window
        self.resets_at = resets_at

    def resets_in_s(self, now: datetime | None = None) -> int:
        """Whole seconds from ``now`` (default the wall clock) until the window resets, at
        least 1."""
        now = now or datetime.now(UTC)
        return max(1, int((self.resets_at - now).total_seconds() + 0.999))

    def retry_after_s(self, now: datetime | None = None) -> int | None:
        """Whole seconds from ``now`` until the refused call could fit again (here the
        window's reset); ``None`` when it never can."""
        return self.resets_in_s(now)


class BudgetExceeded(_LimitRefusal):
    """The call's cost would take the tenant (or its pool) past a cost limit.

    ``total_cost`` is the committed spend in the window, ``held`` the open holds, ``max_cost`` the
    effective limit (including ``carried`` rollover), all ``Decimal`` dollars; ``resets_at`` is
    an aware UTC datetime. ``scope`` is ``"tenant"`` or ``"pool"``; ``reason`` says why:

    - ``"limit"``: the window's committed spend leaves too little;
    - ``"held"``: it would fit but for the holds of calls in flight (retry when they settle or
      their leases run out, at most ``hold_ttl_s`` seconds);
    - ``"share"``: the rest is guaranteed to other features;
    - ``"cap"``: the feature's own cap (then ``total_cost`` and ``max_cost`` are the feature's);
    - ``"call_too_large"``: the call's worst case alone is more than the limit: it can never fit
      in this window (ask for fewer output tokens, or a larger plan).

    ``retry_after_s()`` is ``None`` for ``call_too_large``.

    ``error_code``: ``ai_budget_exceeded``."""

    error_code = "ai_budget_exceeded"

    def __init__(
        self,
        *,
        tenant_id: str,
        feature: str | None,
        window: str,
        total_cost: Decimal,
        max_cost: Decimal,
        resets_at: datetime,
        held: Decimal = Decimal(0),
        requested: Decimal = Decimal(0),
        upgrade_url: str | None = None,
        scope: str = "tenant",
        pool: str | None = None,
        reason: str = "limit",
        carried: Decimal = Decimal(0),
        hold_ttl_s: float | None = None,
    ) -> None:
        if reason == "limit" and requested > max_cost:
            reason = "call_too_large"
        elif reason == "limit" and held > 0 and total_cost + requested <= max_cost:
            reason = "held"
        who = f"pool {pool!r}" if scope == "pool" else f"tenant {tenant_id!r}"
        what = f"AI budget of ${format_dollars(max_cost, _PLACES)} per {window}"
        if reason == "cap":
            what += f" for feature {feature!r}"
        why = ""
        if reason == "share":
            why = "; the rest is kept for other features' guaranteed shares"
        elif reason == "held":
            why = "; calls in flight hold the rest until they settle"
        elif reason == "call_too_large":
            why = "; this call's worst case alone is more than the limit"
        used, held_, asked = (format_dollars(v, _PLACES) for v in (total_cost, held, requested))
        super().__init__(
            f"{what} exceeded for {who} (used ${used}, held ${held_}, requested ${asked}){why}",
            tenant_id=tenant_id,
            feature=feature,
            window=window,
            resets_at=resets_at,
            upgrade_url=upgrade_url,
        )
        self.total_cost = total_cost
        self.max_cost = max_cost
        self.held = held
        self.requested = requested
        self.scope = scope
        self.pool = pool
        self.reason = reason
        self.carried = carried
        self.hold_ttl_s = hold_ttl_s

    def retry_after_s(self, now: datetime | None = None) -> int | None:
        """Whole seconds until the call could fit again: the window's reset, or for
        ``reason="held"`` the end of the in-flight holds' leases when sooner; ``None`` when it
        never can (``call_too_large``)."""
        if self.reason == "call_too_large":
            return None
        reset_s = self.resets_in_s(now)
        if self.reason == "held" and self.hold_ttl_s is not None:
            return max(1, min(reset_s, math.ceil(self.hold_ttl_s)))
        return reset_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": self.error_code,
            "message": self.message,
            "reason": self.reason,
            "feature": self.feature,
            "used": format_dollars(self.total_cost, _PLACES),
            "held": format_dollars(self.held, _PLACES),
            "limit": format_dollars(self.max_cost, _PLACES),
            "window": self.window,
            "resets_at": format_time(self.resets_at),
            "upgrade_url": self.upgrade_url,
        }


class RequestLimitExceeded(_LimitRefusal):
    """The tenant has made as many calls as a request-count limit allows in this window.

    ``error_code``: ``ai_request_limit_exceeded``."""

    error_code = "ai_request_limit_exceeded"

    def __init__(
        self,
        *,
        tenant_id: str,
        feature: str | None,
        window: str,
        requests: int,
        max_requests: int,
        resets_at: datetime,
        upgrade_url: str | None = None,
        scope: str = "tenant",
        pool: str | None = None,
    ) -> None:
        who = f"pool {pool!r}" if scope == "pool" else f"tenant {tenant_id!r}"
        super().__init__(
            f"AI request limit of {max_requests} per {window} reached for {who}",
            tenant_id=tenant_id,
            feature=feature,
            window=window,
            resets_at=resets_at,
            upgrade_url=upgrade_url,
        )
        self.requests = requests
        self.max_requests = max_requests
        self.scope = scope
        self.pool = pool

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": self.error_code,
            "message": self.message,
            "used": str(self.requests),
            "limit": str(self.max_requests),
            "window": self.window,
            "resets_at": format_time(self.resets_at),
            "upgrade_url": self.upgrade_url,
        }


class TooManyOpenHolds(RequestLimitExceeded):
    """The tenant has as many calls in flight (reserved, not yet committed or released) as the
    fence's ``max_open_holds`` allows.

    ``requests`` is its open holds and ``max_requests`` the bound; ``window`` is
    ``"open_holds"``; ``resets_at`` is when the earliest of them expires if nobody settles it
    first (its lease ends and it is reclaimed). A 429 with ``Retry-After``, like a request limit.

    ``error_code``: ``ai_too_many_open_holds``."""

    error_code = "ai_too_many_open_holds"

    def __init__(
        self,
        *,
        tenant_id: str,
        feature: str | None,
        open_holds: int,
        max_open_holds: int,
        resets_at: datetime,
        upgrade_url: str | None = None,
    ) -> None:
        super().__init__(
            tenant_id=tenant_id,
            feature=feature,
            window="open_holds",
            requests=open_holds,
            max_requests=max_open_holds,
            resets_at=resets_at,
            upgrade_url=upgrade_url,
        )
        self.message = (
            f"tenant {tenant_id!r} has {open_holds} AI calls in flight, the most allowed "
            f"({max_open_holds}); settle one (commit or release) or wait until a lease ends"
        )
        self.args = (self.message,)


class ModelNotAllowed(Refused):
    """The tenant's plan does not allow the requested model, and no downgrade fits.

    ``error_code``: ``ai_model_not_allowed``."""

    error_code = "ai_model_not_allowed"


class PolicyDenied(Refused):
    """A tool-call policy denies the action (``action``, e.g. ``"tool:db:delete:users"``).

    ``error_code``: ``ai_policy_denied``."""

    error_code = "ai_policy_denied"

    def __init__(self, action: str, *, tenant_id: str | None = None) -> None:
        super().__init__(f"action {action!r} is denied by policy", tenant_id=tenant_id)
        self.action = action


class ApprovalRequired(Refused):
    """A tool call waits for an operator's approval.

    ``approval_id`` names the pending approval: an operator approves it with
    ``fence.approve(approval_id)``, after which the call may be replayed once with it.
    ``model_response`` is the LLM response that made the tool call, when the LiteLLM callback
    raised this (it was charged; an app may keep it and run the tool once approved).

    ``error_code``: ``ai_approval_required``."""

    error_code = "ai_approval_required"

    def __init__(self, action: str, approval_id: str, *, tenant_id: str | None = None) -> None:
        super().__init__(
            f"action {action!r} needs approval; pending approval {approval_id!r}",
            tenant_id=tenant_id,
        )
        self.action = action
        self.approval_id = approval_id
        self.model_response: object = None

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "approval_id": self.approval_id, "action": self.action}


class InputTooLong(Refused):
    """The prompt is longer than the plan allows.

    ``limit`` is the plan's maximum and ``length`` the prompt's size, both in ``unit``
    (``"characters"`` or ``"tokens"``), when known.

    ``error_code``: ``ai_input_too_long``."""

    error_code = "ai_input_too_long"

    def __init__(
        self,
        message: str,
        *,
        tenant_id: str | None = None,
        feature: str | None = None,
        upgrade_url: str | None = None,
        limit: int | None = None,
        length: int | None = None,
        unit: str | None = None,
    ) -> None:
        super().__init__(message, tenant_id=tenant_id, feature=feature, upgrade_url=upgrade_url)
        self.limit = limit
        self.length = length
        self.unit = unit

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        if self.limit is not None:
            body.update(limit=self.limit, length=self.length, unit=self.unit)
        return body


class TenantDisabled(Refused):
    """A kill switch is on: for the whole fence, the tenant, or one of its features.

    ``scope`` is ``"global"`` (everyone; with ``feature`` set, that feature for everyone),
    ``"tenant"`` or ``"feature"`` (one feature of one tenant).

    ``error_code``: ``ai_disabled``."""

    error_code = "ai_disabled"

    def __init__(self, *, tenant_id: str, feature: str | None, scope: str) -> None:
        if scope == "global":
            what = (
                "AI calls are disabled for everyone"
                if feature is None
                else f"AI feature {feature!r} is disabled for everyone"
            )
        elif scope == "feature":
            what = f"AI feature {feature!r} is disabled for tenant {tenant_id!r}"
        else:
            what = f"AI calls are disabled for tenant {tenant_id!r}"
        super().__init__(what, tenant_id=tenant_id, feature=feature)
        self.scope = scope
