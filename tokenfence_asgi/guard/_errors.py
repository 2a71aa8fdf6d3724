"""Our refusals as the SDK's own errors: ``except openai.APIStatusError`` keeps working.

A refusal raised by a guarded client is an instance of a class deriving from our error first
and from the SDK's status error for its HTTP status second (``BudgetExceeded`` and
``anthropic.PaymentRequiredError``; ``RequestLimitExceeded`` and ``openai.RateLimitError``;
``ModelNotAllowed`` and ``PermissionDeniedError``; a status the SDK has no class for, such as
402 in openai, takes ``APIStatusError``, or ``InternalServerError`` from 500 up). It is built
as the SDK builds its own: a ``response`` (the status ``web.problem.http_status`` gives our
error, our JSON body, ``Retry-After`` and the RateLimit headers) for the request that was not
sent, then ``status_code`` and ``body`` as the SDK sets them from it. Our fields
(``error_code``, ``to_dict()``, ``tenant_id``, ``resets_at``, ...) are unchanged, so the
middleware answers it as it answers ours. The classes keep our names and module.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, cast

from tokenfence_asgi.errors import TokenFenceError
from tokenfence_asgi.web.problem import http_status, limit_headers

__all__ = ["StatusErrors"]

# The SDK's fields that would hide ours (anthropic sets ``error_code`` from the body).
_SHADOWING = ("error_code",)


class StatusErrors:
    """Makes SDK-flavoured instances of our errors for one SDK's exception module.

    ``exceptions`` is the SDK's module of exceptions (``openai``, ``anthropic``), ``http`` its
    HTTP library (``httpx2``); ``with_code`` adds ``code`` to the body (what openai reads).
    """

    __slots__ = ("_by_status", "_derived", "_http", "_server_error", "_status_error", "_with_code")

    def __init__(self, exceptions: ModuleType, http: ModuleType, *, with_code: bool) -> None:
        self._status_error = cast("type[Exception]", exceptions.APIStatusError)
        self._server_error = cast("type[Exception]", exceptions.InternalServerError)
        self._by_status: dict[int, type[Exception]] = {}
        for value in list(vars(exceptions).values()):
            if isinstance(value, type) and issubclass(value, self._status_error):
                status = value.__dict__.get("status_code")
                if isinstance(status, int):
                    self._by_status.setdefault(status, value)
        self._http = http
        self._with_code = with_code
        self._derived: dict[tuple[type, type], type[Exception]] = {}

    def base_for(self, status: int) -> type[Exception]:
        """The SDK's class for an HTTP status, as the SDK itself would choose it."""
        found = self._by_status.get(status)
        if found is not None:
            return found
        return self._server_error if status >= 500 else self._status_error

    def _class(self, ours: type[TokenFenceError], base: type[Exception]) -> type[Exception]:
        derived = self._derived.get((ours, base))
        if derived is None:
            namespace = {
                "__module__": ours.__module__,
                "__qualname__": ours.__qualname__,
                "__doc__": ours.__doc__,
            }
            derived = cast("type[Exception]", type(ours.__name__, (ours, base), namespace))
            self._derived[(ours, base)] = derived
        return derived

    def make(self, exc: TokenFenceError, method: str, url: str) -> Exception:
        """``exc`` as an instance of a class deriving from it and the SDK's status error."""
        status = http_status(exc)
        base = self.base_for(status)
        cls = self._class(type(exc), base)
        body: dict[str, Any] = exc.to_dict()
        if self._with_code:
            body["code"] = exc.error_code
        request = self._http.Request(method, url)
        response = self._http.Response(
            status, request=request, json=body, headers=limit_headers(exc)
        )
        error = cls.__new__(cls)
        cast("Any", base).__init__(error, exc.message, response=response, body=body)
        for name in _SHADOWING:
            error.__dict__.pop(name, None)
        error.__dict__.update(exc.__dict__)
        return error
