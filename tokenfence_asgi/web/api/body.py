"""A request's JSON body, read strictly: media type, size limit, UTF-8, plain JSON, one model.

``read_body`` answers 415 for a body that is not JSON, 413 above the size limit (declared or
streamed) and 422 for text that is not UTF-8 or not JSON; JSON's ``NaN``/``Infinity`` and
duplicate keys are refused too. ``validate`` then checks the value against a request model.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from tokenfence_asgi.money import _show
from tokenfence_asgi.web.api.models import CANDIDATE_TAGS
from tokenfence_asgi.web.api.problems import ApiError, first_fault, invalid

__all__ = ["read_body", "validate"]

M = TypeVar("M", bound=BaseModel)


def _json_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


async def read_body(request: Request, max_bytes: int) -> object:
    """The request's body as decoded JSON (any JSON value); ``ApiError`` when it is not."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the body as JSON with 'Content-Type: application/json' (got "
            f"{_show(media) if media else 'none'})",
        )
    too_large = ApiError(413, "body_too_large", f"the body is larger than {max_bytes} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid("body", f"not valid UTF-8 at byte {exc.start}") from None
    if not text.strip():
        raise invalid("body", "empty; expected a JSON object")
    try:
        return json.loads(text, parse_constant=_json_constant, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise invalid(
            "body", f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise invalid("body", f"invalid JSON: {exc}"[:300]) from None


def validate(model: type[M], value: object, context: object = None) -> M:
    """``value`` as ``model``; its first fault as an ``ApiError`` (422, or the fault's status)."""
    try:
        return model.model_validate(value, context=context)
    except ValidationError as exc:
        raise first_fault(exc, CANDIDATE_TAGS) from None
