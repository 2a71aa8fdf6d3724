"""Untrusted text: the one rule for which characters are control characters.

A control character here is any of Unicode category ``C*``: control (``Cc``), format (``Cf``),
surrogate (``Cs``), private use (``Co``) and unassigned (``Cn``). Ids (tenant, feature, pool,
reservation) may hold none; ledger labels have them replaced.
"""

from __future__ import annotations

import unicodedata

__all__ = ["first_control", "is_control", "replace_control"]


def is_control(char: str) -> bool:
    """Whether the one character ``char`` is a control character (category ``C*``)."""
    return unicodedata.category(char)[0] == "C"


def first_control(text: str) -> str | None:
    """The first control character of ``text``, or ``None`` when it has none."""
    if text.isprintable():  # no C* character (nor a separator but the space): nothing to look for
        return None
    return next((char for char in text if is_control(char)), None)


def replace_control(text: str, replacement: str = "\ufffd") -> str:
    """``text`` with each control character replaced by ``replacement`` (U+FFFD by default)."""
    if text.isprintable():
        return text
    return "".join(replacement if is_control(char) else char for char in text)
