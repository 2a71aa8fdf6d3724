"""The route table of the HTTP API: what the router serves and what the OpenAPI document says.

One ``Operation`` per route: its method and path, the endpoint (by name), the request and
response models, and what each status it answers with means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from tokenfence_asgi.web.api.models import (
    Commit,
    CommitRequest,
    Release,
    ReleaseRequest,
    Reservation,
    ReserveRequest,
    Status,
    StatusPath,
)

__all__ = ["OPERATIONS", "Operation"]


@dataclass(frozen=True, slots=True)
class Operation:
    """One route. ``name`` is the operation id and the endpoint's name."""

    name: str
    method: str
    path: str
    summary: str
    ok: str  # what a 200 answer is
    response: type[BaseModel] | None  # None: any JSON object
    errors: Mapping[str, str]  # status -> what it means
    body: type[BaseModel] | None = None
    params: type[BaseModel] | None = None  # the path parameters
    route: str = ""  # the router's path, when it is not ``path``
    description: str | None = None
    public: bool = False  # served without the service token


_BODY_ERRORS = {
    "401": "Missing or wrong service token (`unauthorized`).",
    "413": "The body is too large (`body_too_large`), or the prompt is longer than the plan "
    "allows (`ai_input_too_long`).",
    "415": "The body is not JSON (`unsupported_media_type`).",
    "422": "The body is invalid: `invalid_request`, `invalid_id`, `invalid_amount`, "
    "`invalid_reservation` or `no_price`; `field` names the field.",
}
_FENCE_ERRORS = {
    "503": "The budget store is unreachable (`ai_budget_unavailable`) or the tenant's plan kept "
    "changing (`ai_budget_busy`); retry.",
}
_SETTLE_ERRORS = {
    **_BODY_ERRORS,
    "410": "The token is older than the store remembers (`reservation_expired`).",
    **_FENCE_ERRORS,
}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        name="reserve",
        method="POST",
        path="/reserve",
        summary="Hold the worst-case cost of a call on the first candidate that fits the "
        "tenant's plan and budgets.",
        body=ReserveRequest,
        response=Reservation,
        ok="Held; `id` is the token to commit or release.",
        errors={
            **_BODY_ERRORS,
            "402": "A cost limit would be exceeded (`ai_budget_exceeded`).",
            "403": "The model is not allowed (`ai_model_not_allowed`) or a kill switch is on "
            "(`ai_disabled`).",
            "409": "The request id was used and settled (`request_id_settled`), or held for "
            "other candidates (`request_id_conflict`).",
            "429": "A request-count limit is reached (`ai_request_limit_exceeded`), or the "
            "tenant has as many calls in flight as the fence allows "
            "(`ai_too_many_open_holds`: commit or release some).",
            **_FENCE_ERRORS,
        },
    ),
    Operation(
        name="commit",
        method="POST",
        path="/commit",
        summary="Charge the actual cost; idempotent (a repeat is `duplicate` and reports the "
        "first charge).",
        description="Give `cost` (dollars), or `input_tokens` and `output_tokens` for the "
        "service to price at `model` (default: the reserved model), never below the reserved "
        "model's price.",
        body=CommitRequest,
        response=Commit,
        ok="Charged (or a repeat).",
        errors=_SETTLE_ERRORS,
    ),
    Operation(
        name="release",
        method="POST",
        path="/release",
        summary="Drop the hold without charging; idempotent.",
        body=ReleaseRequest,
        response=Release,
        ok="Released (or a repeat).",
        errors=_SETTLE_ERRORS,
    ),
    Operation(
        name="status",
        method="GET",
        path="/status/{tenant}",
        route="/status/{tenant:path}",  # a tenant id may hold a slash
        summary="The tenant's plan, switches, open holds and every window.",
        params=StatusPath,
        response=Status,
        ok="The tenant's status.",
        errors={
            "401": "Missing or wrong service token.",
            "404": "No such route (an empty tenant).",
            "422": "The tenant id is invalid (`invalid_id`).",
            **_FENCE_ERRORS,
        },
    ),
    Operation(
        name="openapi",
        method="GET",
        path="/openapi.json",
        summary="This document.",
        response=None,
        ok="The OpenAPI document.",
        errors={},
        public=True,
    ),
)
"""Every route, in the order the document lists them."""
