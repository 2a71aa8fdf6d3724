"""The HTTP reserve / commit API: tenant budgets for services that are not written in Python.

``service_app(fence, token=...)`` is a Starlette app; mount it in an app of yours
(``app.mount("/ai-budget", service_app(fence, token=...))``) or run it with ``tokenfence serve``
(``register`` adds that command to a Typer app). A Node, Go or any other service then spends from
the same tenant budgets, atomically, with the same rules as the Python middleware::

    POST /reserve         {"tenant", "feature"?, "request_id"?, "candidates": [...]}
                          -> 200 {"id": <reservation token>, "model", "amount", ...}
                          or the middleware's refusal: 402 / 429 / 403 / 413 / 503
    POST /commit          {"id", "cost"} or {"id", "input_tokens", "output_tokens", "model"?}
                          (token counts priced at no less than the reserved model)
    POST /release         {"id"}
    GET  /status/{tenant}
    GET  /openapi.json    the OpenAPI 3.1 schema (the only route without the service token)

Every other route needs ``Authorization: Bearer <service token>`` (401 otherwise). Bodies are
JSON objects checked strictly: unknown, missing or mistyped fields, money that is not a decimal
string, negative or absurd amounts, a zero estimate and bad ids are 422 with the field named;
bodies above ``max_body_bytes`` are 413, other content types 415. Money crosses the API as
strings of dollars (``"0.0125"``), and is answered with 9 decimals (exact nano-dollars).

**Reservation tokens.** ``/reserve`` answers with ``id``, an opaque token that carries what
``commit`` and ``release`` need (tenant, reservation id, feature, pool, model, amount) and is
signed with HMAC-SHA256 under ``signing_key``: the API keeps no state of its own, any instance
sharing the key settles any reservation, and a forged or altered token (one that is not the
exact base64 the service wrote counts as altered) is refused (422 ``invalid_reservation``)
before the store is touched. A token is accepted for ``token_ttl``
seconds after it was issued (default: the fence's ``record_ttl`` less a margin for clock skew),
while the store still remembers how the reservation was settled, so a repeated commit or release
is always recognised (``duplicate``) and never charged twice; an older token is refused (410
``reservation_expired``). The default ``signing_key`` is random per app: give one (16+ bytes)
to every instance when more than one process serves the API or tokens must outlive a restart
(``tokenfence serve`` makes one shared by its workers).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, NoReturn

import anyio.to_thread
import structlog
import typer
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokenfence_asgi.config import BUILTIN_PLANS, Plan, default_plan_for, load_plans
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import (
    ConfigError,
    InputTooLong,
    InvalidAmount,
    InvalidId,
    ModelNotAllowed,
    ReservationIdConflict,
    TokenFenceError,
    UnknownPlan,
)
from tokenfence_asgi.money import (
    _show,
    format_amount,
    format_dollars,
    format_time,
    from_nanos,
    to_nanos,
)
from tokenfence_asgi.pricing.book import ModelPrice, PriceBook
from tokenfence_asgi.results import Reservation, Settlement, TenantStatus, WindowStatus
from tokenfence_asgi.store.keys import MAX_ID_LENGTH, KeySpace, validate_id
from tokenfence_asgi.web.auth import token_matches
from tokenfence_asgi.web.problem import FenceErrorResponse

__all__ = ["openapi_schema", "register", "service_app"]

log = structlog.get_logger("tokenfence_asgi")

MAX_CANDIDATES = 16
MAX_TOKENS = 10_000_000  # per call, like the price book's bound
MAX_USAGE_TOKENS = 1_000_000_000  # reported usage at commit
MAX_INPUT_CHARS = 100_000_000
MAX_TOKEN_LENGTH = 8192
DEFAULT_MAX_BODY = 64 * 1024
_MONEY = re.compile(r"[0-9]{1,16}(\.[0-9]{1,32})?")
_MONEY_PATTERN = "^[0-9]{1,16}(\\.[0-9]{1,32})?$"
_SERVICE_TOKEN = re.compile(r"[\x21-\x7e]{16,4096}")
_TOKEN_PREFIX = "tfr1"
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOKEN_PART = re.compile(r"[A-Za-z0-9_-]+")
_MAC_LABEL = b"tokenfence-asgi reservation token v1"
_SKEW_S = 300.0  # allowed disagreement between the clocks of the store and the instances
_CONFIG_ENV = "TOKENFENCE_SERVE_CONFIG"


def _wall() -> float:
    """Wall-clock seconds, when tokens are issued and checked (key expiry in Redis is real time)."""
    return time.time()


# -- errors of the API itself ------------------------------------------------------------------


class _Problem(Exception):
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

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.error, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return JSONResponse(body, status_code=self.status, headers=self.headers)


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


def _invalid(field: str, message: str, error: str = "invalid_request") -> _Problem:
    return _Problem(422, error, f"{field}: {message}", field=field)


def _got(value: object) -> str:
    if isinstance(value, dict | list):
        return f"got {_kind(value)}"
    return f"got {_kind(value)} {_show(value)}"


# -- body validation ---------------------------------------------------------------------------


def _fields(
    value: object, where: str, required: Sequence[str], optional: Sequence[str]
) -> dict[str, Any]:
    """``value`` as an object with exactly the allowed fields, the required ones present."""
    name = where or "body"
    if not isinstance(value, dict):
        raise _invalid(name, f"expected a JSON object, {_got(value)}")
    allowed = (*required, *optional)
    for key in value:
        if key not in allowed:
            shown = key if _PLAIN_KEY.fullmatch(key) else _show(key)  # never echo raw bytes
            raise _invalid(
                f"{where}.{shown}" if where else shown,
                f"unknown field; expected {', '.join(allowed)}",
            )
    for key in required:
        if key not in value:
            raise _invalid(f"{where}.{key}" if where else key, "missing required field")
    return value


def _id(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise _invalid(field, f"expected a string, {_got(value)}", "invalid_id")
    try:
        return validate_id(value, what=field)
    except InvalidId as exc:
        detail = exc.message.removeprefix(f"{field} ")
        raise _invalid(field, detail, "invalid_id") from None


def _optional_id(value: object, field: str) -> str | None:
    return None if value is None else _id(value, field)


def _int(value: object, field: str, high: int, *, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(field, f"expected an integer from {low} to {high}, {_got(value)}")
    return value


def _nanos(value: object, field: str, *, rounding: str) -> int:
    """Dollars as a decimal string, in nano-dollars (``"up"`` for estimates)."""
    if not isinstance(value, str):
        raise _invalid(
            field,
            f'expected a string of dollars like "0.0125" (JSON numbers are not accepted for '
            f"money), {_got(value)}",
            "invalid_amount",
        )
    if not _MONEY.fullmatch(value):
        raise _invalid(
            field,
            f'expected a string of dollars like "0.0125": digits, optionally a point and '
            f"decimals, no sign or exponent; got {_show(value)}",
            "invalid_amount",
        )
    try:
        return to_nanos(value, rounding="up" if rounding == "up" else "half_up", field=field)
    except InvalidAmount as exc:
        raise _Problem(422, "invalid_amount", exc.message, field=field) from None


@dataclass(frozen=True, slots=True)
class _Candidate:
    """One model the client offers, with a dollar estimate or the token counts to price."""

    index: int
    model: str
    nanos: int | None
    input_tokens: int | None
    max_output_tokens: int | None


@dataclass(frozen=True, slots=True)
class _ReserveRequest:
    tenant: str
    feature: str | None
    request_id: str | None
    candidates: tuple[_Candidate, ...]
    input_chars: int | None
    downgrade: bool


def _candidate(value: object, index: int) -> _Candidate:
    where = f"candidates[{index}]"
    item = _fields(value, where, ("model",), ("estimate", "input_tokens", "max_output_tokens"))
    model = _id(item["model"], f"{where}.model")
    if "estimate" in item:
        for other in ("input_tokens", "max_output_tokens"):
            if other in item:
                raise _invalid(
                    f"{where}.{other}", "give either estimate (dollars) or input_tokens, not both"
                )
        nanos = _nanos(item["estimate"], f"{where}.estimate", rounding="up")
        if nanos == 0:  # a hold of nothing limits nothing, and would not count as spend
            raise _invalid(
                f"{where}.estimate",
                f"zero estimate {_show(item['estimate'])}; hold the call's worst-case cost, "
                "above $0",
                "invalid_amount",
            )
        return _Candidate(index, model, nanos, None, None)
    if "input_tokens" not in item:
        raise _invalid(
            where, "needs estimate (dollars as a string) or input_tokens (priced by the service)"
        )
    max_out = item.get("max_output_tokens")
    input_tokens = _int(item["input_tokens"], f"{where}.input_tokens", MAX_TOKENS)
    output = None if max_out is None else _int(max_out, f"{where}.max_output_tokens", MAX_TOKENS)
    if input_tokens == 0 and output == 0:
        raise _invalid(
            where, "input_tokens and max_output_tokens are both 0: that prices a call of nothing"
        )
    return _Candidate(index, model, None, input_tokens, output)


def _reserve_request(body: object) -> _ReserveRequest:
    data = _fields(
        body,
        "",
        ("tenant", "candidates"),
        ("feature", "request_id", "input_chars", "downgrade"),
    )
    tenant = _id(data["tenant"], "tenant")
    feature = _optional_id(data.get("feature"), "feature")
    request_id = _optional_id(data.get("request_id"), "request_id")
    raw = data["candidates"]
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_CANDIDATES:
        shown = f"{len(raw)} items" if isinstance(raw, list) else _got(raw)
        raise _invalid(
            "candidates", f"expected an array of 1 to {MAX_CANDIDATES} candidates, got {shown}"
        )
    candidates = tuple(_candidate(item, i) for i, item in enumerate(raw))
    chars = data.get("input_chars")
    downgrade = data.get("downgrade", True)
    if not isinstance(downgrade, bool):
        raise _invalid("downgrade", f"expected true or false, {_got(downgrade)}")
    return _ReserveRequest(
        tenant,
        feature,
        request_id,
        candidates,
        None if chars is None else _int(chars, "input_chars", MAX_INPUT_CHARS),
        downgrade,
    )


# -- reservation tokens ------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Decode what ``_b64`` encodes, and only that: a text with other (ignored) padding bits,
    or padding, would be a second spelling of the same bytes, so a token could be altered and
    still accepted. Raises ``ValueError``."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical unpadded urlsafe base64")
    return data


def _key_bytes(key: str | bytes, what: str) -> bytes:
    raw = key.encode("utf-8") if isinstance(key, str) else key
    if not isinstance(raw, bytes) or len(raw) < 16:
        raise ConfigError(f"{what} must be at least 16 bytes")
    return raw


class _Tokens:
    """Signs reservations into opaque tokens and checks them back."""

    __slots__ = ("_key", "ttl")

    def __init__(self, signing_key: bytes, ttl: float) -> None:
        # A key of its own for this use, so a secret shared with another purpose cannot be
        # turned into valid reservation tokens.
        self._key = hmac.new(signing_key, _MAC_LABEL, hashlib.sha256).digest()
        self.ttl = ttl

    def _mac(self, signed: bytes) -> bytes:
        return hmac.new(self._key, signed, hashlib.sha256).digest()

    def issue(self, r: Reservation) -> str:
        payload = {
            "t": r.tenant_id,
            "r": r.id,
            "f": r.feature,
            "p": r.pool,
            "m": r.model,
            "a": r.amount_nanos,
            "pl": r.plan,
            "d": 1 if r.degraded else 0,
            "i": int(_wall()),
        }
        body = _b64(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
        signed = f"{_TOKEN_PREFIX}.{body}"
        return f"{signed}.{_b64(self._mac(signed.encode('ascii')))}"

    def open(self, value: object, field: str = "id") -> Reservation:
        if not isinstance(value, str):
            raise _invalid(field, f"expected a reservation token (string), {_got(value)}")
        bad = _invalid(
            field,
            "not a reservation token issued by this service (malformed, altered, or signed "
            "with another key)",
            "invalid_reservation",
        )
        parts = value.split(".")
        if (
            len(value) > MAX_TOKEN_LENGTH
            or len(parts) != 3
            or parts[0] != _TOKEN_PREFIX
            or not all(_TOKEN_PART.fullmatch(p) for p in parts[1:])
        ):
            raise bad
        try:
            mac = _unb64(parts[2])
            expected = self._mac(f"{parts[0]}.{parts[1]}".encode("ascii"))
            if not hmac.compare_digest(mac, expected):
                raise bad
            data = json.loads(_unb64(parts[1]))
            reservation = Reservation(
                id=validate_id(data["r"], what="reservation_id"),
                tenant_id=validate_id(data["t"], what="tenant_id"),
                feature=None if data["f"] is None else validate_id(data["f"], what="feature"),
                model=None if data["m"] is None else str(data["m"]),
                amount=from_nanos(int(data["a"])),
                amount_nanos=int(data["a"]),
                plan=str(data["pl"]),
                pool=None if data["p"] is None else validate_id(data["p"], what="pool"),
                degraded=data["d"] == 1,
            )
            issued = float(data["i"])
        except _Problem:
            raise
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):  # signed, yet unreadable
            raise bad from None
        age = _wall() - issued
        if age > self.ttl:
            raise _Problem(
                410,
                "reservation_expired",
                f"{field}: the reservation token was issued {int(age)} s ago, more than the "
                f"{int(self.ttl)} s the store remembers settlements; it can no longer be "
                "settled safely (its hold has long been reclaimed)",
                field=field,
            )
        return reservation


# -- responses ---------------------------------------------------------------------------------


def _usd(amount: Decimal) -> str:
    """Exact dollars with 9 decimals (amounts are whole nano-dollars)."""
    return format_dollars(amount, 9)


def _time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return format_time(value)


def _window(w: WindowStatus) -> dict[str, Any]:
    return {
        "window": w.window,
        "kind": w.kind,
        "scope": w.scope,
        "used": _usd(w.used),
        "held": _usd(w.held),
        "limit": None if w.limit is None else _usd(w.limit),
        "remaining": None if w.remaining is None else _usd(w.remaining),
        "carried": _usd(w.carried),
        "requests": w.requests,
        "max_requests": w.max_requests,
        "resets_at": _time(w.resets_at),
        "features": {name: _usd(spent) for name, spent in w.features.items()},
    }


def _status_body(s: TenantStatus) -> dict[str, Any]:
    return {
        "tenant": s.tenant_id,
        "plan": s.plan,
        "killed": s.killed,
        "killed_features": list(s.killed_features),
        "held": _usd(s.held),
        "open_holds": s.open_holds,
        "pool": s.pool,
        "pool_plan": s.pool_plan,
        "windows": [_window(w) for w in s.windows],
        "pool_windows": [_window(w) for w in s.pool_windows],
    }


def _settlement_body(r: Reservation, s: Settlement) -> dict[str, Any]:
    return {
        "reservation_id": r.id,
        "tenant": r.tenant_id,
        "feature": r.feature,
        "cost": _usd(s.cost),
        "duplicate": s.duplicate,
        "late": s.late,
        "recorded": s.recorded,
    }


# -- the app -----------------------------------------------------------------------------------


class _NoPrice(Exception):
    """A model the price book cannot price (raised through the engine from a candidate list)."""

    def __init__(self, problem: _Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def _json_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


class _Service:
    """The endpoints, over one fence."""

    def __init__(
        self,
        fence: TokenFence,
        *,
        token: str,
        prices: PriceBook,
        tokens: _Tokens,
        max_body_bytes: int,
        clock: Callable[[], float] | None,
    ) -> None:
        self.fence = fence
        self._token = token
        self.prices = prices
        self.tokens = tokens
        self._max_body = max_body_bytes
        self._clock = clock
        self._prices_loaded = False

    # -- request plumbing --

    def _now(self) -> datetime | None:
        return None if self._clock is None else datetime.fromtimestamp(self._clock(), UTC)

    def _authorize(self, request: Request) -> None:
        if not token_matches(request.headers.get("authorization"), self._token):
            raise _Problem(
                401,
                "unauthorized",
                "a valid service token is required: send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": 'Bearer realm="tokenfence"'},
            )

    async def _body(self, request: Request) -> object:
        self._authorize(request)
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json" and not (
            media.startswith("application/") and media.endswith("+json")
        ):
            raise _Problem(
                415,
                "unsupported_media_type",
                f"send the body as JSON with 'Content-Type: application/json' (got "
                f"{_show(media) if media else 'none'})",
            )
        too_large = _Problem(
            413, "body_too_large", f"the body is larger than {self._max_body} bytes"
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_body:
                raise too_large
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _invalid("body", f"not valid UTF-8 at byte {exc.start}") from None
        if not text.strip():
            raise _invalid("body", "empty; expected a JSON object")
        try:
            return json.loads(text, parse_constant=_json_constant, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as exc:
            raise _invalid(
                "body", f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        except (ValueError, RecursionError) as exc:
            raise _invalid("body", f"invalid JSON: {exc}"[:300]) from None

    def _fence_error(self, exc: TokenFenceError) -> Response:
        return FenceErrorResponse(exc, now=self._now())

    # -- prices --

    async def preload_prices(self) -> None:
        """Import LiteLLM's price map now, in a worker thread, when it is installed."""

        def load() -> None:
            with contextlib.suppress(ImportError):
                _ = self.prices.litellm

        await anyio.to_thread.run_sync(load)
        self._prices_loaded = True

    async def _load_prices(self, model: str) -> None:
        """Look one model up in a worker thread first: that may import LiteLLM (seconds)."""
        if self._prices_loaded or self.prices.override(model) is not None:
            return
        with contextlib.suppress(ConfigError, ImportError):
            await anyio.to_thread.run_sync(self.prices.price, model)
        self._prices_loaded = True

    def _price(self, model: str, field: str) -> ModelPrice:
        try:
            return self.prices.price(model)
        except ConfigError as exc:
            raise _NoPrice(_Problem(422, "no_price", exc.message, field=field)) from None
        except ImportError:
            raise _NoPrice(
                _Problem(
                    422,
                    "no_price",
                    f"no price for model {model!r}: the service has no price for it and LiteLLM "
                    "(its price map) is not installed; send estimate in dollars instead",
                    field=field,
                )
            ) from None

    def _estimate(self, model: str, c: _Candidate) -> int:
        where = f"candidates[{c.index}]"
        price = self._price(model, f"{where}.model")
        assert c.input_tokens is not None
        output = c.max_output_tokens
        if output is None:
            output = price.max_output_tokens
        if output is None:
            raise _NoPrice(
                _invalid(
                    f"{where}.max_output_tokens",
                    f"required for model {model!r}: its price has no maximum output to assume",
                )
            )
        if price.max_output_tokens is not None:
            output = min(output, price.max_output_tokens)  # the provider cannot produce more
        try:
            return to_nanos(
                price.cost(c.input_tokens, output), rounding="up", field=f"{where} estimate"
            )
        except InvalidAmount as exc:
            raise _NoPrice(_Problem(422, "invalid_amount", exc.message, field=where)) from None

    # -- endpoints --

    async def reserve(self, request: Request) -> Response:
        req = _reserve_request(await self._body(request))
        for c in req.candidates:
            if c.input_tokens is not None:
                await self._load_prices(c.model)
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
            offered: dict[str, _Candidate] = {}
            for c in req.candidates:
                chain = plan.chain_for(c.model) if req.downgrade and c.nanos is None else (c.model,)
                for name in chain:
                    offered.setdefault(name, c)
            allowed = [(name, c) for name, c in offered.items() if plan.allows(name)]
            if not allowed:
                hint = ""
                if req.downgrade and any(
                    c.nanos is not None and any(plan.allows(m) for m in plan.chain_for(c.model))
                    for c in req.candidates
                ):
                    hint = "; send input_tokens instead of estimate so its downgrade is priced"
                raise ModelNotAllowed(
                    f"model {first!r} is not allowed on plan {plan.name!r}{hint}",
                    tenant_id=tenant,
                    feature=feature,
                    upgrade_url=url,
                )
            tokens = allowed[0][1].input_tokens
            limit = plan.max_input_tokens
            if limit is not None and tokens is not None and tokens > limit:
                raise InputTooLong(
                    f"the prompt has {tokens} tokens; plan {plan.name!r} allows {limit}",
                    tenant_id=tenant,
                    feature=feature,
                    upgrade_url=url,
                )
            result: list[tuple[str | None, int]] = []
            for name, c in allowed:
                if c.nanos is not None:
                    result.append((name, c.nanos))
                    continue
                if name not in estimates:
                    estimates[name] = self._estimate(name, c)
                result.append((name, estimates[name]))
            return result

        try:
            reservation = await self.fence.reserve_first(
                req.tenant, offer, feature=req.feature, reservation_id=req.request_id
            )
        except _NoPrice as exc:
            raise exc.problem from None
        except ReservationIdConflict as exc:
            if exc.settled:
                raise _Problem(409, "request_id_settled", exc.message, field="request_id") from None
            # A repeated request id whose hold was made from a longer candidate list.
            raise _Problem(
                409,
                "request_id_conflict",
                "request_id: a hold with this id exists and was made from other candidates; "
                "repeat the first request's body, or use a new request_id",
                field="request_id",
            ) from None
        except TokenFenceError as exc:
            return self._fence_error(exc)
        shadow = reservation.shadow_refusal
        return JSONResponse(
            {
                "id": self.tokens.issue(reservation),
                "reservation_id": reservation.id,
                "tenant": reservation.tenant_id,
                "feature": reservation.feature,
                "model": reservation.model,
                "amount": format_amount(reservation.amount_nanos, 9),
                "downgraded": reservation.model != first,
                "degraded": reservation.degraded,
                "plan": reservation.plan,
                "pool": reservation.pool,
                "expires_at": _time(reservation.expires_at),
                "shadow_refusal": None if shadow is None else shadow.to_dict(),
            }
        )

    async def commit(self, request: Request) -> Response:
        data = _fields(
            await self._body(request),
            "",
            ("id",),
            ("cost", "input_tokens", "output_tokens", "model"),
        )
        reservation = self.tokens.open(data["id"])
        counts: dict[str, int | None] = {}
        for name in ("input_tokens", "output_tokens"):
            value = data.get(name)
            counts[name] = None if value is None else _int(value, name, MAX_USAGE_TOKENS)
        model = _optional_id(data.get("model"), "model")
        if data.get("cost") is not None:
            nanos = _nanos(data["cost"], "cost", rounding="half_up")
        else:
            if counts["input_tokens"] is None or counts["output_tokens"] is None:
                raise _invalid(
                    "cost",
                    "missing: give cost (dollars as a string), or input_tokens and "
                    "output_tokens for the service to price",
                )
            model = model or reservation.model
            if model is None:
                raise _invalid("model", "required to price the token counts")
            amount = await self._usage_cost(
                reservation, model, counts["input_tokens"], counts["output_tokens"]
            )
            try:
                nanos = to_nanos(amount, rounding="half_up", field="cost")
            except InvalidAmount as exc:
                raise _Problem(422, "invalid_amount", exc.message, field="cost") from None
        try:
            settlement = await self.fence.commit(
                reservation,
                from_nanos(nanos),
                input_tokens=counts["input_tokens"] or 0,
                output_tokens=counts["output_tokens"] or 0,
            )
        except TokenFenceError as exc:
            return self._fence_error(exc)
        body = _settlement_body(reservation, settlement)
        body["model"] = model or reservation.model
        return JSONResponse(body)

    async def _usage_cost(
        self, reservation: Reservation, model: str, input_tokens: int, output_tokens: int
    ) -> Decimal:
        """The token counts priced at ``model``, and at no less than the reserved model.

        The reservation's model is signed into its token; the commit's ``model`` is only the
        client's word. A cheaper name must not lower the price (the reserve chose the model,
        downgrade included, and checked the budget for it), while a dearer model that answered
        instead is charged at its own price: the money was spent.
        """
        reserved = reservation.model
        priced = [model] if reserved is None or reserved == model else [model, reserved]
        costs = []
        for name in priced:
            await self._load_prices(name)
            try:
                price = self._price(name, "model")
            except _NoPrice as exc:
                problem = exc.problem
                if name != model:
                    problem = _invalid(
                        "model",
                        f"the reservation was made for model {name!r}, which the service "
                        f"cannot price, so token counts named for {model!r} cannot be priced "
                        "at no less than it; send cost (dollars) instead",
                        "no_price",
                    )
                raise problem from None
            costs.append(price.cost(input_tokens, output_tokens))
        if len(costs) == 2 and costs[1] > costs[0]:
            log.info(
                "commit_priced_as_reserved",
                tenant=reservation.tenant_id,
                reservation_id=reservation.id,
                model=model,
                reserved_model=reserved,
            )
        return max(costs)

    async def release(self, request: Request) -> Response:
        data = _fields(await self._body(request), "", ("id",), ())
        reservation = self.tokens.open(data["id"])
        try:
            settlement = await self.fence.release(reservation)
        except TokenFenceError as exc:
            return self._fence_error(exc)
        body = _settlement_body(reservation, settlement)
        body["released"] = settlement.recorded and not settlement.duplicate
        return JSONResponse(body)

    async def status(self, request: Request) -> Response:
        self._authorize(request)
        tenant = _id(request.path_params["tenant"], "tenant")
        try:
            status = await self.fence.status(tenant)
        except TokenFenceError as exc:
            return self._fence_error(exc)
        return JSONResponse(_status_body(status))


def _guard(
    endpoint: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Answer the API's own errors with their bodies; a client that left gets nothing."""

    async def handle(request: Request) -> Response:
        try:
            response: Response = await endpoint(request)
        except _Problem as problem:
            return problem.response()
        except ClientDisconnect:
            return Response(status_code=400)  # nobody reads it
        return response

    return handle


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    names = {404: "not_found", 405: "method_not_allowed"}
    return JSONResponse(
        {"error": names.get(exc.status_code, "http_error"), "message": exc.detail},
        status_code=exc.status_code,
        headers=exc.headers,
    )


def _record_ttl(fence: TokenFence) -> float:
    """How long the fence remembers a settled reservation, in seconds."""
    return float(fence.record_ttl)


def service_app(
    fence: TokenFence,
    *,
    token: str,
    prices: PriceBook | None = None,
    signing_key: str | bytes | None = None,
    token_ttl: float | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    clock: Callable[[], float] | None = None,
    owns_fence: bool = False,
    preload_prices: bool = False,
) -> Starlette:
    """The HTTP reserve / commit API over ``fence``, as a Starlette app (see the module doc).

    ``token`` is the service token every caller sends as ``Authorization: Bearer <token>``
    (16-4096 printable ASCII characters, no spaces). ``prices`` prices candidates and commits
    given as token counts (default: the fence's own price book, ``fence.prices``, which the
    LiteLLM callback and the SDK guards use too). ``signing_key`` (16+ bytes) signs reservation
    tokens: share it between every instance that serves the API; the default is random, valid
    for this app only.
    ``token_ttl`` (seconds) is how long a token is accepted; it must not exceed the fence's
    ``record_ttl`` (the default is that less a margin). ``max_body_bytes`` bounds request
    bodies (413 above). ``clock`` (epoch seconds) is what ``Retry-After`` counts from; give it
    the fence's clock when the fence has one. ``owns_fence=True``: the app's lifespan pings the
    fence at startup and closes it at shutdown (a mounted app's lifespan does not run).
    ``preload_prices=True``: the lifespan also imports LiteLLM's price map at startup (a few
    seconds, ~150 MB), instead of during the first request that sends token counts.
    Raises ``ConfigError`` for a bad option.
    """
    if not isinstance(fence, TokenFence):
        raise ConfigError(f"fence must be a TokenFence, got {type(fence).__name__}")
    if not isinstance(token, str) or not _SERVICE_TOKEN.fullmatch(token):
        raise ConfigError("token must be 16-4096 printable ASCII characters without spaces")
    if prices is None:
        prices = fence.prices
    elif not isinstance(prices, PriceBook):
        raise ConfigError(f"prices must be a PriceBook, got {type(prices).__name__}")
    key = secrets.token_bytes(32)
    if signing_key is not None:
        key = _key_bytes(signing_key, "signing_key")
    # A token must not outlive the record of its settlement, or a repeat could charge again.
    ceiling = _record_ttl(fence)
    ttl = ceiling - min(_SKEW_S, ceiling / 10) if token_ttl is None else token_ttl
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= ceiling:
        raise ConfigError(
            f"token_ttl must be in (0, {ceiling:g}] seconds (the fence's record_ttl), got {ttl!r}"
        )
    if (
        isinstance(max_body_bytes, bool)
        or not isinstance(max_body_bytes, int)
        or not (1024 <= max_body_bytes <= 16 * 1024 * 1024)
    ):
        raise ConfigError(
            f"max_body_bytes must be an int in [1024, 16777216], got {max_body_bytes!r}"
        )
    if clock is not None and not callable(clock):
        raise ConfigError("clock must be a callable returning epoch seconds")
    service = _Service(
        fence,
        token=token,
        prices=prices,
        tokens=_Tokens(key, float(ttl)),
        max_body_bytes=max_body_bytes,
        clock=clock,
    )

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_schema(request.scope.get("root_path", "")))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if owns_fence:
            await fence.ping()
        if preload_prices:
            await service.preload_prices()
        try:
            yield
        finally:
            if owns_fence:
                await fence.aclose()

    app = Starlette(
        routes=[
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/reserve", _guard(service.reserve), methods=["POST"]),
            Route("/commit", _guard(service.commit), methods=["POST"]),
            Route("/release", _guard(service.release), methods=["POST"]),
            Route("/status/{tenant:path}", _guard(service.status), methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.tokenfence_service = service
    return app


# -- the OpenAPI schema ------------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _body_errors() -> dict[str, Any]:
    return {
        "401": _error_response("Missing or wrong service token (`unauthorized`)."),
        "413": _error_response(
            "The body is too large (`body_too_large`), or the prompt is longer than the plan "
            "allows (`ai_input_too_long`)."
        ),
        "415": _error_response("The body is not JSON (`unsupported_media_type`)."),
        "422": _error_response(
            "The body is invalid: `invalid_request`, `invalid_id`, `invalid_amount`, "
            "`invalid_reservation` or `no_price`; `field` names the field."
        ),
    }


def _fence_errors() -> dict[str, Any]:
    return {
        "503": _error_response(
            "The budget store is unreachable (`ai_budget_unavailable`) or the tenant's plan kept "
            "changing (`ai_budget_busy`); retry."
        ),
    }


def openapi_schema(root_path: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API (what ``GET /openapi.json`` serves)."""
    money = {
        "type": "string",
        "pattern": _MONEY_PATTERN,
        "maxLength": 49,
        "description": 'Dollars as a decimal string, e.g. "0.0125".',
    }
    amount = {"type": "string", "description": "Dollars with 9 decimals (exact nano-dollars)."}
    ident = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
    token = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_TOKEN_LENGTH,
        "description": "The reservation token `/reserve` returned as `id`.",
    }
    tokens = {"type": "integer", "minimum": 0, "maximum": MAX_TOKENS}
    usage = {"type": "integer", "minimum": 0, "maximum": MAX_USAGE_TOKENS}
    window = {
        "type": "object",
        "required": [
            "window",
            "kind",
            "scope",
            "used",
            "held",
            "limit",
            "remaining",
            "carried",
            "requests",
            "max_requests",
            "resets_at",
            "features",
        ],
        "properties": {
            "window": {"type": "string"},
            "kind": {"type": "string"},
            "scope": {"type": "string", "enum": ["tenant", "pool"]},
            "used": amount,
            "held": amount,
            "limit": _nullable(amount),
            "remaining": _nullable(amount),
            "carried": amount,
            "requests": {"type": "integer"},
            "max_requests": _nullable({"type": "integer"}),
            "resets_at": {"type": "string", "format": "date-time"},
            "features": {"type": "object", "additionalProperties": amount},
        },
    }
    settlement_props = {
        "reservation_id": {"type": "string"},
        "tenant": {"type": "string"},
        "feature": _nullable({"type": "string"}),
        "cost": amount,
        "duplicate": {"type": "boolean"},
        "late": {"type": "boolean"},
        "recorded": {"type": "boolean"},
    }
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {
                "error": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string"},
            },
        },
        "EstimateCandidate": {
            "type": "object",
            "additionalProperties": False,
            "required": ["model", "estimate"],
            "properties": {
                "model": ident,
                "estimate": {
                    **money,
                    "description": "The call's worst-case cost: dollars as a decimal string, "
                    'above $0, e.g. "0.0125".',
                },
            },
        },
        "TokenCandidate": {
            "type": "object",
            "additionalProperties": False,
            "required": ["model", "input_tokens"],
            "properties": {"model": ident, "input_tokens": tokens, "max_output_tokens": tokens},
        },
        "ReserveRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["tenant", "candidates"],
            "properties": {
                "tenant": ident,
                "feature": _nullable(ident),
                "request_id": _nullable(ident),
                "candidates": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_CANDIDATES,
                    "items": {"oneOf": [_ref("EstimateCandidate"), _ref("TokenCandidate")]},
                },
                "input_chars": _nullable(
                    {"type": "integer", "minimum": 0, "maximum": MAX_INPUT_CHARS}
                ),
                "downgrade": {"type": "boolean", "default": True},
            },
        },
        "Reservation": {
            "type": "object",
            "required": [
                "id",
                "reservation_id",
                "tenant",
                "feature",
                "model",
                "amount",
                "downgraded",
                "degraded",
                "plan",
                "pool",
                "expires_at",
                "shadow_refusal",
            ],
            "properties": {
                "id": token,
                "reservation_id": {"type": "string"},
                "tenant": {"type": "string"},
                "feature": _nullable({"type": "string"}),
                "model": _nullable({"type": "string"}),
                "amount": amount,
                "downgraded": {"type": "boolean"},
                "degraded": {"type": "boolean"},
                "plan": {"type": "string"},
                "pool": _nullable({"type": "string"}),
                "expires_at": _nullable({"type": "string", "format": "date-time"}),
                "shadow_refusal": _nullable(_ref("Error")),
            },
        },
        "CommitRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id"],
            "properties": {
                "id": token,
                "cost": _nullable(money),
                "input_tokens": _nullable(usage),
                "output_tokens": _nullable(usage),
                "model": _nullable(ident),
            },
        },
        "ReleaseRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id"],
            "properties": {"id": token},
        },
        "Commit": {
            "type": "object",
            "required": [*settlement_props, "model"],
            "properties": {**settlement_props, "model": _nullable({"type": "string"})},
        },
        "Release": {
            "type": "object",
            "required": [*settlement_props, "released"],
            "properties": {**settlement_props, "released": {"type": "boolean"}},
        },
        "Window": window,
        "Status": {
            "type": "object",
            "required": [
                "tenant",
                "plan",
                "killed",
                "killed_features",
                "held",
                "open_holds",
                "pool",
                "pool_plan",
                "windows",
                "pool_windows",
            ],
            "properties": {
                "tenant": {"type": "string"},
                "plan": {"type": "string"},
                "killed": {"type": "boolean"},
                "killed_features": {"type": "array", "items": {"type": "string"}},
                "held": amount,
                "open_holds": {"type": "integer"},
                "pool": _nullable({"type": "string"}),
                "pool_plan": _nullable({"type": "string"}),
                "windows": {"type": "array", "items": _ref("Window")},
                "pool_windows": {"type": "array", "items": _ref("Window")},
            },
        },
    }

    def body(name: str) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}

    def ok(name: str, description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}

    settle_errors = {
        **_body_errors(),
        "410": _error_response(
            "The token is older than the store remembers (`reservation_expired`)."
        ),
        **_fence_errors(),
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "tokenfence reserve / commit API",
            "version": "1",
            "description": "Atomic per-tenant AI budgets over HTTP: reserve the worst case "
            "before an LLM call, commit the actual cost after it, release on failure.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/reserve": {
                "post": {
                    "operationId": "reserve",
                    "summary": "Hold the worst-case cost of a call on the first candidate that "
                    "fits the tenant's plan and budgets.",
                    "requestBody": body("ReserveRequest"),
                    "responses": {
                        "200": ok("Reservation", "Held; `id` is the token to commit or release."),
                        **_body_errors(),
                        "402": _error_response(
                            "A cost limit would be exceeded (`ai_budget_exceeded`)."
                        ),
                        "403": _error_response(
                            "The model is not allowed (`ai_model_not_allowed`) "
                            "or a kill switch is on (`ai_disabled`)."
                        ),
                        "409": _error_response(
                            "The request id was used and settled "
                            "(`request_id_settled`), or held for other "
                            "candidates (`request_id_conflict`)."
                        ),
                        "429": _error_response(
                            "A request-count limit is reached (`ai_request_limit_exceeded`), "
                            "or the tenant has as many calls in flight as the fence allows "
                            "(`ai_too_many_open_holds`: commit or release some)."
                        ),
                        **_fence_errors(),
                    },
                }
            },
            "/commit": {
                "post": {
                    "operationId": "commit",
                    "summary": "Charge the actual cost; idempotent (a repeat is `duplicate` and "
                    "reports the first charge).",
                    "description": "Give `cost` (dollars), or `input_tokens` and "
                    "`output_tokens` for the service to price at `model` (default: the "
                    "reserved model), never below the reserved model's price.",
                    "requestBody": body("CommitRequest"),
                    "responses": {"200": ok("Commit", "Charged (or a repeat)."), **settle_errors},
                }
            },
            "/release": {
                "post": {
                    "operationId": "release",
                    "summary": "Drop the hold without charging; idempotent.",
                    "requestBody": body("ReleaseRequest"),
                    "responses": {"200": ok("Release", "Released (or a repeat)."), **settle_errors},
                }
            },
            "/status/{tenant}": {
                "get": {
                    "operationId": "status",
                    "summary": "The tenant's plan, switches, open holds and every window.",
                    "parameters": [
                        {"name": "tenant", "in": "path", "required": True, "schema": ident}
                    ],
                    "responses": {
                        "200": ok("Status", "The tenant's status."),
                        "401": _error_response("Missing or wrong service token."),
                        "404": _error_response("No such route (an empty tenant)."),
                        "422": _error_response("The tenant id is invalid (`invalid_id`)."),
                        **_fence_errors(),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
    }
    if root_path:
        document["servers"] = [{"url": root_path}]
    return document


# -- tokenfence serve ----------------------------------------------------------------------------


def _serve_app() -> Starlette:
    """The app of ``tokenfence serve`` (a uvicorn factory): its options come in the environment,
    so that every worker process builds the same app."""
    cfg = json.loads(os.environ[_CONFIG_ENV])
    plans = load_plans(cfg["config"]) if cfg["config"] else None
    fence = TokenFence(
        redis_url=cfg["redis_url"],
        plans=plans,
        default_plan=cfg["default_plan"],
        prefix=cfg["prefix"],
    )
    return service_app(
        fence,
        token=cfg["token"],
        signing_key=cfg["signing_key"],
        owns_fence=True,
        preload_prices=True,
    )


def _run(**options: Any) -> None:
    """Run uvicorn (a seam for tests)."""
    import uvicorn

    uvicorn.run("tokenfence_asgi.web.service:_serve_app", factory=True, **options)


def _fail(message: str, code: int = 2) -> NoReturn:
    """Print the message on stderr and exit with ``code`` (the ``tokenfence`` ``ExitCode``)."""
    typer.echo(f"tokenfence serve: {message}", err=True)
    raise typer.Exit(code)


def serve(
    token: Annotated[
        str | None,
        typer.Option(
            envvar="TOKENFENCE_SERVICE_TOKEN",
            show_default=False,
            help="Service token clients send as 'Authorization: Bearer <token>' "
            "(required; prefer the environment variable).",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8787,
    workers: Annotated[
        int, typer.Option(help="Worker processes (more than 1 needs --redis-url).")
    ] = 1,
    redis_url: Annotated[
        str | None,
        typer.Option(
            envvar="TOKENFENCE_REDIS_URL",
            show_default=False,
            help="Redis holding the budgets (default: the embedded, in-process store).",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Plans file (TOML); default: the built-in plans.", show_default=False),
    ] = None,
    default_plan: Annotated[
        str | None,
        typer.Option(
            help="Plan of tenants without one (default: the plan file's default_plan, "
            "else 'free').",
            show_default=False,
        ),
    ] = None,
    prefix: Annotated[str, typer.Option(help="Key prefix in Redis.")] = "tf",
    signing_key: Annotated[
        str | None,
        typer.Option(
            envvar="TOKENFENCE_SIGNING_KEY",
            show_default=False,
            help="Key (16+ bytes) signing reservation tokens; give every instance the "
            "same one (default: random, shared by this command's workers).",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    """Serve the HTTP reserve / commit API (POST /reserve, /commit, /release; GET /status)."""
    if not token:
        _fail("a service token is required: --token or TOKENFENCE_SERVICE_TOKEN")
    if not _SERVICE_TOKEN.fullmatch(token):
        _fail("the service token must be 16-4096 printable ASCII characters without spaces")
    if workers < 1:
        _fail(f"--workers must be at least 1, got {workers}")
    if workers > 1 and not redis_url:
        _fail(
            f"--workers {workers} needs --redis-url: the embedded store lives inside one "
            "process, so each worker would enforce budgets of its own"
        )
    if not 0 <= port <= 65535:
        _fail(f"--port must be in [0, 65535], got {port}")
    from tokenfence_asgi.cli.exit_codes import ExitCode  # the tokenfence command's codes

    try:
        KeySpace(prefix)
        if signing_key is not None:
            _key_bytes(signing_key, "--signing-key")
    except ConfigError as exc:
        _fail(exc.message)
    try:
        plans = BUILTIN_PLANS if config is None else load_plans(config)
    except ConfigError as exc:
        _fail(exc.message, ExitCode.BAD_CONFIG)
    names = [p.name for p in plans]
    if default_plan is not None and default_plan not in names:
        unknown = UnknownPlan(default_plan, names, field="--default-plan")
        _fail(unknown.message, ExitCode.UNKNOWN_PLAN)
    try:
        plan = default_plan_for(plans, default_plan)  # the library's rule, and the CLI's
    except ConfigError as exc:  # no --default-plan, no default_plan in the file, no 'free'
        _fail(f"{exc.message}; or give --default-plan", ExitCode.BAD_CONFIG)
    os.environ[_CONFIG_ENV] = json.dumps(
        {
            "token": token,
            "redis_url": redis_url,
            "config": None if config is None else os.fspath(config.resolve()),
            "default_plan": plan,
            "prefix": prefix,
            "signing_key": signing_key or secrets.token_urlsafe(32),
        }
    )
    _run(
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        lifespan="on",
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to a Typer app."""
    app.command("serve")(serve)


def _main() -> None:  # pragma: no cover - exercised as a subprocess
    cli = typer.Typer(add_completion=False, no_args_is_help=True)

    @cli.callback()
    def root() -> None:
        """tokenfence: the HTTP reserve / commit API."""

    register(cli)
    cli(prog_name="tokenfence")


if __name__ == "__main__":  # pragma: no cover
    _main()
