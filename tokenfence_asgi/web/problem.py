"""Errors as HTTP responses: each error's status, its JSON body, ``Retry-After`` and RateLimit.

The one place where an error becomes HTTP, for every app of the package (the middleware, the
admin app, the HTTP API) and for the SDK guards' and LiteLLM's status errors. The core errors
carry a stable ``error_code`` and their body (``to_dict()``); the status is looked up here, by
the error's class (the first class of its MRO in ``STATUS``)::

    BudgetExceeded                                  402  Retry-After, RateLimit-Policy, RateLimit
    RequestLimitExceeded, TooManyOpenHolds          429  Retry-After, RateLimit-Policy, RateLimit
    Refused: ModelNotAllowed, PolicyDenied,         403
             ApprovalRequired, TenantDisabled
    InputTooLong                                    413
    TenantRequired                                  401
    InvalidCall                                     400
    UnknownPlan                                     404
    ReservationIdConflict                           409
    InvalidAmount, InvalidId, ModelNotPriced        422
    Contended, StoreUnavailable                     503
    anything else (ConfigError: a bug)              500

The RateLimit fields follow draft-ietf-httpapi-ratelimit-headers (revision 11): a policy named
after the window (``"1d"``), ``q`` the limit, ``w`` the window length in seconds, ``r`` what is
left and ``t`` the seconds until the window resets. The draft requires integers, so a cost limit
is given in micro-dollars with the quota unit ``qu="usd-micros"`` (a unit of ours, not in the
draft's registry); nano-dollars would not fit a structured-field integer (15 digits) for limits
above $999,999. ``r`` is rounded down, and is 0 when the refusal came from another feature's
guaranteed share. A request-count limit uses the draft's default unit, requests::

    RateLimit-Policy: "1d";q=500000;qu="usd-micros";w=86400
    RateLimit: "1d";r=0;t=41400

An app's own errors (a bad body, a missing token) are ``Problem`` exceptions with the same body
shape, ``{"error": code, "message": text, ...}``; ``http_exception_response`` answers Starlette's
``HTTPException`` (404, 405) that way too.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal
from types import MappingProxyType
from typing import Any

from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tokenfence_asgi.config import WINDOW_SECONDS
from tokenfence_asgi.errors import (
    BudgetExceeded,
    Contended,
    InputTooLong,
    InvalidAmount,
    InvalidCall,
    InvalidId,
    ModelNotPriced,
    Refused,
    RequestLimitExceeded,
    ReservationIdConflict,
    StoreUnavailable,
    TenantRequired,
    TokenFenceError,
    UnknownPlan,
)

__all__ = [
    "STATUS",
    "FenceErrorResponse",
    "Problem",
    "http_exception_response",
    "http_status",
    "limit_headers",
]

STATUS: Mapping[type[TokenFenceError], int] = MappingProxyType(
    {
        TokenFenceError: 500,
        InvalidAmount: 422,
        InvalidId: 422,
        ReservationIdConflict: 409,
        InvalidCall: 400,
        UnknownPlan: 404,
        ModelNotPriced: 422,
        TenantRequired: 401,
        Refused: 403,
        BudgetExceeded: 402,
        RequestLimitExceeded: 429,
        InputTooLong: 413,
        Contended: 503,
        StoreUnavailable: 503,
    }
)
"""The HTTP status of each error class; a subclass not listed takes its nearest base's."""

_MICROS = Decimal(1_000_000)


def http_status(error: TokenFenceError | type[TokenFenceError]) -> int:
    """The HTTP status of an error (or an error class): ``STATUS`` of the first class of its
    MRO that is listed, 500 for a bug or a configuration error.

    Read from the class, never the instance: a LiteLLM refusal seen inside a Router carries
    ``status_code`` 422 for the Router, and is still answered with its class's 402.
    """
    cls = error if isinstance(error, type) else type(error)
    for base in cls.__mro__:
        status = STATUS.get(base)
        if status is not None:
            return status
    return 500


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
    retry_s = error.retry_after_s(now)
    window_s = WINDOW_SECONDS.get(error.window)
    window = "" if window_s is None else f";w={window_s}"
    name = _sf_string(error.window)
    headers = {
        "RateLimit-Policy": f"{name};q={max(0, quota)}{unit}{window}",
        "RateLimit": f"{name};r={max(0, remaining)};t={error.resets_in_s(now)}",
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
    ``http_status(error)`` unless ``status_code`` is given, the body's ``error`` is replaced by
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
            status_code=http_status(error) if status_code is None else status_code,
            headers=all_headers,
            background=background,
        )
        self.error = error


class Problem(Exception):
    """An app's own HTTP error (not a fence error), raised by a handler and answered as JSON.

    The body is ``{"error": error, "message": message}`` plus each of ``fields`` that is not
    ``None`` (``errors=[...]`` for per-field messages, ``field="body"``); ``headers`` go on the
    response (``WWW-Authenticate`` on a 401).
    """

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = dict(headers or {})
        self.fields = {name: value for name, value in fields.items() if value is not None}

    def response(self) -> JSONResponse:
        """The JSON response for this problem."""
        body = {"error": self.error, "message": self.message, **self.fields}
        return JSONResponse(body, status_code=self.status, headers=self.headers or None)


_HTTP_ERRORS = {404: "not_found", 405: "method_not_allowed"}


async def http_exception_response(request: Request, exc: Exception) -> Response:
    """Starlette's ``HTTPException`` (no route, wrong method) as a problem body: an exception
    handler, ``exception_handlers={HTTPException: http_exception_response}``."""
    if not isinstance(exc, HTTPException):  # pragma: no cover - registered for HTTPException
        raise exc
    code = _HTTP_ERRORS.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": code, "message": exc.detail}, status_code=exc.status_code, headers=exc.headers
    )
