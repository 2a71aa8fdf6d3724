"""What an id may be: tenant, feature and reservation ids come from untrusted input."""

from __future__ import annotations

from tokenfence_asgi._text import first_control
from tokenfence_asgi.errors import InvalidId

__all__ = ["MAX_ID_LENGTH", "validate_id"]

MAX_ID_LENGTH = 200


def validate_id(value: object, *, what: str = "tenant_id") -> str:
    """Return ``value`` if it is an acceptable id, else raise ``InvalidId`` naming ``what``.

    Acceptable: a ``str`` of 1-200 characters with no control, format, surrogate, private-use
    or unassigned characters (Unicode category ``C*``).
    """
    if not isinstance(value, str):
        raise InvalidId(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidId(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidId(f"{what} is {len(value)} characters long; the maximum is {MAX_ID_LENGTH}")
    if (char := first_control(value)) is not None:
        raise InvalidId(f"{what} contains the control character {char!r}")
    return value
