"""The tokenfence-asgi error tree, each error with a stable ``error_code``.

Every error the library raises on purpose subclasses ``TokenFenceError``. Errors caused by bad
input also subclass ``ValueError``, so code that already catches ``ValueError`` keeps working::

    error                              error_code                  raised when
    TokenFenceError                    ai_error                    (the base)
    ├── InvalidAmount (ValueError)     invalid_amount              a bad amount (negative, NaN, ...)
    ├── InvalidId (ValueError)         invalid_id                  an id is empty, long or unsafe
    │   └── ReservationIdConflict      reservation_id_conflict     a reservation id is taken
    ├── InvalidCall (ValueError)       ai_invalid_request          a call's n or max_tokens is bad
    ├── ConfigError (ValueError)       invalid_config              a bad Limit, Plan, file or option
    │   ├── UnknownPlan                unknown_plan                a plan name is not configured
    │   └── ModelNotPriced             ai_model_not_priced         nothing prices the model
    ├── TenantRequired                 tenant_required             a fenced call has no tenant
    ├── Refused                        ai_refused                  (the fence will not allow a call)
    │   ├── BudgetExceeded             ai_budget_exceeded          a cost limit would be exceeded
    │   ├── RequestLimitExceeded       ai_request_limit_exceeded   a request-count limit is reached
    │   │   └── TooManyOpenHolds       ai_too_many_open_holds      max_open_holds calls in flight
    │   ├── ModelNotAllowed            ai_model_not_allowed        the plan does not allow the model
    │   ├── PolicyDenied               ai_policy_denied            a tool-call policy denies it
    │   ├── ApprovalRequired           ai_approval_required        a tool call awaits approval
    │   ├── InputTooLong               ai_input_too_long           the prompt is too long
    │   └── TenantDisabled             ai_disabled                 a kill switch is on
    ├── Contended                      ai_budget_busy              a plan or pool kept changing
    ├── StoreUnavailable               ai_budget_unavailable       Redis could not be reached
    └── MissingExtra (ImportError)     missing_extra               an optional dependency is missing

``error_code`` is a class attribute, the same string as the ``error`` field of ``to_dict()`` (the
JSON body of the error); it does not change between releases, so clients may branch on it. The
errors know nothing of HTTP: ``tokenfence_asgi.web.problem`` maps each to its status and headers.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

from tokenfence_asgi.money import format_dollars, format_time

__all__ = [
    "ApprovalRequired",
    "BudgetExceeded",
    "ConfigError",
    "Contended",
    "InputTooLong",
    "InvalidAmount",
    "InvalidCall",
    "InvalidId",
    "MissingExtra",
    "ModelNotAllowed",
    "ModelNotPriced",
    "PolicyDenied",
    "Refused",
    "RequestLimitExceeded",
    "ReservationIdConflict",
    "StoreUnavailable",
    "TenantDisabled",
    "TenantRequired",
    "TokenFenceError",
    "TooManyOpenHolds",
    "UnknownPlan",
]

_PLACES = 6  # dollars in messages and bodies: 6 decimals


class TokenFenceError(Exception):
    """Base class of every error raised by tokenfence-asgi.

    ``error_code``: ``ai_error``."""

    error_code: ClassVar[str] = "ai_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        """The JSON body an HTTP response carries for this error."""
        return {"error": self.error_code, "message": self.message}


class InvalidAmount(TokenFenceError, ValueError):
    """A money amount is negative, NaN, infinite, not a number, or absurdly large.

    ``error_code``: ``invalid_amount``."""

    error_code = "invalid_amount"


class InvalidId(TokenFenceError, ValueError):
    """A tenant, feature or reservation id is empty, too long or contains control characters.

    ``error_code``: ``invalid_id``."""

    error_code = "invalid_id"


class ReservationIdConflict(InvalidId):
    """A ``reservation_id`` given to reserve is taken: settled already (``settled``), or held
    for a call with other candidates. Use a new id, or repeat the first call exactly.

    ``error_code``: ``reservation_id_conflict``."""

    error_code = "reservation_id_conflict"

    def __init__(self, message: str, *, settled: bool) -> None:
        super().__init__(message)
        self.settled = settled


class InvalidCall(TokenFenceError, ValueError):
    """An LLM call's arguments cannot be bounded as given (``n="50"``, ``max_tokens=-1``).

    ``error_code``: ``ai_invalid_request``."""

    error_code = "ai_invalid_request"


class ConfigError(TokenFenceError, ValueError):
    """A limit, plan, plan file or option is invalid; the message names the field and the value.

    ``error_code``: ``invalid_config``."""

    error_code = "invalid_config"


class UnknownPlan(ConfigError):
    """A plan name is not among the configured plans.

    ``error_code``: ``unknown_plan``."""

    error_code = "unknown_plan"

    def __init__(
        self, name: str, known: list[str] | tuple[str, ...], *, field: str | None = None
    ) -> None:
        where = "" if field is None else f"{field}: "
        super().__init__(
            f"{where}unknown plan {name!r}; configured plans: {', '.join(sorted(known))}"
        )
        self.name = name


class ModelNotPriced(ConfigError):
    """A model nothing prices (no configured price, no snapshot or LiteLLM entry, no
    ``default_price``), or a model name with surrounding whitespace or control characters.

    ``models`` names every model concerned (``PriceBook.check`` reports them all at once). A
    ``ConfigError`` for code that catches those, but answered like a refusal of the call (a
    422 body, not a 500): the call names a model this app cannot bound, so it is refused
    before anything is sent, and it is never treated as free.

    ``error_code``: ``ai_model_not_priced``."""

    error_code = "ai_model_not_priced"

    def __init__(self, message: str, *, models: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(message)
        self.models = tuple(models)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "models": list(self.models)}


class TenantRequired(TokenFenceError):
    """A fenced call was made without a tenant (no header, no context, no metadata).

    ``header`` names the request header the tenant was expected in, when it comes from one;
    the body then carries it as ``header`` and the default message says to send it.

    ``error_code``: ``tenant_required``."""

    error_code = "tenant_required"

    def __init__(self, message: str | None = None, *, header: str | None = None) -> None:
        if message is None:
            message = "a tenant id is required for this request"
            if header is not None:
                message += f": send it in the {header} header"
        super().__init__(message)
        self.header = header

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        if self.header is not None:
            body["header"] = self.header
        return body


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


class Contended(TokenFenceError):
    """The tenant's plan or pool kept changing under every retry of one call; try again.

    Not an outage: ``on_store_error="open"`` does not let such a call through.

    ``error_code``: ``ai_budget_busy``."""

    error_code = "ai_budget_busy"


class StoreUnavailable(TokenFenceError):
    """The budget store (Redis) could not be reached in time; the call is refused (fail closed).

    ``message`` carries the detail (host, port, the client's error) for logs and operators;
    the HTTP body (``to_dict()``) does not, so no infrastructure reaches an end user.

    ``error_code``: ``ai_budget_unavailable``."""

    error_code = "ai_budget_unavailable"
    public_message: ClassVar[str] = "the AI budget service is unavailable; try again shortly"

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.error_code, "message": self.public_message}


class MissingExtra(TokenFenceError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it.

    ``package`` is the distribution to install (``name`` the module that failed to import, as
    for any ``ImportError``), ``extra`` the tokenfence-asgi extra that brings it::

        pip install 'tokenfence-asgi[cli]'

    ``error_code``: ``missing_extra``.
    """

    error_code = "missing_extra"

    def __init__(
        self, package: str, extra: str, *, needed_for: str, module: str | None = None
    ) -> None:
        super().__init__(
            f"{needed_for} needs {package} (not installed): pip install 'tokenfence-asgi[{extra}]'"
        )
        self.name = module
        self.package = package
        self.extra = extra
