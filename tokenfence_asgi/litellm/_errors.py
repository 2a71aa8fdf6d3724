"""LiteLLM's view of the fence's refusals: classes deriving from ours and its own.

A refusal reaches the caller as a class deriving from both the fence's error (``BudgetExceeded``,
...) and ``litellm.BudgetExceededError``: the caller catches ``BudgetExceeded`` (402 from the
middleware), and a ``Router`` treats it as final. LiteLLM reads ``status_code`` from its
exceptions: the class's is the status ``web.problem`` gives our error (402, 429, ...), and
inside a Router the instance's is 422, because the Router decides retries and deployment
cooldowns by it: a 402, 401, 429 or 503 put the shared deployment in cooldown, denying every
other tenant; a 403 was retried (measured on LiteLLM 1.110.2). Responses use the class's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from litellm.exceptions import BudgetExceededError

from tokenfence_asgi.errors import TokenFenceError
from tokenfence_asgi.web.problem import http_status

__all__ = ["for_litellm", "is_router_call"]

_ROUTER_STATUS = 422  # neither retried nor a cooldown reason for the Router (measured)
_DERIVED: dict[type[TokenFenceError], type[TokenFenceError]] = {}  # a memo of classes, like a cache


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _litellm_class(cls: type[TokenFenceError]) -> type[TokenFenceError]:
    derived = _DERIVED.get(cls)
    if derived is None:
        # Same name and module as ours, so tracebacks and `except BudgetExceeded` read as usual.
        namespace = {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
            "status_code": http_status(cls),
        }
        derived = cast(
            "type[TokenFenceError]", type(cls.__name__, (cls, BudgetExceededError), namespace)
        )
        _DERIVED[cls] = derived
    return derived


def for_litellm(exc: TokenFenceError, *, router: bool) -> TokenFenceError:
    """``exc`` as an instance of a class deriving from it and ``litellm.BudgetExceededError``."""
    cls = _litellm_class(type(exc))
    error = cls.__new__(cls)
    BudgetExceededError.__init__(
        cast("BudgetExceededError", error),
        current_cost=float(getattr(exc, "total_cost", 0)),
        max_budget=float(getattr(exc, "max_cost", 0)),
        message=exc.message,
    )
    error.__dict__.update(exc.__dict__)
    if router:
        error.__dict__["status_code"] = _ROUTER_STATUS
    else:  # LiteLLM's __init__ set one; the class's is ours (402, 429, ...)
        error.__dict__.pop("status_code", None)
    return error.with_traceback(exc.__traceback__)


def is_router_call(kwargs: Mapping[str, object]) -> bool:
    return any(
        "model_group" in _mapping(kwargs.get(key)) for key in ("metadata", "litellm_metadata")
    )
