"""The endpoints of the HTTP API over one fence: reserve, commit, release, status.

Each checks the service token, reads its body into a request model, calls the fence and
answers with a response model; a fence refusal is answered by ``web.problem`` (the
middleware's body and headers), a fault of the request by an ``ApiError``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from tokenfence_asgi.config import Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import (
    InputTooLong,
    InvalidAmount,
    ModelNotAllowed,
    ReservationIdConflict,
    TokenFenceError,
)
from tokenfence_asgi.money import format_amount, format_dollars, from_nanos, to_nanos
from tokenfence_asgi.pricing.book import PriceBook
from tokenfence_asgi.results import Reservation, Settlement, TenantStatus, WindowStatus
from tokenfence_asgi.web.api import models
from tokenfence_asgi.web.api.body import read_body, validate
from tokenfence_asgi.web.api.fields import Settling
from tokenfence_asgi.web.api.models import (
    CommitRequest,
    EstimateCandidate,
    ReleaseRequest,
    ReserveRequest,
    StatusPath,
    TokenCandidate,
)
from tokenfence_asgi.web.api.pricing import NoPrice, Pricer
from tokenfence_asgi.web.api.problems import ApiError, Error, invalid
from tokenfence_asgi.web.api.tokens import ReservationTokens
from tokenfence_asgi.web.auth import token_matches
from tokenfence_asgi.web.problem import FenceErrorResponse

__all__ = ["Endpoints"]

_Offer = tuple[int, EstimateCandidate | TokenCandidate]


def _answer(body: BaseModel) -> Response:
    return Response(body.model_dump_json(), media_type="application/json")


def _usd(amount: Decimal) -> str:
    """Exact dollars with 9 decimals (amounts are whole nano-dollars)."""
    return format_dollars(amount, 9)


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _window(w: WindowStatus) -> models.Window:
    return models.Window(
        window=w.window,
        kind=w.kind,
        scope=cast(models.Scope, w.scope),  # the engine's two values
        used=_usd(w.used),
        held=_usd(w.held),
        limit=None if w.limit is None else _usd(w.limit),
        remaining=None if w.remaining is None else _usd(w.remaining),
        carried=_usd(w.carried),
        requests=w.requests,
        max_requests=w.max_requests,
        resets_at=w.resets_at.astimezone(UTC),
        features={name: _usd(spent) for name, spent in w.features.items()},
    )


def _status(s: TenantStatus) -> models.Status:
    return models.Status(
        tenant=s.tenant_id,
        plan=s.plan,
        killed=s.killed,
        killed_features=list(s.killed_features),
        held=_usd(s.held),
        open_holds=s.open_holds,
        pool=s.pool,
        pool_plan=s.pool_plan,
        windows=[_window(w) for w in s.windows],
        pool_windows=[_window(w) for w in s.pool_windows],
    )


def _settled(r: Reservation, s: Settlement) -> dict[str, Any]:
    return {
        "reservation_id": r.id,
        "tenant": r.tenant_id,
        "feature": r.feature,
        "cost": _usd(s.cost),
        "duplicate": s.duplicate,
        "late": s.late,
        "recorded": s.recorded,
    }


class Endpoints:
    """The endpoints, over one fence."""

    def __init__(
        self,
        fence: TokenFence,
        *,
        token: str,
        prices: PriceBook,
        tokens: ReservationTokens,
        max_body_bytes: int,
        clock: Callable[[], float] | None,
    ) -> None:
        self.fence = fence
        self._token = token
        self.pricer = Pricer(prices)
        self.tokens = tokens
        self._max_body = max_body_bytes
        self._clock = clock

    @property
    def prices(self) -> PriceBook:
        """The price book token counts are priced with."""
        return self.pricer.prices

    # -- request plumbing --

    def _authorize(self, request: Request) -> None:
        if not token_matches(request.headers.get("authorization"), self._token):
            raise ApiError(
                401,
                "unauthorized",
                "a valid service token is required: send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": 'Bearer realm="tokenfence"'},
            )

    async def _body(self, request: Request) -> object:
        self._authorize(request)  # before the body is read
        return await read_body(request, self._max_body)

    def _fence_error(self, exc: TokenFenceError) -> Response:
        now = None if self._clock is None else datetime.fromtimestamp(self._clock(), UTC)
        return FenceErrorResponse(exc, now=now)

    # -- endpoints --

    async def reserve(self, request: Request) -> Response:
        """``POST /reserve``."""
        req = validate(ReserveRequest, await self._body(request))
        for c in req.candidates:
            if isinstance(c, TokenCandidate):
                await self.pricer.load(c.model)
                break
        first = req.candidates[0].model
        estimates: dict[str, int] = {}

        def offer(plan: Plan) -> list[tuple[str | None, int]]:
            # Called with the tenant's plan as the store holds it, maybe more than once.
            tenant, feature, url = req.tenant, req.feature, plan.upgrade_url
            limit = plan.max_input_chars
            if limit is not None and req.input_chars is not None and req.input_chars > limit:
                raise InputTooLong(
                    f"the prompt has {req.input_chars} characters; plan {plan.name!r} allows "
                    f"{limit}",
                    tenant_id=tenant,
                    feature=feature,
                    upgrade_url=url,
                )
            offered: dict[str, _Offer] = {}
            for index, c in enumerate(req.candidates):
                priced = isinstance(c, TokenCandidate)
                chain = plan.chain_for(c.model) if req.downgrade and priced else (c.model,)
                for name in chain:
                    offered.setdefault(name, (index, c))
            allowed = [(name, o) for name, o in offered.items() if plan.allows(name)]
            if not allowed:
                hint = ""
                if req.downgrade and any(
                    isinstance(c, EstimateCandidate)
                    and any(plan.allows(m) for m in plan.chain_for(c.model))
                    for c in req.candidates
                ):
                    hint = "; send input_tokens instead of estimate so its downgrade is priced"
                raise ModelNotAllowed(
                    f"model {first!r} is not allowed on plan {plan.name!r}{hint}",
                    tenant_id=tenant,
                    feature=feature,
                    upgrade_url=url,
                )
            top = allowed[0][1][1]
            tokens = top.input_tokens if isinstance(top, TokenCandidate) else None
            limit = plan.max_input_tokens
            if limit is not None and tokens is not None and tokens > limit:
                raise InputTooLong(
                    f"the prompt has {tokens} tokens; plan {plan.name!r} allows {limit}",
                    tenant_id=tenant,
                    feature=feature,
                    upgrade_url=url,
                )
            result: list[tuple[str | None, int]] = []
            for name, (index, c) in allowed:
                if isinstance(c, EstimateCandidate):
                    result.append((name, c.nanos))
                    continue
                if name not in estimates:
                    estimates[name] = self.pricer.estimate(name, index, c)
                result.append((name, estimates[name]))
            return result

        try:
            reservation = await self.fence.reserve_first(
                req.tenant, offer, feature=req.feature, reservation_id=req.request_id
            )
        except NoPrice as exc:
            raise exc.problem from None
        except ReservationIdConflict as exc:
            if exc.settled:
                raise ApiError(409, "request_id_settled", exc.message, field="request_id") from None
            # A repeated request id whose hold was made from a longer candidate list.
            raise ApiError(
                409,
                "request_id_conflict",
                "request_id: a hold with this id exists and was made from other candidates; "
                "repeat the first request's body, or use a new request_id",
                field="request_id",
            ) from None
        except TokenFenceError as exc:
            return self._fence_error(exc)
        shadow = reservation.shadow_refusal
        return _answer(
            models.Reservation(
                id=self.tokens.issue(reservation),
                reservation_id=reservation.id,
                tenant=reservation.tenant_id,
                feature=reservation.feature,
                model=reservation.model,
                amount=format_amount(reservation.amount_nanos, 9),
                downgraded=reservation.model != first,
                degraded=reservation.degraded,
                plan=reservation.plan,
                pool=reservation.pool,
                expires_at=_utc(reservation.expires_at),
                shadow_refusal=None if shadow is None else Error.model_validate(shadow.to_dict()),
            )
        )

    async def commit(self, request: Request) -> Response:
        """``POST /commit``."""
        settling = Settling(self.tokens)
        req = validate(CommitRequest, await self._body(request), settling)
        reservation = settling.opened()
        model = req.model
        if req.cost is not None:
            nanos = to_nanos(req.cost, rounding="half_up", field="cost")
        else:
            assert req.input_tokens is not None  # CommitRequest requires both without a cost
            assert req.output_tokens is not None
            model = model or reservation.model
            if model is None:
                raise invalid("model", "required to price the token counts")
            amount = await self.pricer.usage_cost(
                reservation, model, req.input_tokens, req.output_tokens
            )
            try:
                nanos = to_nanos(amount, rounding="half_up", field="cost")
            except InvalidAmount as exc:
                raise ApiError(422, "invalid_amount", exc.message, field="cost") from None
        try:
            settlement = await self.fence.commit(
                reservation,
                from_nanos(nanos),
                input_tokens=req.input_tokens or 0,
                output_tokens=req.output_tokens or 0,
            )
        except TokenFenceError as exc:
            return self._fence_error(exc)
        body = {**_settled(reservation, settlement), "model": model or reservation.model}
        return _answer(models.Commit.model_validate(body))

    async def release(self, request: Request) -> Response:
        """``POST /release``."""
        settling = Settling(self.tokens)
        validate(ReleaseRequest, await self._body(request), settling)
        reservation = settling.opened()
        try:
            settlement = await self.fence.release(reservation)
        except TokenFenceError as exc:
            return self._fence_error(exc)
        released = settlement.recorded and not settlement.duplicate
        body = {**_settled(reservation, settlement), "released": released}
        return _answer(models.Release.model_validate(body))

    async def status(self, request: Request) -> Response:
        """``GET /status/{tenant}``."""
        self._authorize(request)
        path = validate(StatusPath, request.path_params)
        try:
            status = await self.fence.status(path.tenant)
        except TokenFenceError as exc:
            return self._fence_error(exc)
        return _answer(_status(status))
