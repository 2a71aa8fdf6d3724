"""The field types of the API's bodies: what each accepts, its schema, its fault when it does not.

Each type is a pydantic ``Annotated`` type: the declared type and constraints make the OpenAPI
schema (and are checked), and a check of ours runs first so that a fault is answered with the
API's own message and code (``invalid_id``, ``invalid_amount``, ``invalid_request``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo

from tokenfence_asgi.errors import InvalidAmount, InvalidId
from tokenfence_asgi.money import _show, to_nanos
from tokenfence_asgi.results import Reservation
from tokenfence_asgi.store.keys import MAX_ID_LENGTH, validate_id
from tokenfence_asgi.web.api.problems import describe, field_error
from tokenfence_asgi.web.api.tokens import MAX_TOKEN_LENGTH, ReservationTokens, TokenRefused

__all__ = [
    "MAX_CANDIDATES",
    "MAX_INPUT_CHARS",
    "MAX_TOKENS",
    "MAX_USAGE_TOKENS",
    "Amount",
    "Cost",
    "Estimate",
    "Flag",
    "Id",
    "InputChars",
    "ReservationToken",
    "Settling",
    "TokenCount",
    "UsageCount",
    "check_id",
    "check_object",
    "dollars_nanos",
]

MAX_CANDIDATES = 16
MAX_TOKENS = 10_000_000  # per call, like the price book's bound
MAX_USAGE_TOKENS = 1_000_000_000  # reported usage at commit
MAX_INPUT_CHARS = 100_000_000
_MONEY = re.compile(r"[0-9]{1,16}(\.[0-9]{1,32})?")
_MONEY_PATTERN = "^[0-9]{1,16}(\\.[0-9]{1,32})?$"
_MONEY_LENGTH = 49  # 16 digits, a point, 32 decimals
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PLACEHOLDER = "value"  # the name given to the parsers, cut from their messages


# -- objects ------------------------------------------------------------------------------------


def check_object(value: object, allowed: Sequence[str], required: Sequence[str]) -> dict[str, Any]:
    """``value`` if it is an object with only ``allowed`` keys and every ``required`` one; the first
    unknown key (in the body's order), else the first missing one, is the fault."""
    if not isinstance(value, dict):
        raise field_error("invalid_request", f"expected a JSON object, {describe(value)}")
    for key in value:
        if key not in allowed:
            shown = key if _PLAIN_KEY.fullmatch(key) else _show(key)  # never echo raw bytes
            raise field_error(
                "invalid_request", f"unknown field; expected {', '.join(allowed)}", sub=shown
            )
    for key in required:
        if key not in value:
            raise field_error("invalid_request", "missing required field", sub=key)
    return value


# -- ids ----------------------------------------------------------------------------------------


def check_id(value: object, *, sub: str | None = None) -> str:
    """``value`` if it is a valid tenant, feature, model or request id."""
    if not isinstance(value, str):
        raise field_error("invalid_id", f"expected a string, {describe(value)}", sub=sub)
    try:
        return validate_id(value, what="id")
    except InvalidId as exc:
        raise field_error("invalid_id", exc.message.removeprefix("id "), sub=sub) from None


def _id(value: object) -> str:
    return check_id(value)


Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH), BeforeValidator(_id)]
"""A tenant, feature, model or request id: 1-200 characters, no control characters."""


# -- counts and flags ---------------------------------------------------------------------------


class _Count:
    """The check of an integer from 0 to ``high``."""

    __slots__ = ("high",)

    def __init__(self, high: int) -> None:
        self.high = high

    def __call__(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= self.high:
            raise field_error(
                "invalid_request", f"expected an integer from 0 to {self.high}, {describe(value)}"
            )
        return value


TokenCount = Annotated[int, Field(ge=0, le=MAX_TOKENS), BeforeValidator(_Count(MAX_TOKENS))]
"""Tokens of one call, as a client offers them at reserve."""
UsageCount = Annotated[
    int, Field(ge=0, le=MAX_USAGE_TOKENS), BeforeValidator(_Count(MAX_USAGE_TOKENS))
]
"""Tokens a call used, as a client reports them at commit."""
InputChars = Annotated[
    int, Field(ge=0, le=MAX_INPUT_CHARS), BeforeValidator(_Count(MAX_INPUT_CHARS))
]
"""A prompt's length in characters."""


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise field_error("invalid_request", f"expected true or false, {describe(value)}")
    return value


Flag = Annotated[bool, BeforeValidator(_flag)]
"""A JSON boolean, nothing else."""


# -- money --------------------------------------------------------------------------------------


def dollars_nanos(value: object, *, rounding: Literal["up", "half_up"]) -> int:
    """Dollars as a decimal string (``"0.0125"``), in nano-dollars (``"up"`` for estimates)."""
    if not isinstance(value, str):
        raise field_error(
            "invalid_amount",
            f'expected a string of dollars like "0.0125" (JSON numbers are not accepted for '
            f"money), {describe(value)}",
        )
    if not _MONEY.fullmatch(value):
        raise field_error(
            "invalid_amount",
            f'expected a string of dollars like "0.0125": digits, optionally a point and '
            f"decimals, no sign or exponent; got {_show(value)}",
        )
    try:
        return to_nanos(value, rounding=rounding, field=_PLACEHOLDER)
    except InvalidAmount as exc:
        raise field_error("invalid_amount", exc.message.removeprefix(f"{_PLACEHOLDER}: ")) from None


def _estimate(value: object) -> object:
    if dollars_nanos(value, rounding="up") == 0:
        # A hold of nothing limits nothing, and would not count as spend.
        raise field_error(
            "invalid_amount",
            f"zero estimate {_show(value)}; hold the call's worst-case cost, above $0",
        )
    return value


def _cost(value: object) -> object:
    dollars_nanos(value, rounding="half_up")
    return value


def _money(description: str) -> Any:
    return Field(pattern=_MONEY_PATTERN, max_length=_MONEY_LENGTH, description=description)


Estimate = Annotated[
    str,
    _money('The call\'s worst-case cost: dollars as a decimal string, above $0, e.g. "0.0125".'),
    BeforeValidator(_estimate),
]
"""A call's worst-case cost in dollars, above $0."""
Cost = Annotated[str, _money('Dollars as a decimal string, e.g. "0.0125".'), BeforeValidator(_cost)]
"""A call's actual cost in dollars."""
Amount = Annotated[str, Field(description="Dollars with 9 decimals (exact nano-dollars).")]
"""Money in an answer: dollars with 9 decimals."""


# -- reservation tokens -------------------------------------------------------------------------


@dataclass(slots=True)
class Settling:
    """The validation context of a body that names a reservation by its token: the tokens that
    open it, and the reservation once opened."""

    tokens: ReservationTokens
    reservation: Reservation | None = None

    def opened(self) -> Reservation:
        """The reservation the validated body's token carries."""
        if self.reservation is None:
            raise RuntimeError("no reservation token was validated")
        return self.reservation


def _token(value: object, info: ValidationInfo) -> object:
    if not isinstance(value, str):
        raise field_error(
            "invalid_request", f"expected a reservation token (string), {describe(value)}"
        )
    settling = info.context
    if isinstance(settling, Settling):
        try:
            settling.reservation = settling.tokens.open(value)
        except TokenRefused as exc:
            raise field_error(exc.error, exc.detail, status=exc.status) from None
    return value


TokenText = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_TOKEN_LENGTH,
        description="The reservation token `/reserve` returned as `id`.",
    ),
]
"""A reservation token in an answer."""
ReservationToken = Annotated[TokenText, BeforeValidator(_token)]
"""A reservation token in a request: opened (checked) when validated with a ``Settling``."""
