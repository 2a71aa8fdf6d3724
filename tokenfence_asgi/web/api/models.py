"""The request and response bodies of the HTTP API, declared once as pydantic models.

The request models validate a decoded JSON body (``ReserveRequest.model_validate(data)``) in
the order of their fields, the first fault answered by ``problems.first_fault``; together with
the response models they are the schemas of the OpenAPI document.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from tokenfence_asgi.money import to_nanos
from tokenfence_asgi.web.api.fields import (
    MAX_CANDIDATES,
    Amount,
    Cost,
    Estimate,
    Flag,
    Id,
    InputChars,
    ReservationToken,
    TokenCount,
    TokenText,
    UsageCount,
    check_id,
    check_object,
)
from tokenfence_asgi.web.api.problems import Error, describe, field_error

__all__ = [
    "CANDIDATE_TAGS",
    "Candidate",
    "Commit",
    "CommitRequest",
    "Error",
    "EstimateCandidate",
    "Release",
    "ReleaseRequest",
    "Reservation",
    "ReserveRequest",
    "Scope",
    "Status",
    "StatusPath",
    "TokenCandidate",
    "Window",
]


class _Strict(BaseModel):
    """A request body part: no field beyond those declared."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _Body(_Strict):
    """A request body: a JSON object whose unknown, then missing, fields are its first faults."""

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, value: Any) -> Any:
        check_object(value, *_names(cls))
        return value


@functools.cache
def _names(model: type[BaseModel]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A body's fields as its messages list them (required first), and the required ones."""
    fields = model.model_fields
    required = tuple(name for name, info in fields.items() if info.is_required())
    optional = tuple(name for name, info in fields.items() if not info.is_required())
    return (*required, *optional), required


# -- requests -----------------------------------------------------------------------------------


class EstimateCandidate(_Strict):
    """A model the client offers with its call's worst-case cost in dollars."""

    model: Id
    estimate: Estimate

    @property
    def nanos(self) -> int:
        """The estimate in nano-dollars, rounded up."""
        return to_nanos(self.estimate, rounding="up")


class TokenCandidate(_Strict):
    """A model the client offers with token counts, for the service to price (without
    ``max_output_tokens``: the model's maximum output)."""

    model: Id
    input_tokens: TokenCount
    max_output_tokens: TokenCount | None = None

    @model_validator(mode="after")
    def _not_nothing(self) -> Self:
        if self.input_tokens == 0 and self.max_output_tokens == 0:
            raise field_error(
                "invalid_request",
                "input_tokens and max_output_tokens are both 0: that prices a call of nothing",
            )
        return self


_CANDIDATE_FIELDS = ("model", "estimate", "input_tokens", "max_output_tokens")
CANDIDATE_TAGS = frozenset({"EstimateCandidate", "TokenCandidate"})
"""The union members' tags, which pydantic puts in an error's location."""


def _candidate_kind(value: Any) -> str:
    return "EstimateCandidate" if "estimate" in value else "TokenCandidate"


def _candidate(value: object) -> object:
    """One of the two kinds, the model id first: the faults of neither member alone."""
    value = check_object(value, _CANDIDATE_FIELDS, ("model",))
    check_id(value["model"], sub="model")
    if "estimate" in value:
        for other in ("input_tokens", "max_output_tokens"):
            if other in value:
                raise field_error(
                    "invalid_request",
                    "give either estimate (dollars) or input_tokens, not both",
                    sub=other,
                )
    elif "input_tokens" not in value:
        raise field_error(
            "invalid_request",
            "needs estimate (dollars as a string) or input_tokens (priced by the service)",
        )
    return value


Candidate = Annotated[
    Annotated[EstimateCandidate, Tag("EstimateCandidate")]
    | Annotated[TokenCandidate, Tag("TokenCandidate")],
    Discriminator(_candidate_kind),
    BeforeValidator(_candidate),
]
"""A model offered for a call: with a dollar estimate, or with token counts."""


def _candidates(value: object) -> object:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_CANDIDATES:
        shown = f"{len(value)} items" if isinstance(value, list) else describe(value)
        raise field_error(
            "invalid_request",
            f"expected an array of 1 to {MAX_CANDIDATES} candidates, got {shown}",
        )
    return value


class ReserveRequest(_Body):
    """Hold the worst case of a call on the first candidate the plan allows and the budgets fit."""

    tenant: Id
    feature: Id | None = None
    request_id: Id | None = None
    candidates: Annotated[
        list[Candidate],
        Field(min_length=1, max_length=MAX_CANDIDATES),
        BeforeValidator(_candidates),
    ]
    input_chars: InputChars | None = None
    downgrade: Flag = True


class CommitRequest(_Body):
    """Charge a reservation its actual cost: ``cost``, or token counts to price."""

    id: ReservationToken
    cost: Cost | None = None
    input_tokens: UsageCount | None = None
    output_tokens: UsageCount | None = None
    model: Id | None = None

    @model_validator(mode="after")
    def _priced(self) -> Self:
        if self.cost is None and (self.input_tokens is None or self.output_tokens is None):
            raise field_error(
                "invalid_request",
                "missing: give cost (dollars as a string), or input_tokens and "
                "output_tokens for the service to price",
                sub="cost",
            )
        return self


class ReleaseRequest(_Body):
    """Drop a reservation's hold without charging."""

    id: ReservationToken


class StatusPath(_Strict):
    """The path parameters of ``GET /status/{tenant}``."""

    tenant: Id


# -- responses ----------------------------------------------------------------------------------


class Reservation(BaseModel):
    """A hold: ``id`` is the token to commit or release it with."""

    id: TokenText
    reservation_id: str
    tenant: str
    feature: str | None
    model: str | None
    amount: Amount
    downgraded: bool
    degraded: bool
    plan: str
    pool: str | None
    expires_at: datetime | None
    shadow_refusal: Error | None


class _Settlement(BaseModel):
    reservation_id: str
    tenant: str
    feature: str | None
    cost: Amount
    duplicate: bool
    late: bool
    recorded: bool


class Commit(_Settlement):
    """What a commit charged (or, for a repeat, what the first one did)."""

    model: str | None


class Release(_Settlement):
    """A release: ``released`` only for the call that dropped the hold."""

    released: bool


Scope = Literal["tenant", "pool"]


class Window(BaseModel):
    """One limit window of a tenant or its pool."""

    window: str
    kind: str
    scope: Scope
    used: Amount
    held: Amount
    limit: Amount | None
    remaining: Amount | None
    carried: Amount
    requests: int
    max_requests: int | None
    resets_at: datetime
    features: dict[str, Amount]


class Status(BaseModel):
    """A tenant's plan, switches, open holds and every window (its pool's too)."""

    tenant: str
    plan: str
    killed: bool
    killed_features: list[str]
    held: Amount
    open_holds: int
    pool: str | None
    pool_plan: str | None
    windows: list[Window]
    pool_windows: list[Window]
