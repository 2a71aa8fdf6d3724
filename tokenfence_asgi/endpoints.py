"""``@feature("chat")``: calls made inside a function are charged to that feature.

It works on sync and async functions, generators and async generators (a streaming response
keeps its feature while it streams), and marks what it wraps so the middleware can tell when a
router kept the bare endpoint instead of the wrapper (``misplaced_feature``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, TypeVar, cast

from tokenfence_asgi.context import _push_feature, pop_context
from tokenfence_asgi.store.keys import validate_id

__all__ = ["feature", "misplaced_feature"]

F = TypeVar("F", bound=Callable[..., Any])


def feature(name: str) -> Callable[[F], F]:
    """Decorate an endpoint (or any function) so calls inside it are charged to feature ``name``.

    Works on ``async def`` and plain functions, and on async and sync generator functions (a
    streaming body): the feature is set for each step of the generator. The wrapper keeps the
    function's signature (``functools.wraps``), so FastAPI dependency injection and the OpenAPI
    schema are unchanged; a sync endpoint run in FastAPI's or Starlette's threadpool sets the
    feature inside the thread. Outside any request the feature is set on an anonymous context.
    Raises ``InvalidId`` for a bad ``name``.

    Put ``@feature`` below the route decorator: a route decorator (``@app.get``) registers the
    function it is given, so a ``@feature`` above it wraps a function the route never calls,
    and no feature is recorded. No decorator can undo that registration; instead the original
    function is marked (``misplaced_feature``) and ``TokenFenceMiddleware`` logs
    ``feature_decorator_misplaced`` the first time such an endpoint serves a request.

    A ``StreamingResponse`` body runs after the endpoint returned: if it makes LLM calls,
    decorate its generator too (``@feature("chat")`` on the ``async def`` generator).
    """
    validate_id(name, what="feature")

    def decorate(func: F) -> F:
        wrapper = _wrap(func, name)
        # functools.wraps copied func's attributes: a mark from an earlier @feature is not ours
        wrapper.__dict__.pop(_WRAPPED_BY_FEATURE, None)
        with contextlib.suppress(AttributeError, TypeError):  # a callable without attributes
            setattr(func, _WRAPPED_BY_FEATURE, name)
        return cast("F", wrapper)

    return decorate


_WRAPPED_BY_FEATURE = "__tokenfence_feature__"


def misplaced_feature(endpoint: object) -> str | None:
    """The feature name of a ``@feature`` that wrapped ``endpoint`` without replacing it.

    Called with the function a route actually calls (Starlette puts it in ``scope["endpoint"]``):
    when ``@feature`` wrapped that very function, its wrapper is not what the route runs, so
    the feature is lost (``@feature`` above the route decorator). ``None`` otherwise.
    """
    name = getattr(endpoint, _WRAPPED_BY_FEATURE, None)
    return name if isinstance(name, str) else None


def _wrap(func: Callable[..., Any], name: str) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(func):
        return _wrap_async_generator(func, name)
    if inspect.isgeneratorfunction(func):
        return _wrap_generator(func, name)
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            token = _push_feature(name)
            try:
                return await func(*args, **kwargs)
            finally:
                pop_context(token)

        return async_wrapper

    @functools.wraps(func)
    def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
        token = _push_feature(name)
        try:
            return func(*args, **kwargs)
        finally:
            pop_context(token)

    return sync_wrapper


def _wrap_async_generator(
    func: Callable[..., AsyncGenerator[Any, Any]], name: str
) -> Callable[..., AsyncGenerator[Any, Any]]:
    # The feature is set around each step rather than across yields: the consumer may resume the
    # generator from another context (a task group, a finalizer), where a token from the previous
    # step could not be reset.
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        inner = func(*args, **kwargs)
        sent: Any = None
        thrown: BaseException | None = None
        try:
            while True:
                token = _push_feature(name)
                try:
                    if thrown is None:
                        item = await inner.asend(sent)
                    else:
                        item = await inner.athrow(thrown)
                except StopAsyncIteration:
                    return
                finally:
                    thrown = None
                    pop_context(token)
                try:
                    sent = yield item
                except GeneratorExit:
                    raise
                except BaseException as exc:  # athrow(): forward it to the generator
                    sent, thrown = None, exc
        finally:
            token = _push_feature(name)
            try:
                await inner.aclose()
            finally:
                pop_context(token)

    return wrapper


def _wrap_generator(
    func: Callable[..., Generator[Any, Any, Any]], name: str
) -> Callable[..., Generator[Any, Any, Any]]:
    # Starlette runs each next() of a sync body in the threadpool, each time in a fresh copy of
    # the request's context: hence set and reset within every step.
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        inner = func(*args, **kwargs)
        sent: Any = None
        thrown: BaseException | None = None
        try:
            while True:
                token = _push_feature(name)
                try:
                    item = inner.send(sent) if thrown is None else inner.throw(thrown)
                except StopIteration as stop:
                    return stop.value
                finally:
                    thrown = None
                    pop_context(token)
                try:
                    sent = yield item
                except GeneratorExit:
                    raise
                except BaseException as exc:  # throw(): forward it to the generator
                    sent, thrown = None, exc
        finally:
            token = _push_feature(name)
            try:
                inner.close()
            finally:
                pop_context(token)

    return wrapper
