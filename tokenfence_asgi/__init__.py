"""tokenfence-asgi: multi-tenant AI cost control for ASGI apps."""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from tokenfence_asgi.config import BUILTIN_PLANS, Limit, Plan, load_plans
from tokenfence_asgi.engine import TokenFence
from tokenfence_asgi.errors import (
    ApprovalRequired,
    BudgetExceeded,
    ConfigError,
    InputTooLong,
    InvalidAmount,
    InvalidId,
    ModelNotAllowed,
    PolicyDenied,
    RequestLimitExceeded,
    StoreUnavailable,
    TenantDisabled,
    TenantRequired,
    TokenFenceError,
    UnknownPlan,
)
from tokenfence_asgi.observe import FenceObserver
from tokenfence_asgi.pricing import ModelPrice, PriceBook
from tokenfence_asgi.results import (
    Alert,
    FenceCounters,
    Reservation,
    Settlement,
    TenantStatus,
    WindowStatus,
)

if TYPE_CHECKING:
    from tokenfence_asgi.litellm import TokenFenceCallback


def __getattr__(name: str) -> Any:
    # LiteLLM takes seconds to import: only code that uses the callback pays for it.
    if name == "TokenFenceCallback":
        from tokenfence_asgi.litellm import TokenFenceCallback

        return TokenFenceCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


try:
    __version__ = version("tokenfence-asgi")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "BUILTIN_PLANS",
    "Alert",
    "ApprovalRequired",
    "BudgetExceeded",
    "ConfigError",
    "Decision",
    "FenceContext",
    "FenceCounters",
    "FenceObserver",
    "InputTooLong",
    "InvalidAmount",
    "InvalidId",
    "Limit",
    "ModelNotAllowed",
    "ModelPrice",
    "Plan",
    "Policy",
    "PolicyDenied",
    "PriceBook",
    "RequestLimitExceeded",
    "Reservation",
    "Settlement",
    "StoreUnavailable",
    "TenantDisabled",
    "TenantRequired",
    "TenantStatus",
    "TokenFence",
    "TokenFenceCallback",
    "TokenFenceError",
    "TokenFenceMiddleware",
    "UnknownPlan",
    "WindowStatus",
    "__version__",
    "current_context",
    "feature",
    "load_plans",
    "sign_tenant",
    "signed_tenant_header",
    "tenant_scope",
]
