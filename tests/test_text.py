"""Tests for tokenfence_asgi._text: the one rule for control characters in untrusted text."""

from __future__ import annotations

import sys
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenfence_asgi._text import first_control, is_control, replace_control


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("acme", None),
        ("team/acme x", None),
        ("caf\u00e9\u00a0\u2028", None),  # no-break space and line separator: Z*, not C*
        ("a\x00b", "\x00"),
        ("a\nb\tc", "\n"),
        ("x\u200by", "\u200b"),  # zero width space: Cf
        ("x\ue000", "\ue000"),  # private use: Co
        ("x\ud800", "\ud800"),  # a lone surrogate: Cs
        ("x\U000e0001\x7f", "\U000e0001"),  # a tag character (Cf), then DEL (Cc)
    ],
)
def test_first_control(text: str, found: str | None) -> None:
    assert first_control(text) == found


def test_replace_control() -> None:
    assert replace_control("model\x00\u200bname") == "model\ufffd\ufffdname"
    assert replace_control("plain") == "plain"
    assert replace_control("a\nb", "?") == "a?b"


def test_is_control_is_unicode_category_c() -> None:
    """Every code point: a control character is exactly one of category C*."""
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        assert is_control(char) == unicodedata.category(char).startswith("C")


@given(st.text())
def test_the_fast_path_agrees_with_the_scan(text: str) -> None:
    """first_control and replace_control agree with a plain scan of every character."""
    expected = next((c for c in text if unicodedata.category(c)[0] == "C"), None)
    assert first_control(text) == expected
    assert replace_control(text) == "".join(
        "\ufffd" if unicodedata.category(c)[0] == "C" else c for c in text
    )
