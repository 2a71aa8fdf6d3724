"""Errors as HTTP: the status of every error class, stable error codes, problem bodies."""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import tokenfence_asgi.errors as errors_module
from tokenfence_asgi.errors import (
    BudgetExceeded,
    ConfigError,
    InvalidAmount,
    StoreUnavailable,
    TokenFenceError,
    TooManyOpenHolds,
)
from tokenfence_asgi.guard import CallNotFenced
from tokenfence_asgi.web.problem import (
    FenceErrorResponse,
    Problem,
    http_exception_response,
    http_status,
)

ROOT = Path(__file__).resolve().parents[2]

# The documented contract: README's error table and the errors.py tree.
CODES_AND_STATUSES = {
    "TokenFenceError": ("ai_error", 500),
    "InvalidAmount": ("invalid_amount", 422),
    "InvalidId": ("invalid_id", 422),
    "ReservationIdConflict": ("reservation_id_conflict", 409),
    "InvalidCall": ("ai_invalid_request", 400),
    "ConfigError": ("invalid_config", 500),
    "UnknownPlan": ("unknown_plan", 404),
    "ModelNotPriced": ("ai_model_not_priced", 422),
    "TenantRequired": ("tenant_required", 401),
    "Refused": ("ai_refused", 403),
    "BudgetExceeded": ("ai_budget_exceeded", 402),
    "RequestLimitExceeded": ("ai_request_limit_exceeded", 429),
    "TooManyOpenHolds": ("ai_too_many_open_holds", 429),
    "ModelNotAllowed": ("ai_model_not_allowed", 403),
    "PolicyDenied": ("ai_policy_denied", 403),
    "ApprovalRequired": ("ai_approval_required", 403),
    "InputTooLong": ("ai_input_too_long", 413),
    "TenantDisabled": ("ai_disabled", 403),
    "Contended": ("ai_budget_busy", 503),
    "StoreUnavailable": ("ai_budget_unavailable", 503),
    "MissingExtra": ("missing_extra", 500),
}


def _error_classes() -> dict[str, type[TokenFenceError]]:
    return {name: getattr(errors_module, name) for name in errors_module.__all__}


def test_every_error_class_has_its_documented_code_and_status() -> None:
    classes = _error_classes()
    assert set(classes) == set(CODES_AND_STATUSES)
    for name, cls in classes.items():
        code, status = CODES_AND_STATUSES[name]
        assert (cls.error_code, http_status(cls)) == (code, status), name
        assert f"``error_code``: ``{code}``." in (cls.__doc__ or ""), name
    assert (CallNotFenced.error_code, http_status(CallNotFenced)) == ("ai_policy_denied", 403)


def test_error_codes_are_short_snake_case_and_one_per_class() -> None:
    codes = [cls.error_code for cls in _error_classes().values()]
    assert len(set(codes)) == len(codes)
    for code in codes:
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", code), code
        assert len(code) <= 32, code


def test_the_errors_know_nothing_of_http() -> None:
    """The status lives in the web layer; errors.py imports nothing above the core."""
    for cls in _error_classes().values():
        assert not hasattr(cls, "status_code"), cls
        assert not hasattr(cls, "http_status"), cls
    tree = ast.parse((ROOT / "tokenfence_asgi/errors.py").read_text())
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    }
    assert {m for m in imported if m.startswith("tokenfence_asgi")} == {"tokenfence_asgi.money"}


def test_the_body_carries_the_error_code() -> None:
    error = InvalidAmount("amount: negative amount '-1'")
    assert error.to_dict() == {"error": "invalid_amount", "message": error.message}
    outage = StoreUnavailable("redis at 10.0.0.5:6379 refused")
    assert outage.to_dict()["error"] == "ai_budget_unavailable"
    assert "10.0.0.5" not in str(outage.to_dict())


def test_an_instance_status_code_never_changes_the_response() -> None:
    """A LiteLLM refusal inside a Router carries 422 for the Router; the answer is the class's."""
    now = datetime(2025, 1, 1, 12, tzinfo=UTC)
    error = BudgetExceeded(
        tenant_id="acme",
        feature=None,
        window="1d",
        total_cost=Decimal("0.5"),
        max_cost=Decimal("0.5"),
        resets_at=now + timedelta(hours=12),
    )
    error.status_code = 422  # type: ignore[attr-defined]
    response = FenceErrorResponse(error, now=now)
    assert response.status_code == 402
    assert response.headers["Retry-After"] == str(12 * 3600)
    assert response.headers["RateLimit"] == '"1d";r=0;t=43200'


def test_a_subclass_takes_its_nearest_listed_base() -> None:
    class Custom(TooManyOpenHolds):
        error_code = "custom"

    class Bug(ConfigError):
        pass

    assert (http_status(Custom), http_status(Bug), http_status(TokenFenceError("x"))) == (
        429,
        500,
        500,
    )


async def test_problem_bodies_and_http_exceptions() -> None:
    async def bad(request: Request) -> Response:
        fields = [{"field": "plan", "message": "is required"}]
        raise Problem(422, "invalid_body", "plan: is required", errors=fields, field=None)

    async def locked(request: Request) -> Response:
        raise Problem(401, "unauthorized", "token", headers={"WWW-Authenticate": "Bearer"})

    async def answer(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return exc.response()

    app = Starlette(
        routes=[Route("/bad", bad), Route("/locked", locked)],
        exception_handlers={Problem: answer, HTTPException: http_exception_response},
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        invalid = await client.get("/bad")
        assert (invalid.status_code, invalid.json()) == (
            422,
            {
                "error": "invalid_body",
                "message": "plan: is required",
                "errors": [{"field": "plan", "message": "is required"}],
            },
        )
        refused = await client.get("/locked")
        assert (refused.status_code, refused.headers["www-authenticate"]) == (401, "Bearer")
        assert refused.json() == {"error": "unauthorized", "message": "token"}
        missing = await client.get("/nowhere")
        assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
        wrong = await client.post("/bad")
        assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")
        assert "allow" in wrong.headers


def test_limit_refusals_say_when_the_window_resets() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    resets_at = now + timedelta(seconds=90.2)
    budget = BudgetExceeded(
        tenant_id="t",
        feature=None,
        window="1h",
        total_cost=Decimal(1),
        max_cost=Decimal(1),
        resets_at=resets_at,
    )
    holds = TooManyOpenHolds(
        tenant_id="t", feature=None, open_holds=2, max_open_holds=2, resets_at=resets_at
    )
    for error in (budget, holds):
        assert (error.resets_in_s(now), error.retry_after_s(now)) == (91, 91)


def test_the_readme_error_table_matches() -> None:
    rows = [
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `")
    ]
    for name, (code, status) in CODES_AND_STATUSES.items():
        assert any(
            row.startswith(f"| `{name}`") and f"| `{code}` | {status}" in row for row in rows
        ), name
