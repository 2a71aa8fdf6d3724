"""The HTTP API's own error answers (bad requests, tokens, auth), and a body's first fault.

Fence errors (402, 429, 403, 413, 503) are rendered by ``tokenfence_asgi.web.problem``; these
are the rest: ``{"error", "message", "field"?}`` with the status of the fault. The request models
report faults as pydantic errors of ours (``field_error``), turned into one answer naming the
field by ``first_fault``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError
from starlette.responses import Response

from tokenfence_asgi.money import _show

__all__ = ["ApiError", "Error", "describe", "field_error", "first_fault", "invalid"]


def _is_none(value: object) -> bool:
    return value is None


class Error(BaseModel):
    """An error: ``error`` is a stable code, ``message`` says what to change; ``field`` names the
    request field at fault. A fence's refusal adds the fields of its limit (``used``, ...)."""

    model_config = ConfigDict(extra="allow")

    error: str
    message: str
    field: str | None = Field(default=None, exclude_if=_is_none)


class ApiError(Exception):
    """A request answered with an error body of the API's own (not a fence error)."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.field = field
        self.headers = dict(headers or {})

    def response(self) -> Response:
        """The answer: the ``Error`` body, the status and the headers."""
        body = Error(error=self.error, message=self.message, field=self.field)
        return Response(
            body.model_dump_json(),
            status_code=self.status,
            headers=self.headers,
            media_type="application/json",
        )


def invalid(field: str, detail: str, error: str = "invalid_request") -> ApiError:
    """A 422 naming ``field``: ``"<field>: <detail>"``."""
    return ApiError(422, error, f"{field}: {detail}", field=field)


def _kind(value: object) -> str:
    """The JSON type of a decoded value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def describe(value: object) -> str:
    """``got <JSON type> <value>`` for a message (containers by their type only)."""
    if isinstance(value, dict | list):
        return f"got {_kind(value)}"
    return f"got {_kind(value)} {_show(value)}"


def field_error(
    error: str, detail: str, *, sub: str | None = None, status: int = 422
) -> PydanticCustomError:
    """A fault for a validator to raise: ``error`` is the body's code, ``detail`` the message
    after the field, ``sub`` a part of the validated value it is about (a key of an object)."""
    return PydanticCustomError(error, "{detail}", {"detail": detail, "sub": sub, "status": status})


def _field(loc: Sequence[int | str], sub: object, tags: frozenset[str]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part not in tags:  # a union member's tag is not a part of the body
            text += f".{part}" if text else part
    if isinstance(sub, str):
        text = f"{text}.{sub}" if text else sub
    return text or "body"


def first_fault(exc: ValidationError, tags: frozenset[str] = frozenset()) -> ApiError:
    """The answer to a body that failed validation: its first fault, in field order.

    ``tags`` are the names of union members, left out of the field's path.
    """
    fault = exc.errors(include_url=False, include_input=False)[0]
    ctx = fault.get("ctx") or {}
    field = _field(fault["loc"], ctx.get("sub"), tags)
    if "detail" in ctx:
        return ApiError(ctx["status"], fault["type"], f"{field}: {ctx['detail']}", field=field)
    # A constraint of the models that no check of ours reported first: still the field's fault.
    return invalid(field, fault["msg"])
