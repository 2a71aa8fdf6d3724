"""Budget configuration: ``Limit``, ``Plan``, the built-in plans, and plans read from TOML.

``Limit`` and ``Plan`` are frozen dataclasses validated when built, so a plan the engine sees is
always consistent; every error is a ``ConfigError`` naming the field and the bad value.
"""

from tokenfence_asgi.config.files import PlanSet, default_plan_for, load_plans, plans_from_mapping
from tokenfence_asgi.config.plan import (
    BUILTIN_PLANS,
    DEFAULT_FEATURE_WEIGHTS,
    ENTERPRISE,
    FEATURE_MODES,
    FREE,
    PRO,
    STARTER,
    WINDOW_SECONDS,
    WINDOWS,
    Limit,
    Plan,
)

__all__ = [
    "BUILTIN_PLANS",
    "DEFAULT_FEATURE_WEIGHTS",
    "ENTERPRISE",
    "FEATURE_MODES",
    "FREE",
    "PRO",
    "STARTER",
    "WINDOWS",
    "WINDOW_SECONDS",
    "Limit",
    "Plan",
    "PlanSet",
    "default_plan_for",
    "load_plans",
    "plans_from_mapping",
]
