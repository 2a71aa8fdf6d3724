"""Where a guarded client is intercepted: ``request()``, the response parser, ``copy()``.

Both SDKs are generated the same way: every method of every resource (``create``, ``parse``,
``stream``, ``with_raw_response``, ``with_streaming_response``, pagination, ``client.post``)
builds ``FinalRequestOptions`` and calls the client's ``request()``, whose retries are inside
it; ``_process_response`` turns the last attempt's HTTP response into what the caller gets.
``copy()`` (aliased ``with_options``) makes every derived client. So ``guard(client)`` makes a
copy of the client whose class is a subclass (one per SDK class, cached) overriding:

- ``request``: decide by method and path (paid, free, or refused: an unknown paid path never
  goes through), reserve and rewrite the body before sending; settle after; release on error;
- ``_process_response``: read the usage of the answer (``guard._taps``: a JSON answer now, a
  body still to be read, such as a stream, as it is read, and ``close`` settles it);
- ``copy`` and ``with_options``: the copy carries the same fence state;
- the websocket helpers (realtime): refused.

A copy made without the fence state (``openai.OpenAI.copy(guarded)``) refuses every request:
the guard fails closed.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import inspect
import json
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from tokenfence_asgi.calls.shapes import beta_window
from tokenfence_asgi.errors import ApprovalRequired, InvalidCall, TokenFenceError
from tokenfence_asgi.guard._fenced import Fenced, GuardedCall
from tokenfence_asgi.guard._taps import tap_async, tap_sync
from tokenfence_asgi.web.problem import http_status

__all__ = ["STATE", "guarded_class", "state_of"]

STATE = "_tokenfence_guard"
"""The attribute holding a guarded client's ``Fenced`` state."""

_ACTIVE: ContextVar[tuple[Fenced, GuardedCall] | None] = ContextVar(
    "tokenfence_guard_call", default=None
)
_FREE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
_SENTINELS = frozenset({"Omit", "NotGiven"})
_WEBSOCKET_HOOKS = (
    "_websocket_query_params",
    "_websocket_query_params_fallback",
    "_configure_realtime",
    "_configure_realtime_with_api_key",
)

_CLASSES: dict[type, type] = {}  # a memo of derived classes, like a cache


def state_of(client: object) -> Fenced:
    """The fence state of a guarded client; a copy made without it refuses every call."""
    state = getattr(client, "__dict__", {}).get(STATE)
    if not isinstance(state, Fenced):
        raise RuntimeError(
            f"this {type(client).__name__} was copied without its fence state (a base class's "
            "copy()); guard the client again with fence.guard(...)"
        )
    return state


def _clean(value: object) -> dict[str, Any]:
    """A JSON body as a dict, without the SDK's 'not given' sentinels."""
    if isinstance(value, bytes | bytearray):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidCall("the body of a paid call must be JSON") from None
    if not isinstance(value, Mapping):
        raise InvalidCall("the body of a paid call must be a JSON object")
    return {k: v for k, v in value.items() if type(v).__name__ not in _SENTINELS}


def _headers(client: Any, options: Any) -> dict[str, Any]:
    """The headers a request goes with, the client's and the call's (``betas=`` and
    ``extra_headers`` land there): a beta among them may change what the call can cost."""
    merged: dict[str, Any] = {}
    for headers in (getattr(client, "default_headers", None), options.headers):
        if isinstance(headers, Mapping):
            merged.update(headers)
    return merged


def _path(url: str) -> str:
    return urlsplit(url).path or "/"


def _absolute(client: Any, url: str) -> str:
    if urlsplit(url).scheme:
        return url
    return str(client.base_url).rstrip("/") + "/" + url.lstrip("/")


def _prepare(
    state: Fenced, client: Any, options: Any, stream: bool
) -> tuple[Any, Any, str | None] | None:
    """The kind, body and pinned model of a paid request, ``None`` for a free one; refuses
    the rest."""
    method = str(options.method).upper()
    if method in _FREE_METHODS:
        return None
    path = _path(str(options.url))
    route = state.adapter.route(method, path)
    if route == "free":
        return None
    if route == "refuse":
        raise state.refuse(f"{method} {path}")
    if options.content is not None and not isinstance(options.content, bytes | bytearray):
        raise InvalidCall(f"{method} {path}: a streamed request body cannot be bounded")
    body = _clean(options.content if options.json_data is None else options.json_data)
    if options.extra_json:  # extra_body= is merged into the body: bound what is sent
        body.update(_clean(options.extra_json))
    return route, body, state.adapter.pinned_model(client, path)


def _sent(options: Any, body: dict[str, Any]) -> Any:
    sent = copy.copy(options)
    sent.json_data = body
    sent.extra_json = None
    sent.content = None
    return sent


def _flavoured(state: Fenced, exc: TokenFenceError, client: Any, options: Any) -> Exception:
    if http_status(exc) == 500:  # a bug or a configuration error: ours, as it is
        return exc
    return state.adapter.error(exc, str(options.method).upper(), _absolute(client, options.url))


def _answered(
    state: Fenced, exc: TokenFenceError, client: Any, options: Any, result: Any
) -> Exception:
    """A refusal of a tool call in an answer (charged already); the answer goes with it."""
    if isinstance(exc, ApprovalRequired):
        exc.model_response = result
    return _flavoured(state, exc, client, options).with_traceback(exc.__traceback__)


# -- the subclass --------------------------------------------------------------------------------


def _async_methods(cls: Any) -> dict[str, Any]:
    async def request(
        self: Any, cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None
    ) -> Any:
        state = state_of(self)
        try:
            prepared = _prepare(state, self, options, stream)
            if prepared is None:
                return await cls.request(
                    self, cast_to, options, stream=stream, stream_cls=stream_cls
                )
            kind, body, pinned = prepared
            window = beta_window(_headers(self, options))
            streamed = stream or body.get("stream") is True
            call = await state.begin(kind, body, streamed, pinned, window)
        except TokenFenceError as exc:
            raise _flavoured(state, exc, self, options).with_traceback(exc.__traceback__) from None
        state.fence.portal.app_loop = asyncio.get_running_loop()
        token = _ACTIVE.set((state, call))
        try:
            result = await cls.request(
                self, cast_to, _sent(options, body), stream=stream, stream_cls=stream_cls
            )
        except BaseException:
            await state.fail(call)
            raise
        finally:
            _ACTIVE.reset(token)
        await state.finish(call)
        try:
            await state.check_tools(call)
        except TokenFenceError as exc:
            raise _answered(state, exc, self, options, result) from None
        return result

    async def process(self: Any, *args: Any, **kwargs: Any) -> Any:
        active = _ACTIVE.get()
        response = kwargs.get("response")
        if active is not None and response is not None and response.is_success:
            tap_async(active[0], active[1], response)
        return await cls._process_response(self, *args, **kwargs)

    return {"request": request, "_process_response": process}


def _sync_methods(cls: Any) -> dict[str, Any]:
    def request(
        self: Any, cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None
    ) -> Any:
        state = state_of(self)
        try:
            prepared = _prepare(state, self, options, stream)
            if prepared is None:
                return cls.request(self, cast_to, options, stream=stream, stream_cls=stream_cls)
            kind, body, pinned = prepared
            streamed = stream or body.get("stream") is True
            context = contextvars.copy_context()  # its request's or scope's tenant
            window = beta_window(_headers(self, options))
            call = state.run(lambda: state.begin(kind, body, streamed, pinned, window), context)
        except TokenFenceError as exc:
            raise _flavoured(state, exc, self, options).with_traceback(exc.__traceback__) from None
        token = _ACTIVE.set((state, call))
        try:
            result = cls.request(
                self, cast_to, _sent(options, body), stream=stream, stream_cls=stream_cls
            )
        except BaseException:
            state.run(lambda: state.fail(call))
            raise
        finally:
            _ACTIVE.reset(token)
        state.run(lambda: state.finish(call))
        try:
            state.run(lambda: state.check_tools(call))
        except TokenFenceError as exc:
            raise _answered(state, exc, self, options, result) from None
        return result

    def process(self: Any, *args: Any, **kwargs: Any) -> Any:
        active = _ACTIVE.get()
        response = kwargs.get("response")
        if active is not None and response is not None and response.is_success:
            tap_sync(active[0], active[1], response)
        return cls._process_response(self, *args, **kwargs)

    return {"request": request, "_process_response": process}


def guarded_class(cls: type) -> type:
    """The guarded subclass of an SDK client class (made once per class)."""
    found = _CLASSES.get(cls)
    if found is not None:
        return found
    base: Any = cls

    def copy_client(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = state_of(self)
        new = base.copy(self, *args, **kwargs)
        new.__dict__[STATE] = state
        return new

    def refuse_websocket(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise state_of(self).refuse("a realtime websocket")

    is_async = inspect.iscoroutinefunction(base.request)
    namespace: dict[str, Any] = {
        "__module__": "tokenfence_asgi.guard",
        "__qualname__": f"Guarded{cls.__name__}",
        "__doc__": f"A fenced {cls.__name__}: made by ``fence.guard(client)``.",
        "__tokenfence_base__": cls,
        "copy": copy_client,
        "with_options": copy_client,
        **(_async_methods(base) if is_async else _sync_methods(base)),
    }
    for name in _WEBSOCKET_HOOKS:
        if hasattr(cls, name):
            namespace[name] = refuse_websocket
    sub = type(f"Guarded{cls.__name__}", (cls,), namespace)
    _CLASSES[cls] = sub
    return sub
