"""The base of every error, errors of bad input and configuration, and errors of the store."""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ConfigError",
    "Contended",
    "InvalidAmount",
    "InvalidCall",
    "InvalidId",
    "MissingExtra",
    "ModelNotPriced",
    "ReservationIdConflict",
    "StoreUnavailable",
    "TenantRequired",
    "TokenFenceError",
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
