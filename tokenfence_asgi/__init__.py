"""tokenfence-asgi: multi-tenant AI cost control for ASGI apps."""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from tokenfence_asgi.config import BUILTIN_PLANS, Limit, Plan, load_plans
from tokenfence_asgi.context import FenceContext, current_context, tenant_scope
from tokenfence_asgi.endpoints import feature
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.engine.observe import FenceObserver
from tokenfence_asgi.errors import (
    ApprovalRequired,
    BudgetExceeded,
    ConfigError,
    InputTooLong,
    InvalidAmount,
    InvalidCall,
    InvalidId,
    MissingExtra,
    ModelNotAllowed,
    ModelNotPriced,
    PolicyDenied,
    RequestLimitExceeded,
    ReservationIdConflict,
    StoreUnavailable,
    TenantDisabled,
    TenantRequired,
    TokenFenceError,
    TooManyOpenHolds,
    UnknownPlan,
)
from tokenfence_asgi.policy import Decision, Policy
from tokenfence_asgi.pricing.book import ModelPrice, PriceBook
from tokenfence_asgi.results import (
    Alert,
    DailyUsage,
    FenceCounters,
    Reservation,
    Settlement,
    TenantStatus,
    UsageRecord,
    WindowStatus,
)
from tokenfence_asgi.web.middleware import TokenFenceMiddleware, sign_tenant, signed_tenant_header

if TYPE_CHECKING:
    from tokenfence_asgi.guard import CallNotFenced
    from tokenfence_asgi.litellm import TokenFenceCallback
    from tokenfence_asgi.ops.metrics import FenceMetrics
    from tokenfence_asgi.ops.webhooks import WebhookSender, verify_signature
    from tokenfence_asgi.web.admin import admin_app
    from tokenfence_asgi.web.service import service_app

# Imported on first use: LiteLLM takes seconds to import, the apps pull in more than the engine.
_LAZY = {
    "TokenFenceCallback": "tokenfence_asgi.litellm",
    "CallNotFenced": "tokenfence_asgi.guard",
    "admin_app": "tokenfence_asgi.web.admin",
    "FenceMetrics": "tokenfence_asgi.ops.metrics",
    "service_app": "tokenfence_asgi.web.service",
    "WebhookSender": "tokenfence_asgi.ops.webhooks",
    "verify_signature": "tokenfence_asgi.ops.webhooks",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


try:
    __version__ = version("tokenfence-asgi")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "BUILTIN_PLANS",
    "Alert",
    "ApprovalRequired",
    "BudgetExceeded",
    "CallNotFenced",
    "ConfigError",
    "DailyUsage",
    "Decision",
    "FenceContext",
    "FenceCounters",
    "FenceMetrics",
    "FenceObserver",
    "InputTooLong",
    "InvalidAmount",
    "InvalidCall",
    "InvalidId",
    "Limit",
    "MissingExtra",
    "ModelNotAllowed",
    "ModelNotPriced",
    "ModelPrice",
    "Plan",
    "Policy",
    "PolicyDenied",
    "PriceBook",
    "RequestLimitExceeded",
    "Reservation",
    "ReservationIdConflict",
    "Settlement",
    "StoreUnavailable",
    "TenantDisabled",
    "TenantRequired",
    "TenantStatus",
    "TokenFence",
    "TokenFenceCallback",
    "TokenFenceError",
    "TokenFenceMiddleware",
    "TooManyOpenHolds",
    "UnknownPlan",
    "UsageRecord",
    "WebhookSender",
    "WindowStatus",
    "__version__",
    "admin_app",
    "current_context",
    "feature",
    "load_plans",
    "service_app",
    "sign_tenant",
    "signed_tenant_header",
    "tenant_scope",
    "verify_signature",
]
