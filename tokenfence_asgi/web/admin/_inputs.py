"""The admin API's request inputs: a small JSON body, ids from the path or ``?id=``, query values.

Each is checked and a bad one raised as a ``Problem`` (422 ``invalid_body`` with one entry per bad
field, ``invalid_id``, ``invalid_query``; 413 ``body_too_large``).
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request

from tokenfence_asgi.errors import InvalidId
from tokenfence_asgi.store.keys import validate_id
from tokenfence_asgi.web.problem import Problem

__all__ = [
    "MAX_BODY",
    "MAX_DAYS",
    "date_range",
    "field_id",
    "invalid",
    "path_id",
    "query_int",
    "read_body",
]

MAX_BODY = 16 * 1024
MAX_DAYS = 366
_DOT_SEGMENTS = (".", "..")
_QUERY_ROUTES = {"tenant": "/api/tenant", "pool": "/api/pool"}


def invalid(field: str, message: str) -> Problem:
    """A 422 ``invalid_body`` naming one bad field."""
    return Problem(
        422, "invalid_body", f"{field}: {message}", errors=[{"field": field, "message": message}]
    )


async def read_body(request: Request, allowed: dict[str, tuple[type, ...]]) -> dict[str, Any]:
    """The JSON object body, its fields checked against ``allowed`` (name -> accepted types)."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise Problem(413, "body_too_large", f"the body is larger than {MAX_BODY} bytes")
    if not raw.strip():
        data: object = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise Problem(422, "invalid_body", f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Problem(422, "invalid_body", "the body must be a JSON object")
    errors = []
    for key, value in data.items():
        if key not in allowed:
            errors.append({"field": key, "message": f"unknown field; expected {sorted(allowed)}"})
            continue
        types = allowed[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            errors.append({"field": key, "message": f"must be {names}, got {json.dumps(value)}"})
    if errors:
        text = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise Problem(422, "invalid_body", text, errors=errors)
    return data


def path_id(request: Request, name: str, what: str) -> str:
    """The id named by the route: its ``{name}`` path segment, or on the ``?id=`` routes (which
    have no such segment) the one ``id`` query parameter."""
    if name in request.path_params:
        value = unquote(request.path_params[name])
        if value in _DOT_SEGMENTS:
            # A browser, httpx or curl resolves "." and ".." (also as %2E) as relative path
            # steps: /api/tenants/../kill is sent as /api/kill, the global switch. Whether such
            # a segment arrives intact depends on the client and any proxy, so it is never
            # read from a path.
            raise Problem(
                422,
                "invalid_id",
                f"{what} {value!r} cannot be a URL path segment (clients resolve it as a"
                f" relative path); give it as ?id= on the {_QUERY_ROUTES[name]} routes",
            )
    else:
        values = request.query_params.getlist("id")
        if len(values) != 1:
            raise Problem(422, "invalid_query", f"id (the {what}) is required, once: ?id=<{what}>")
        value = values[0]
    try:
        return validate_id(value, what=what)
    except InvalidId as exc:
        raise Problem(422, "invalid_id", exc.message) from None


def field_id(data: dict[str, Any], field: str, what: str) -> str | None:
    value = data.get(field)
    if value is None:
        return None
    try:
        return validate_id(value, what=what)
    except InvalidId as exc:
        raise invalid(field, exc.message) from None


def _query_date(request: Request, name: str, default: date) -> date:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise Problem(
            422, "invalid_query", f"{name} must be a date YYYY-MM-DD, got {text!r}"
        ) from None


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise Problem(422, "invalid_query", f"{name} must be an integer in [{low}, {high}]")
    return int(text)


def date_range(request: Request, today: date, default_days: int) -> tuple[date, date]:
    end = _query_date(request, "end", today)
    start = _query_date(request, "start", end - timedelta(days=default_days - 1))
    if start > end:
        raise Problem(422, "invalid_query", f"start ({start}) is after end ({end})")
    if (end - start).days >= MAX_DAYS:
        raise Problem(422, "invalid_query", f"at most {MAX_DAYS} days at a time")
    return start, end
