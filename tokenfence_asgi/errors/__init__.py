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

from tokenfence_asgi.errors.base import (
    ConfigError,
    Contended,
    InvalidAmount,
    InvalidCall,
    InvalidId,
    MissingExtra,
    ModelNotPriced,
    ReservationIdConflict,
    StoreUnavailable,
    TenantRequired,
    TokenFenceError,
    UnknownPlan,
)
from tokenfence_asgi.errors.refusals import (
    ApprovalRequired,
    BudgetExceeded,
    InputTooLong,
    ModelNotAllowed,
    PolicyDenied,
    Refused,
    RequestLimitExceeded,
    TenantDisabled,
    TooManyOpenHolds,
)

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
