"""A ``TokenFenceError`` as an HTTP response: status, JSON body, ``Retry-After`` and RateLimit.

The status and the body come from the error itself (``status_code``, ``to_dict()``), so the
middleware and any other HTTP surface answer alike::

    BudgetExceeded        402  ai_budget_exceeded        Retry-After, RateLimit-Policy, RateLimit
    RequestLimitExceeded  429  ai_request_limit_exceeded Retry-After, RateLimit-Policy, RateLimit
    ModelNotAllowed, PolicyDenied, ApprovalRequired, TenantDisabled   403
    InputTooLong          413  ai_input_too_long
    TenantRequired        401  tenant_required
    StoreUnavailable      503  ai_budget_unavailable

The RateLimit fields follow draft-ietf-httpapi-ratelimit-headers (revision 11): a policy named
after the window (``"1d"``), ``q`` the limit, ``w`` the window length in seconds, ``r`` what is
left and ``t`` the seconds until the window resets. The draft requires integers, so a cost limit
is given in micro-dollars with the quota unit ``qu="usd-micros"`` (a unit of ours, not in the
draft's registry); nano-dollars would not fit a structured-field integer (15 digits) for limits
above $999,999. ``r`` is rounded down, and is 0 when the refusal came from another feature's
guaranteed share. A request-count limit uses the draft's default unit, requests::

    RateLimit-Policy: "1d";q=500000;qu="usd-micros";w=86400
    RateLimit: "1d";r=0;t=41400
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal

from starlette.background import BackgroundTask
from starlette.responses import JSONResponse

from tokenfence_asgi.config import WINDOW_SECONDS
from tokenfence_asgi.errors import BudgetExceeded, RequestLimitExceeded, TokenFenceError

__all__ = ["FenceErrorResponse", "limit_headers"]

_MICROS = Decimal(1_000_000)


def _micros(amount: Decimal) -> int:
    return max(0, int((amount * _MICROS).to_integral_value(rounding=ROUND_FLOOR)))


def limit_headers(error: TokenFenceError, *, now: datetime | None = None) -> dict[str, str]:
    """``Retry-After``, ``RateLimit-Policy`` and ``RateLimit`` for a limit refusal, else ``{}``.

    ``Retry-After`` is when the refused call could fit again (``retry_after_s``: the reset, or
    the end of in-flight holds' leases), and is absent when it never can; ``RateLimit``'s ``t``
    is the window's reset.

    ``now`` (aware datetime, default the wall clock) is the time the seconds to reset are
    counted from; pass the fence's clock when it has one, so a simulated clock agrees.
    """
    if isinstance(error, BudgetExceeded):
        limit = error.max_cost
        left = Decimal(0) if error.reason == "share" else limit - error.total_cost - error.held
        quota, remaining, unit = _micros(limit), _micros(left), ';qu="usd-micros"'
    elif isinstance(error, RequestLimitExceeded):
        quota, remaining, unit = error.max_requests, error.max_requests - error.requests, ""
    else:
        return {}
    now = now or datetime.now(UTC)
    reset_s = max(1, int((error.resets_at - now).total_seconds() + 0.999))
    retry_s = error.retry_after_s(now)
    window_s = WINDOW_SECONDS.get(error.window)
    window = "" if window_s is None else f";w={window_s}"
    name = _sf_string(error.window)
    headers = {
        "RateLimit-Policy": f"{name};q={max(0, quota)}{unit}{window}",
        "RateLimit": f"{name};r={max(0, remaining)};t={reset_s}",
    }
    if retry_s is not None:  # absent when the call can never fit
        headers["Retry-After"] = str(retry_s)
    return headers


def _sf_string(text: str) -> str:
    # A structured-field String: printable ASCII, with backslash and double quote escaped.
    safe = "".join(c if " " <= c <= "~" else "?" for c in text)
    return '"' + safe.replace("\\", "\\\\").replace('"', '\\"') + '"'


class FenceErrorResponse(JSONResponse):
    """The JSON error response for a ``TokenFenceError`` (a Starlette ``Response``).

    The body is ``error.to_dict()`` (``error``, ``message`` and, for limits, ``used``, ``limit``,
    ``window``, ``resets_at``, ``upgrade_url``; money as strings with 6 decimals); the status is
    ``error.status_code`` unless ``status_code`` is given, the body's ``error`` is replaced by
    ``error_code`` when given. Limit refusals carry ``limit_headers`` (computed at ``now``).
    Usable as an exception handler's result in an app without the middleware::

        app.add_exception_handler(TokenFenceError, lambda request, exc: FenceErrorResponse(exc))
    """

    def __init__(
        self,
        error: TokenFenceError,
        *,
        status_code: int | None = None,
        error_code: str | None = None,
        headers: Mapping[str, str] | None = None,
        now: datetime | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        body = error.to_dict()
        if error_code is not None:
            body["error"] = error_code
        all_headers = limit_headers(error, now=now)
        if headers:
            all_headers.update(headers)
        super().__init__(
            body,
            status_code=error.http_status if status_code is None else status_code,
            headers=all_headers,
            background=background,
        )
        self.error = error
