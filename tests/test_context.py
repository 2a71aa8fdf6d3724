"""The request context: ``tenant_scope``, ``@feature`` and ``current_context`` nest and isolate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import structlog

from tokenfence_asgi.context import (
    FenceContext,
    add_fence_context,
    bind_to_structlog,
    current_context,
    settle_context,
    tenant_scope,
)
from tokenfence_asgi.endpoints import feature, misplaced_feature
from tokenfence_asgi.errors import InvalidId, TenantRequired
from tokenfence_asgi.results import Reservation


def snapshot() -> tuple[str | None, str | None, str | None] | None:
    ctx = current_context()
    return None if ctx is None else (ctx.tenant_id, ctx.feature, ctx.request_id)


def log_fields() -> dict[str, object]:
    bound = structlog.contextvars.get_contextvars()
    return {k: bound[k] for k in ("tenant", "feature", "request_id") if k in bound}


def test_no_context_outside_any_scope() -> None:
    assert current_context() is None


def test_sync_scope_sets_and_restores() -> None:
    with tenant_scope("acme", feature="batch", request_id="job-1") as ctx:
        assert ctx == FenceContext("acme", "batch", "job-1")
        assert current_context() is ctx
        assert log_fields() == {"tenant": "acme", "feature": "batch", "request_id": "job-1"}
    assert current_context() is None
    assert log_fields() == {}


async def test_async_scope_sets_and_restores() -> None:
    async with tenant_scope("acme") as ctx:
        assert snapshot() == ("acme", None, None)
        assert ctx.open_reservations == {}
    assert current_context() is None


async def test_nested_scopes_restore_the_outer_context() -> None:
    async with tenant_scope("outer", feature="chat", request_id="r1"):
        with tenant_scope("inner"):
            # feature is not inherited, the request id is (log correlation)
            assert snapshot() == ("inner", None, "r1")
            assert log_fields() == {"tenant": "inner", "request_id": "r1"}
        assert snapshot() == ("outer", "chat", "r1")
        assert log_fields() == {"tenant": "outer", "feature": "chat", "request_id": "r1"}
    assert current_context() is None


def test_scope_restores_on_error() -> None:
    with pytest.raises(KeyError), tenant_scope("acme"):
        raise KeyError("boom")
    assert current_context() is None


def test_scope_object_is_not_reentrant() -> None:
    scope = tenant_scope("acme")
    with scope, pytest.raises(RuntimeError), scope:
        pass
    assert current_context() is None


def test_structlog_bindings_of_the_app_are_restored() -> None:
    structlog.contextvars.bind_contextvars(tenant="app-value", user="u1")
    try:
        with tenant_scope("acme"):
            assert structlog.contextvars.get_contextvars() == {"tenant": "acme", "user": "u1"}
        assert structlog.contextvars.get_contextvars() == {"tenant": "app-value", "user": "u1"}
    finally:
        structlog.contextvars.clear_contextvars()


@pytest.fixture
def unbound() -> Iterator[None]:
    """Contexts not bound in structlog.contextvars, for the duration of a test."""
    bind_to_structlog(False)
    try:
        yield
    finally:
        bind_to_structlog(True)


def test_add_fence_context_reads_the_context_when_a_line_is_logged(unbound: None) -> None:
    log = structlog.get_logger("my_app")

    @feature("chat")
    def answer() -> None:
        assert structlog.contextvars.get_contextvars() == {}  # nothing bound
        log.info("answering")
        log.info("on behalf", tenant="other")  # the line's own key wins

    with structlog.testing.capture_logs(processors=[add_fence_context]) as logs:
        log.info("outside")
        with tenant_scope("acme", request_id="job-1"):
            answer()
            log.info("after")
        with tenant_scope("acme"):
            log.info("no request id")
    fields = [{k: v for k, v in line.items() if k not in ("log_level",)} for line in logs]
    assert fields == [
        {"event": "outside"},
        {"event": "answering", "tenant": "acme", "feature": "chat", "request_id": "job-1"},
        {"event": "on behalf", "tenant": "other", "feature": "chat", "request_id": "job-1"},
        {"event": "after", "tenant": "acme", "request_id": "job-1"},
        {"event": "no request id", "tenant": "acme"},
    ]


def test_the_processor_agrees_with_the_bound_fields() -> None:
    # Bound (the default), merge_contextvars and add_fence_context give the same fields.
    log = structlog.get_logger("my_app")
    scope = tenant_scope("acme", feature="batch", request_id="job-1")
    with structlog.testing.capture_logs(processors=[add_fence_context]) as by_processor, scope:
        log.info("line")
        bound = log_fields()
    (line,) = by_processor
    assert {k: line[k] for k in ("tenant", "feature", "request_id")} == bound


def test_binding_can_be_turned_off_and_on_within_a_scope() -> None:
    with tenant_scope("outer", feature="chat", request_id="r1"):
        bind_to_structlog(False)
        try:
            with tenant_scope("inner"):
                assert log_fields() == {"tenant": "outer", "feature": "chat", "request_id": "r1"}
        finally:
            bind_to_structlog(True)
        with tenant_scope("inner"):
            assert log_fields() == {"tenant": "inner", "request_id": "r1"}
        assert log_fields() == {"tenant": "outer", "feature": "chat", "request_id": "r1"}
    assert log_fields() == {}


@pytest.mark.parametrize(
    ("tenant", "options"),
    [
        ("", {}),
        ("a\x00b", {}),
        ("x" * 201, {}),
        ("acme", {"feature": "bad\nfeature"}),
        ("acme", {"request_id": ""}),
    ],
)
def test_bad_ids_are_refused_before_entering(tenant: str, options: dict[str, str]) -> None:
    with pytest.raises(InvalidId):
        tenant_scope(tenant, **options)


def test_bad_feature_name_is_refused_at_decoration() -> None:
    with pytest.raises(InvalidId):
        feature("\x07")


async def test_feature_on_async_function() -> None:
    @feature("chat")
    async def call(x: int) -> tuple[object, int]:
        await asyncio.sleep(0)
        return snapshot(), x

    async with tenant_scope("acme", request_id="r9"):
        assert await call(3) == (("acme", "chat", "r9"), 3)
        assert snapshot() == ("acme", None, "r9")


def test_feature_on_sync_function_and_its_log_binding() -> None:
    @feature("classification")
    def call() -> tuple[object, dict[str, object]]:
        return snapshot(), log_fields()

    with tenant_scope("acme"):
        assert call() == (
            ("acme", "classification", None),
            {"tenant": "acme", "feature": "classification"},
        )
        assert log_fields() == {"tenant": "acme"}


def test_feature_outside_any_scope_is_anonymous() -> None:
    @feature("chat")
    def call() -> FenceContext | None:
        return current_context()

    ctx = call()
    assert ctx is not None
    assert (ctx.tenant_id, ctx.feature) == (None, "chat")
    with pytest.raises(TenantRequired):
        ctx.require_tenant()
    assert current_context() is None


def test_the_function_a_feature_wrapped_is_marked_so_a_misplaced_one_can_be_found() -> None:
    def endpoint() -> None: ...

    async def stream() -> AsyncIterator[int]:
        yield 1

    wrapper = feature("chat")(endpoint)
    assert misplaced_feature(endpoint) == "chat"  # a route holding this one lost the feature
    assert misplaced_feature(wrapper) is None  # a route holding the wrapper has it
    again = feature("search")(wrapper)  # stacked: the outer wrapper is the one to register
    assert (misplaced_feature(wrapper), misplaced_feature(again)) == ("search", None)
    assert misplaced_feature(feature("chat")(stream)) is None
    assert misplaced_feature(stream) == "chat"
    assert misplaced_feature(print) is None  # nothing to mark on a builtin, and no error
    assert feature("chat")(print) is not print


async def test_feature_inside_a_thread() -> None:
    @feature("summarization")
    def call() -> object:
        return snapshot()

    async with tenant_scope("acme"):
        assert await asyncio.to_thread(call) == ("acme", "summarization", None)
        assert snapshot() == ("acme", None, None)


async def test_feature_on_async_generator_holds_for_every_step() -> None:
    @feature("chat")
    async def stream() -> AsyncIterator[object]:
        for _ in range(3):
            await asyncio.sleep(0)
            yield snapshot()

    async with tenant_scope("acme"):
        seen = []
        async for item in stream():
            seen.append(item)
            assert snapshot() == ("acme", None, None)  # the consumer is not inside the feature
    assert seen == [("acme", "chat", None)] * 3


async def test_async_generator_wrapper_forwards_send_throw_and_close() -> None:
    log: list[object] = []

    @feature("chat")
    async def echo() -> AsyncIterator[object]:
        try:
            received = yield "ready"
            while True:
                try:
                    received = yield ("got", received)
                except ValueError as exc:
                    received = yield ("caught", str(exc))
        finally:
            log.append(("closed", snapshot()))

    gen = echo()
    assert await gen.asend(None) == "ready"
    assert await gen.asend(1) == ("got", 1)
    assert await gen.athrow(ValueError("bad")) == ("caught", "bad")
    await gen.aclose()
    assert log == [("closed", (None, "chat", None))]


def test_feature_on_sync_generator_returns_its_value() -> None:
    @feature("search")
    def gen() -> Iterator[object]:
        yield snapshot()
        received = yield "next"
        return received

    with tenant_scope("acme"):
        g = gen()
        assert next(g) == ("acme", "search", None)
        assert next(g) == "next"
        with pytest.raises(StopIteration) as stop:
            g.send(42)
    assert stop.value.value == 42


async def test_feature_shares_the_scope_open_reservations() -> None:
    r = Reservation(
        id="r-1",
        tenant_id="acme",
        feature="chat",
        model=None,
        amount=Decimal("0.01"),
        amount_nanos=10_000_000,
        plan="free",
        expires_at=datetime(2026, 1, 1, tzinfo=UTC),
    )

    @feature("chat")
    async def call() -> None:
        ctx = current_context()
        assert ctx is not None
        ctx.track(r)

    async with tenant_scope("acme") as scope_ctx:
        await call()
        assert scope_ctx.open_reservations == {"r-1": r}
        scope_ctx.untrack("r-1")
        scope_ctx.untrack("unknown")
        assert scope_ctx.open_reservations == {}


async def test_settlers_registered_anywhere_in_a_scope_run_once_at_its_end() -> None:
    ran: list[tuple[str, str | None]] = []

    async def settle_a(ctx: FenceContext) -> None:
        ran.append(("a", ctx.feature))

    async def settle_b(ctx: FenceContext) -> None:
        ran.append(("b", ctx.feature))

    @feature("chat")
    async def inner() -> None:
        ctx = current_context()
        assert ctx is not None
        ctx.on_end(settle_a)  # registered on the derived context
        ctx.on_end(settle_a)  # once per settler

    @feature("search")
    async def other() -> None:
        ctx = current_context()
        assert ctx is not None
        ctx.on_end(settle_b)

    async with tenant_scope("acme") as scope_ctx:
        await inner()
        await other()
        scope_ctx.on_end(settle_b)
        await settle_context(scope_ctx)
    assert ran == [("a", None), ("b", None)]
    ran.clear()
    await settle_context(FenceContext("acme"))  # nothing registered: nothing runs
    assert ran == []


async def test_concurrent_scopes_never_see_each_other() -> None:
    @feature("chat")
    async def work(tenant: str) -> list[object]:
        seen = []
        for _ in range(5):
            await asyncio.sleep(0)
            seen.append(snapshot())
        return seen

    async def job(i: int) -> list[object]:
        async with tenant_scope(f"tenant-{i % 50}", request_id=f"job-{i}"):
            return await work(f"tenant-{i % 50}")

    results = await asyncio.gather(*(job(i) for i in range(200)))
    for i, seen in enumerate(results):
        assert seen == [(f"tenant-{i % 50}", "chat", f"job-{i}")] * 5


def test_a_scope_without_holds_keeps_no_reservation_table() -> None:
    """Entering and leaving a scope that reserved nothing allocates nothing per request."""
    scope = tenant_scope("acme")
    with scope as ctx:
        assert not ctx.has_open_reservations
    assert ctx._reservations is None
