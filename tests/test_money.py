"""Tests for tokenfence_asgi.money: parsing dollars into nano-dollars and formatting them back."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, getcontext, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfence_asgi.errors import InvalidAmount
from tokenfence_asgi.money import (
    MAX_CALL_NANOS,
    MAX_LIMIT_NANOS,
    NANOS_PER_DOLLAR,
    format_amount,
    format_dollars,
    format_time,
    format_usd,
    format_usd_rounded,
    from_nanos,
    to_nanos,
)

DOLLAR = NANOS_PER_DOLLAR


def test_constants() -> None:
    assert NANOS_PER_DOLLAR == 10**9
    assert MAX_CALL_NANOS == 1_000_000 * 10**9
    assert MAX_LIMIT_NANOS == 4_000_000 * 10**9
    assert MAX_LIMIT_NANOS < 2**53  # Lua counters are doubles


@pytest.mark.parametrize(
    ("value", "nanos"),
    [
        ("0.10", 100_000_000),
        ("1.00", DOLLAR),
        ("100", 100 * DOLLAR),
        (Decimal("0.10"), 100_000_000),
        (Decimal("1.00"), DOLLAR),
        (Decimal("100"), 100 * DOLLAR),
        (0.1, 100_000_000),
        (1.0, DOLLAR),
        (100.0, 100 * DOLLAR),
        (1, DOLLAR),
        (100, 100 * DOLLAR),
        ("0.013", 13_000_000),
        ("5", 5 * DOLLAR),
        ("1e-3", 1_000_000),
        ("  0.013\n", 13_000_000),
        ("0.0000135", 13_500),
        (Decimal("0.0000135"), 13_500),
        (0.3, 300_000_000),
        (0.0000135, 13_500),
        ("0", 0),
        (0, 0),
        ("-0", 0),
        (Decimal("-0.000"), 0),
        (-0.0, 0),
        (Decimal("0E-999999999"), 0),
        ("1000000", MAX_CALL_NANOS),
        (1_000_000, MAX_CALL_NANOS),
    ],
)
def test_to_nanos_parses_exactly(value: Decimal | str | int | float, nanos: int) -> None:
    assert to_nanos(value) == nanos
    assert to_nanos(value, rounding="up") == nanos
    assert isinstance(to_nanos(value), int)


@pytest.mark.parametrize(
    ("value", "half_up", "up"),
    [
        ("0.0000000005", 1, 1),
        ("0.00000000049", 0, 1),
        ("0.0000000014", 1, 2),
        ("0.0000000015", 2, 2),
        ("0.0000000001", 0, 1),
        ("1.0000000001", DOLLAR, DOLLAR + 1),
        ("0.0129999999999", 13_000_000, 13_000_000),
        (Decimal("1e-999999999"), 0, 1),
        (Decimal("1e-9999999999999"), 0, 1),
        ("1000000.0000000004", MAX_CALL_NANOS, None),
    ],
)
def test_to_nanos_rounds_to_the_nano_dollar(
    value: str | Decimal, half_up: int, up: int | None
) -> None:
    assert to_nanos(value) == half_up
    if up is None:  # rounding up passes the maximum
        with pytest.raises(InvalidAmount, match="absurd"):
            to_nanos(value, rounding="up")
    else:
        assert to_nanos(value, rounding="up") == up


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "not a number ''"),
        ("   ", "not a number '   '"),
        ("abc", "not a number 'abc'"),
        ("1,000", "not a number '1,000'"),
        ("$5", "not a number '$5'"),
        ("0.5 USD", "not a number '0.5 USD'"),
        ("1e9999999999999999999999", "not a number '1e9999999999999999999999'"),
        ("nan", "NaN amount 'nan'"),
        ("-NaN", "NaN amount '-NaN'"),
        ("sNaN", "NaN amount 'sNaN'"),
        (Decimal("NaN"), "NaN amount Decimal('NaN')"),
        (Decimal("sNaN"), "NaN amount Decimal('sNaN')"),
        (float("nan"), "NaN amount nan"),
        ("inf", "infinite amount 'inf'"),
        ("-Infinity", "infinite amount '-Infinity'"),
        (Decimal("Infinity"), "infinite amount Decimal('Infinity')"),
        (float("inf"), "infinite amount inf"),
        ("-1", "negative amount '-1'"),
        (-1, "negative amount -1"),
        (-0.01, "negative amount -0.01"),
        (Decimal("-1e-30"), "negative amount Decimal('-1E-30')"),
        (Decimal("-1e999999999"), "negative amount Decimal('-1E+999999999')"),
        (True, "expected Decimal, str, int or float, got bool True"),
        (False, "expected Decimal, str, int or float, got bool False"),
        (None, "expected Decimal, str, int or float, got NoneType None"),
        ([1], "expected Decimal, str, int or float, got list [1]"),
        (b"1", "expected Decimal, str, int or float, got bytes b'1'"),
        ("1000001", "absurd amount '1000001', above the $1,000,000.00 maximum"),
        (1_000_000.01, "absurd amount 1000000.01"),
        ("1000000.000000001", "absurd amount '1000000.000000001'"),
        (Decimal("1e999999999"), "absurd amount Decimal('1E+999999999')"),
        (1e300, "absurd amount 1e+300"),
        pytest.param(10**5000, "absurd amount <int too large to show>", id="huge-int"),
    ],
)
def test_to_nanos_rejects(value: object, reason: str) -> None:
    with pytest.raises(InvalidAmount, match=re.escape(f"cost: {reason}")):
        to_nanos(value, field="cost")  # type: ignore[arg-type]


def test_invalid_amount_is_a_value_error_and_names_the_default_field() -> None:
    with pytest.raises(ValueError, match=r"^amount: negative amount '-5'$"):
        to_nanos("-5")


def test_unknown_rounding_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="rounding must be 'up' or 'half_up', got 'down'"):
        to_nanos("1", rounding="down")  # type: ignore[arg-type]


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(InvalidAmount) as caught:
        to_nanos("x" * 10_000)
    assert len(caught.value.message) < 200


def test_max_nanos_sets_the_largest_amount() -> None:
    assert to_nanos("4000000", max_nanos=MAX_LIMIT_NANOS) == MAX_LIMIT_NANOS
    with pytest.raises(InvalidAmount, match=r"above the \$4,000,000.00 maximum"):
        to_nanos("4000000.000000001", max_nanos=MAX_LIMIT_NANOS)
    with pytest.raises(InvalidAmount, match=r"above the \$1,000,000.00 maximum"):
        to_nanos("4000000")
    assert to_nanos("0.5", max_nanos=500_000_000) == 500_000_000
    with pytest.raises(InvalidAmount, match="absurd"):
        to_nanos("0.5000000001", max_nanos=500_000_000, rounding="up")


def test_the_global_decimal_context_is_neither_used_nor_changed() -> None:
    before = getcontext().copy()
    with localcontext() as context:
        context.prec = 3
        assert to_nanos("123456.789123456") == 123_456_789_123_456
        assert to_nanos("0.0000000015", rounding="up") == 2
        assert from_nanos(123_456_789_123_456) == Decimal("123456.789123456")
    assert getcontext().prec == before.prec
    assert getcontext().traps == before.traps


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (13_500, "0.0000135"),
        (0, "0"),
        (100_000_000, "0.1"),
        (DOLLAR, "1"),
        (100 * DOLLAR, "100"),
        (500_000_000, "0.5"),
        (13_000_000, "0.013"),
        (1_234_500_000_000, "1234.5"),
        (MAX_LIMIT_NANOS, "4000000"),
        (123_456_789_123_456, "123456.789123456"),
        (-13_500, "-0.0000135"),
        (-100 * DOLLAR, "-100"),
    ],
)
def test_from_nanos_is_exact_and_plain(nanos: int, text: str) -> None:
    assert from_nanos(nanos) == Decimal(text)
    assert str(from_nanos(nanos)) == text


def test_from_nanos_of_one_nano() -> None:
    assert from_nanos(1) == Decimal("0.000000001")
    assert f"{from_nanos(1):f}" == "0.000000001"


@pytest.mark.parametrize(
    ("nanos", "places", "text"),
    [
        (13_000_000, 6, "0.013000"),
        (0, 6, "0.000000"),
        (500, 6, "0.000001"),
        (499, 6, "0.000000"),
        (-500, 6, "-0.000001"),
        (-499, 6, "0.000000"),
        (-500_000_000, 6, "-0.500000"),
        (100 * DOLLAR, 6, "100.000000"),
        (1_234_500_000_000, 2, "1234.50"),
        (1_500_000_000, 0, "2"),
        (2_500_000_000, 0, "3"),
        (13_500, 9, "0.000013500"),
        (1, 12, "0.000000001000"),
        (MAX_LIMIT_NANOS, 6, "4000000.000000"),
    ],
)
def test_format_amount(nanos: int, places: int, text: str) -> None:
    assert format_amount(nanos, places) == text


def test_format_amount_defaults_to_six_places_and_rejects_negative_places() -> None:
    assert format_amount(13_500) == "0.000014"
    with pytest.raises(ValueError, match="places"):
        format_amount(1, -1)


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (500_000_000, "$0.50"),
        (1_234_500_000_000, "$1,234.50"),
        (13_500, "$0.0000135"),
        (0, "$0.00"),
        (-500_000_000, "-$0.50"),
        (100_000_000, "$0.10"),
        (DOLLAR, "$1.00"),
        (100 * DOLLAR, "$100.00"),
        (MAX_CALL_NANOS, "$1,000,000.00"),
        (123_456_789, "$0.123456789"),
        (1, "$0.000000001"),
        (-13_500, "-$0.0000135"),
    ],
)
def test_format_usd(nanos: int, text: str) -> None:
    assert format_usd(nanos) == text


@settings(deadline=None)
@given(st.decimals(min_value=0, max_value=1_000_000, places=9))
def test_amounts_with_nine_places_round_trip(amount: Decimal) -> None:
    """Any amount with at most 9 decimals survives dollars -> nanos -> dollars exactly."""
    assert from_nanos(to_nanos(amount)) == amount
    assert from_nanos(to_nanos(amount, rounding="up")) == amount
    assert from_nanos(to_nanos(str(amount))) == amount


@settings(deadline=None)
@given(st.decimals(min_value=0, max_value=1_000_000, allow_nan=False, allow_infinity=False))
def test_rounding_up_never_under_reserves(amount: Decimal) -> None:
    """Rounding up gives the smallest nano count >= the amount; half-up is within half a nano."""
    with localcontext() as context:
        context.prec = 10_000
        exact = amount.scaleb(9)
        up = to_nanos(amount, rounding="up")
        assert exact <= up < exact + 1
        assert abs(to_nanos(amount) - exact) <= Decimal("0.5")


@settings(deadline=None)
@given(st.floats(min_value=0, max_value=1_000_000, allow_nan=False, allow_infinity=False))
def test_floats_are_read_through_their_str(amount: float) -> None:
    """A float means the decimal number its str() shows, never its binary expansion."""
    assert to_nanos(amount) == to_nanos(Decimal(str(amount))) == to_nanos(str(amount))
    assert to_nanos(amount, rounding="up") == to_nanos(str(amount), rounding="up")


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=10**15 - 1))
def test_amounts_of_up_to_15_digits_survive_a_float(nanos: int) -> None:
    """Any nano amount of at most 15 significant digits round-trips through a float."""
    assert to_nanos(float(from_nanos(nanos))) == nanos


@settings(deadline=None)
@given(st.text(), st.sampled_from(["up", "half_up"]))
def test_arbitrary_text_raises_only_invalid_amount(text: str, rounding: str) -> None:
    """Parsing any text either gives a nano count in range or raises InvalidAmount."""
    try:
        nanos = to_nanos(text, rounding=rounding)  # type: ignore[arg-type]
    except InvalidAmount:
        return
    assert 0 <= nanos <= MAX_CALL_NANOS


@settings(deadline=None)
@given(st.decimals(allow_nan=True, allow_infinity=True), st.sampled_from(["up", "half_up"]))
def test_arbitrary_decimals_raise_only_invalid_amount(amount: Decimal, rounding: str) -> None:
    """Parsing any Decimal either gives a nano count in range or raises InvalidAmount."""
    try:
        nanos = to_nanos(amount, rounding=rounding)  # type: ignore[arg-type]
    except InvalidAmount:
        return
    assert 0 <= nanos <= MAX_CALL_NANOS


@given(st.integers(min_value=-(10**18), max_value=10**18))
def test_formats_agree_with_from_nanos(nanos: int) -> None:
    """Both formats show the exact amount from_nanos gives (format_amount at 9 places)."""
    assert Decimal(format_amount(nanos, 9)) == from_nanos(nanos)
    assert Decimal(format_usd(nanos).replace("$", "").replace(",", "")) == from_nanos(nanos)


@pytest.mark.parametrize(
    ("amount", "places", "text"),
    [
        (Decimal("0.0135"), 6, "0.013500"),
        (Decimal("0.0135"), None, "0.0135"),
        (Decimal("5.50"), None, "5.5"),
        (Decimal("100"), None, "100"),
        (Decimal("1E+2"), None, "100"),
        (Decimal("0.000000001"), None, "0.000000001"),
        (Decimal(0), 6, "0.000000"),
        (Decimal(0), None, "0"),
        (Decimal("0.0125005"), 6, "0.012500"),  # half-even, as the 402 body has always shown
        (Decimal("0.0125015"), 6, "0.012502"),
        (Decimal("4000000"), 9, "4000000.000000000"),
        (Decimal("-0.5"), 2, "-0.50"),
    ],
)
def test_format_dollars(amount: Decimal, places: int | None, text: str) -> None:
    assert format_dollars(amount, places) == text


def test_format_dollars_of_none_and_a_bad_places() -> None:
    assert format_dollars(None) is None
    assert format_dollars(None, 6) is None
    with pytest.raises(ValueError, match="places"):
        format_dollars(Decimal(1), -1)


def test_rendering_ignores_the_callers_decimal_context() -> None:
    """An app that changes its decimal context does not change what the bodies show."""
    with localcontext() as context:
        context.rounding = ROUND_HALF_UP
        context.prec = 3
        assert format_dollars(Decimal("0.0125005"), 6) == "0.012500"
        assert format_usd_rounded(Decimal("1234.565")) == "$1,234.57"
    assert getcontext().prec == 28


@pytest.mark.parametrize(
    ("amount", "places", "text"),
    [
        (Decimal("1234.5"), 2, "$1,234.50"),
        (Decimal("1234.565"), 2, "$1,234.57"),  # half-up
        (Decimal("0.000135"), 4, "$0.0001"),
        (Decimal("5"), 0, "$5"),
        (Decimal("2.5"), 0, "$3"),
        (Decimal("-0.5"), 2, "-$0.50"),
        (Decimal("-0.001"), 2, "$0.00"),  # rounds to zero: no sign
        (Decimal(0), 2, "$0.00"),
    ],
)
def test_format_usd_rounded(amount: Decimal, places: int, text: str) -> None:
    assert format_usd_rounded(amount, places) == text


@pytest.mark.parametrize(
    ("value", "timespec", "text"),
    [
        (datetime(2025, 1, 31, tzinfo=UTC), "auto", "2025-01-31T00:00:00Z"),
        (datetime(2025, 1, 31, 1, 2, 3, 456789, tzinfo=UTC), "auto", "2025-01-31T01:02:03.456789Z"),
        (
            datetime(2025, 1, 31, 1, 2, 3, 456789, tzinfo=UTC),
            "milliseconds",
            "2025-01-31T01:02:03.456Z",
        ),
        (datetime(2025, 1, 31, 1, 2, 3, 456789, tzinfo=UTC), "seconds", "2025-01-31T01:02:03Z"),
        (
            datetime(2025, 1, 31, 2, tzinfo=timezone(timedelta(hours=2))),
            "auto",
            "2025-01-31T00:00:00Z",
        ),
    ],
)
def test_format_time(value: datetime, timespec: str, text: str) -> None:
    assert format_time(value, timespec=timespec) == text


def test_format_time_of_none() -> None:
    assert format_time(None) is None
