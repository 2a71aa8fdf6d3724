"""Dollars <-> integer nano-dollars, and money and times rendered as text.

Below the public API every amount of money is an ``int`` number of nano-dollars (1e-9 USD): one
gpt-4o-mini input token costs 150 nano-dollars, so micro-dollars would be too coarse, and integers
add up exactly in Python and in Lua. This module is the only place where dollars are parsed or
formatted, and where a time is written for a JSON body; it never does float arithmetic on money
(a ``float`` input is converted via ``str``, so ``0.1`` means exactly ten cents).

Which function writes what::

    format_amount(13_500_000)             "0.013500"      nano-dollars, fixed places (half-up)
    format_usd(13_500)                    "$0.0000135"    nano-dollars for people, exact
    format_dollars(Decimal("0.0135"), 6)  "0.013500"      a Decimal, fixed places (half-even)
    format_dollars(Decimal("0.0135"))     "0.0135"        a Decimal, exact
    format_usd_rounded(Decimal("1234.5")) "$1,234.50"     a Decimal for people (half-up)
    format_time(resets_at)                "2025-01-31T00:00:00Z"
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import (
    MAX_EMAX,
    MIN_EMIN,
    ROUND_CEILING,
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    Context,
    Decimal,
    InvalidOperation,
)
from typing import TYPE_CHECKING, Literal, TypeAlias, overload

if TYPE_CHECKING:  # errors renders money with this module: imported when an amount is refused
    from tokenfence_asgi.errors import InvalidAmount

__all__ = [
    "MAX_CALL_NANOS",
    "MAX_LIMIT_NANOS",
    "NANOS_PER_DOLLAR",
    "MoneyInput",
    "format_amount",
    "format_dollars",
    "format_time",
    "format_usd",
    "format_usd_rounded",
    "from_nanos",
    "to_nanos",
]

NANOS_PER_DOLLAR = 1_000_000_000
"""Nano-dollars in one US dollar."""

MAX_CALL_NANOS = 1_000_000 * NANOS_PER_DOLLAR
"""The largest amount accepted for one call ($1,000,000); anything above is a bug, not a cost."""

MAX_LIMIT_NANOS = 4_000_000 * NANOS_PER_DOLLAR
"""The largest limit ($4,000,000); keeps Lua's double counters far below 2**53 nano-dollars."""

MoneyInput: TypeAlias = Decimal | str | int | float
"""What the public API accepts as dollars: ``Decimal("0.013")``, ``"0.013"``, ``5`` or ``0.5``."""

_NANO = Decimal(1).scaleb(-9)
_ROUNDINGS = {"up": ROUND_CEILING, "half_up": ROUND_HALF_UP}
# Long reprs (a megabyte of digits from an HTTP body) are cut so that error messages stay readable.
_MAX_SHOWN = 80


def _show(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        return f"<{type(value).__name__} too large to show>"
    return text if len(text) <= _MAX_SHOWN else f"{text[: _MAX_SHOWN - 3]}..."


def _invalid(field: str, reason: str, value: object, detail: str = "") -> InvalidAmount:
    from tokenfence_asgi.errors import InvalidAmount

    return InvalidAmount(f"{field}: {reason} {_show(value)}{detail}")


def _absurd(field: str, value: object, max_nanos: int) -> InvalidAmount:
    return _invalid(field, "absurd amount", value, f", above the {format_usd(max_nanos)} maximum")


def _parse(value: object, field: str) -> Decimal:
    """Turn an accepted input type into a ``Decimal`` without rounding; reject every other type."""
    if isinstance(value, Decimal):
        return value
    # bool is an int subclass; True dollars is a bug in the caller, not one dollar.
    if isinstance(value, bool):
        raise _invalid(field, "expected Decimal, str, int or float, got bool", value)
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float | str):
        # str(float) is the shortest text that round-trips, so 0.1 becomes exactly Decimal("0.1").
        text = value.strip() if isinstance(value, str) else str(value)
        try:
            return Decimal(text)
        except (InvalidOperation, ValueError):
            raise _invalid(field, "not a number", value) from None
    raise _invalid(field, f"expected Decimal, str, int or float, got {type(value).__name__}", value)


def to_nanos(
    value: MoneyInput,
    *,
    rounding: Literal["up", "half_up"] = "half_up",
    field: str = "amount",
    max_nanos: int = MAX_CALL_NANOS,
) -> int:
    """Parse an amount of dollars into integer nano-dollars.

    ``Decimal`` is taken as is, ``int`` exactly, ``float`` via ``str`` (``0.1`` -> 100_000_000),
    ``str`` stripped of surrounding whitespace (``"0.013"``, ``"5"``, ``"1e-3"``). Rounding to the
    nano-dollar is ``"half_up"`` (actual costs) or ``"up"`` (estimates: never under-reserve).

    Raises ``InvalidAmount`` (message names ``field`` and the value) for a bool or another type,
    text that is not a number, NaN, an infinity, a negative amount (``-0`` is zero), or an amount
    above ``max_nanos`` after rounding. An unknown ``rounding`` is a ``ValueError``.
    """
    if rounding not in _ROUNDINGS:
        raise ValueError(f"rounding must be 'up' or 'half_up', got {rounding!r}")
    amount = _parse(value, field)
    if amount.is_nan():
        raise _invalid(field, "NaN amount", value)
    if amount.is_infinite():
        raise _invalid(field, "infinite amount", value)
    if amount.is_zero():
        return 0
    if amount.is_signed():
        raise _invalid(field, "negative amount", value)
    # Decide from the exponent alone before any arithmetic, so that Decimal("1e999999999") or
    # "1e-999999999" costs nothing: value < 10 ** (adjusted + 1).
    scaled_adjusted = amount.adjusted() + 9
    max_digits = len(str(max_nanos))
    if scaled_adjusted >= max_digits:  # value * 1e9 >= 10 ** max_digits > max_nanos
        raise _absurd(field, value, max_nanos)
    if scaled_adjusted < -1:  # value * 1e9 < 0.1: below half a nano-dollar, yet positive
        return 1 if rounding == "up" else 0
    # quantize fails rather than rounds when the result does not fit the precision, so a local
    # context with room for every digit of max_nanos keeps the single rounding exact.
    context = Context(prec=max_digits + 2, Emax=MAX_EMAX, Emin=MIN_EMIN)
    quantized = amount.quantize(_NANO, rounding=_ROUNDINGS[rounding], context=context)
    nanos = int(quantized.scaleb(9, context=context))
    if nanos > max_nanos:
        raise _absurd(field, value, max_nanos)
    return nanos


def from_nanos(nanos: int) -> Decimal:
    """Exact dollars for an amount of nano-dollars: ``13_500`` -> ``Decimal("0.0000135")``.

    Trailing fractional zeros are dropped but whole dollars keep their digits (``100`` dollars is
    ``Decimal("100")``, not ``Decimal("1E+2")``), so ``str()`` of everyday amounts reads plainly.
    """
    sign = 1 if nanos < 0 else 0
    units, exponent = abs(nanos), -9
    while exponent < 0 and units and units % 10 == 0:
        units //= 10
        exponent += 1
    if not units:
        return Decimal(0)
    return Decimal((sign, Decimal(units).as_tuple().digits, exponent))


def _split(nanos: int, places: int) -> tuple[str, int, str]:
    """Sign, whole dollars and ``places`` decimals of ``nanos``, rounded half-up (away from 0)."""
    magnitude = abs(nanos)
    if places >= 9:
        units = magnitude * 10 ** (places - 9)
    else:
        step = 10 ** (9 - places)
        units, remainder = divmod(magnitude, step)
        if 2 * remainder >= step:
            units += 1
    dollars, fraction = divmod(units, 10**places)
    sign = "-" if nanos < 0 and units else ""
    return sign, dollars, f"{fraction:0{places}d}" if places else ""


def format_amount(nanos: int, places: int = 6) -> str:
    """A plain decimal string with exactly ``places`` decimals, rounded half-up, for JSON bodies.

    ``13_000_000`` -> ``"0.013000"``. Negative amounts (a delta) get a leading ``"-"``; an amount
    that rounds to zero is shown without a sign. Raises ``ValueError`` if ``places`` is negative.
    """
    if places < 0:
        raise ValueError(f"places must be >= 0, got {places!r}")
    sign, dollars, fraction = _split(nanos, places)
    return f"{sign}{dollars}.{fraction}" if places else f"{sign}{dollars}"


def format_usd(nanos: int) -> str:
    """Human display of an amount: ``"$1,234.50"``, ``"$0.0000135"``, ``"-$0.50"``.

    Thousands separators, at least 2 decimals and up to 9 (exact: no rounding), trailing zeros
    beyond the second decimal dropped.
    """
    sign, dollars, fraction = _split(nanos, 9)
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"{sign}${dollars:,}.{fraction}"


# Rendering a Decimal must not depend on the caller's decimal context (an app may change it).
_RENDER = Context(prec=60, Emax=MAX_EMAX, Emin=MIN_EMIN)


def _places(places: int) -> Decimal:
    if places < 0:
        raise ValueError(f"places must be >= 0, got {places!r}")
    return Decimal(1).scaleb(-places)


@overload
def format_dollars(amount: Decimal, places: int | None = None) -> str: ...
@overload
def format_dollars(amount: None, places: int | None = None) -> None: ...
def format_dollars(amount: Decimal | None, places: int | None = None) -> str | None:
    """Dollars as a plain decimal string for a JSON body (never exponent notation).

    With ``places``, exactly that many decimals, rounded half-even (what the 402 body and the
    CLI's JSON have always shown: ``Decimal("0.0135")``, 6 -> ``"0.013500"``); without, every
    digit of the amount and no trailing fractional zero (``Decimal("5.50")`` -> ``"5.5"``,
    ``Decimal("100")`` -> ``"100"``). ``None`` gives ``None``.
    """
    if amount is None:
        return None
    if places is not None:
        return f"{amount.quantize(_places(places), ROUND_HALF_EVEN, _RENDER):f}"
    text = f"{amount:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_usd_rounded(amount: Decimal, places: int = 2) -> str:
    """Dollars for people, rounded half-up to ``places``: ``"$1,234.50"``, ``"-$0.50"``, ``"$5"``.

    Thousands separators; the sign goes before the ``$`` (as in ``format_usd``).
    """
    rounded = amount.quantize(_places(places), ROUND_HALF_UP, _RENDER)
    sign = "-" if rounded < 0 else ""
    return f"{sign}${rounded.copy_abs():,.{places}f}"


@overload
def format_time(value: datetime, *, timespec: str = "auto") -> str: ...
@overload
def format_time(value: None, *, timespec: str = "auto") -> None: ...
def format_time(value: datetime | None, *, timespec: str = "auto") -> str | None:
    """An aware datetime as ISO 8601 in UTC with a ``Z``: ``"2025-01-31T00:00:00Z"``.

    ``timespec`` is ``datetime.isoformat``'s (``"seconds"``, ``"milliseconds"``, ...); the
    default shows microseconds only when there are some. ``None`` gives ``None``.
    """
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")
