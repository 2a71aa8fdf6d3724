"""``service_app``: the HTTP API as a Starlette app, its options checked, routes from the table."""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import ConfigError
from tokenfence_asgi.pricing.book import PriceBook
from tokenfence_asgi.web.api.handlers import Endpoints
from tokenfence_asgi.web.api.openapi import openapi_schema
from tokenfence_asgi.web.api.problems import ApiError
from tokenfence_asgi.web.api.routes import OPERATIONS
from tokenfence_asgi.web.api.tokens import ReservationTokens, signing_key_bytes

__all__ = ["DEFAULT_MAX_BODY", "service_app", "valid_service_token"]

DEFAULT_MAX_BODY = 64 * 1024
_SERVICE_TOKEN = re.compile(r"[\x21-\x7e]{16,4096}")
_SKEW_S = 300.0  # allowed disagreement between the clocks of the store and the instances

Endpoint = Callable[[Request], Awaitable[Response]]


def valid_service_token(token: object) -> bool:
    """Whether ``token`` is 16-4096 printable ASCII characters without spaces."""
    return isinstance(token, str) and _SERVICE_TOKEN.fullmatch(token) is not None


def _guard(endpoint: Endpoint) -> Endpoint:
    """Answer the API's own errors with their bodies; a client that left gets nothing."""

    async def handle(request: Request) -> Response:
        try:
            response: Response = await endpoint(request)
        except ApiError as problem:
            return problem.response()
        except ClientDisconnect:
            return Response(status_code=400)  # nobody reads it
        return response

    return handle


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # registered for HTTPException only
    names = {404: "not_found", 405: "method_not_allowed"}
    name = names.get(exc.status_code, "http_error")
    return ApiError(exc.status_code, name, exc.detail, headers=exc.headers).response()


async def _openapi(request: Request) -> Response:
    return JSONResponse(openapi_schema(request.scope.get("root_path", "")))


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
    """The HTTP reserve / commit API over ``fence``, as a Starlette app (see ``web.api``).

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
    if not valid_service_token(token):
        raise ConfigError("token must be 16-4096 printable ASCII characters without spaces")
    if prices is None:
        prices = fence.prices
    elif not isinstance(prices, PriceBook):
        raise ConfigError(f"prices must be a PriceBook, got {type(prices).__name__}")
    key = secrets.token_bytes(32)
    if signing_key is not None:
        key = signing_key_bytes(signing_key, "signing_key")
    # A token must not outlive the record of its settlement, or a repeat could charge again.
    ceiling = float(fence.record_ttl)
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
    endpoints = Endpoints(
        fence,
        token=token,
        prices=prices,
        tokens=ReservationTokens(key, float(ttl)),
        max_body_bytes=max_body_bytes,
        clock=clock,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if owns_fence:
            await fence.ping()
        if preload_prices:
            await endpoints.pricer.preload()
        try:
            yield
        finally:
            if owns_fence:
                await fence.aclose()

    routes = []
    for op in OPERATIONS:
        endpoint = _openapi if op.name == "openapi" else _guard(getattr(endpoints, op.name))
        routes.append(Route(op.route or op.path, endpoint, methods=[op.method]))
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.tokenfence_service = endpoints
    return app
