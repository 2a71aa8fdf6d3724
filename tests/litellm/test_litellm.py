"""TokenFenceCallback with LiteLLM's mock responses: reserve, refuse, downgrade, commit, release."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import anyio
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
import structlog
from litellm.integrations.custom_logger import CustomLogger

from tests.litellm.litellm_support import saved_callbacks
from tokenfence_asgi.config import BUILTIN_PLANS, Limit, Plan
from tokenfence_asgi.context import FenceContext, pop_context, push_context, tenant_scope
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import (
    BudgetExceeded,
    ConfigError,
    InputTooLong,
    ModelNotAllowed,
    RequestLimitExceeded,
    StoreUnavailable,
    TenantDisabled,
    TenantRequired,
)
from tokenfence_asgi.litellm import TokenFenceCallback
from tokenfence_asgi.money import from_nanos, to_nanos
from tokenfence_asgi.pricing.book import ModelPrice

# LiteLLM's own types trip a pydantic warning when first used; nothing to do with this project.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Items? .* on TypedDict class .* using the `ReadOnly` qualifier:UserWarning"
)

MSGS = [{"role": "user", "content": "Say hello."}]
OPEN = Plan("open", [Limit("1d", max_cost="10", max_requests=1000)])
TINY = Plan("tiny", [Limit("1d", max_cost="0.001")], upgrade_url="https://example.com/up")
TWO_CALLS = Plan("two", [Limit("1d", max_cost="10", max_requests=2)])
SHARED = Plan("shared", [Limit("1d", max_cost="10")], features={"chat": 0.5, "search": 0.5})
PLANS = [*BUILTIN_PLANS, OPEN, TINY, TWO_CALLS, SHARED]


class Spy(CustomLogger):
    """Records what LiteLLM reports for each successful call."""

    def __init__(self) -> None:
        super().__init__()
        self.costs: list[float] = []
        self.models: list[str] = []

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self.costs.append(kwargs["response_cost"])
        self.models.append(kwargs["model"])


@pytest.fixture
def clean_callbacks() -> Iterator[None]:
    """LiteLLM copies callbacks into several global lists: restore them all afterwards."""
    with saved_callbacks():
        yield


@pytest.fixture
def fence(make_fence: Callable[..., TokenFence]) -> TokenFence:
    return make_fence(plans=PLANS, default_plan="open")


@pytest.fixture
def spy() -> Spy:
    return Spy()


@pytest.fixture
def cb(fence: TokenFence, spy: Spy, clean_callbacks: None) -> Iterator[TokenFenceCallback]:
    callback = TokenFenceCallback(fence)
    litellm.callbacks = [callback, spy]
    try:
        yield callback
    finally:
        callback.close()


async def used(fence: TokenFence, tenant: str = "acme") -> tuple[Decimal, Decimal]:
    """Committed spend and open holds of the tenant's first window."""
    window = (await fence.status(tenant)).windows[0]
    return window.used, window.held


async def call(cb: TokenFenceCallback, tenant: str = "acme", **kwargs: Any) -> Any:
    """One acompletion in a tenant scope, settled as the end of a request settles it."""
    kwargs.setdefault("model", "gpt-4o-mini")
    kwargs.setdefault("messages", MSGS)
    kwargs.setdefault("mock_response", "Hello!")
    async with tenant_scope(tenant, feature="chat"):
        try:
            return await litellm.acompletion(**kwargs)
        finally:
            await cb.settle()


def cost_of(spy: Spy) -> Decimal:
    """LiteLLM's own cost of the last call, as the fence charges it."""
    return from_nanos(to_nanos(str(spy.costs[-1])))


async def test_charges_litellms_cost_of_the_response(
    cb: TokenFenceCallback, fence: TokenFence, spy: Spy
) -> None:
    response = await call(cb)
    assert response.choices[0].message.content == "Hello!"
    assert spy.costs == [response._hidden_params["response_cost"]]
    assert await used(fence) == (cost_of(spy), 0)


async def test_failing_call_releases_its_hold(cb: TokenFenceCallback, fence: TokenFence) -> None:
    with pytest.raises(litellm.InternalServerError):
        await call(cb, mock_response=Exception("provider down"))
    assert await used(fence) == (0, 0)


async def test_budget_exceeded_reaches_the_caller_as_our_error(
    cb: TokenFenceCallback, fence: TokenFence, spy: Spy
) -> None:
    await fence.set_plan("acme", "tiny")
    with pytest.raises(BudgetExceeded) as info:
        await call(cb)  # the uncapped worst case of gpt-4o-mini ($0.0098) exceeds $0.001
    error = info.value
    assert type(error).__name__ == "BudgetExceeded"
    assert isinstance(error, litellm.BudgetExceededError)  # so a Router treats it as final
    assert error.status_code == 402
    assert error.to_dict()["error"] == "ai_budget_exceeded"
    assert error.to_dict()["upgrade_url"] == "https://example.com/up"
    assert error.tenant_id == "acme"
    assert spy.costs == []
    assert await used(fence) == (0, 0)


async def test_request_limit_reaches_the_caller(cb: TokenFenceCallback, fence: TokenFence) -> None:
    await fence.set_plan("acme", "two")
    await call(cb)
    await call(cb)
    with pytest.raises(RequestLimitExceeded) as info:
        await call(cb)
    assert info.value.status_code == 429


async def test_killed_tenant_is_refused(cb: TokenFenceCallback, fence: TokenFence) -> None:
    await fence.kill("acme")
    with pytest.raises(TenantDisabled):
        await call(cb)


async def test_free_plan_gpt4o_is_answered_by_gpt4o_mini(
    cb: TokenFenceCallback, fence: TokenFence, spy: Spy
) -> None:
    await fence.set_plan("acme", "free")
    response = await call(cb, model="gpt-4o")
    assert response.model == "gpt-4o-mini"
    assert spy.models == ["gpt-4o-mini"]
    assert await used(fence) == (cost_of(spy), 0)


async def test_disallowed_model_without_downgrade(
    cb: TokenFenceCallback, fence: TokenFence
) -> None:
    await fence.set_plan("acme", "free")
    with pytest.raises(ModelNotAllowed, match="'claude-3-5-sonnet-20241022' is not allowed"):
        await call(cb, model="claude-3-5-sonnet-20241022")
    assert await used(fence) == (0, 0)


async def test_too_long_input(cb: TokenFenceCallback, fence: TokenFence) -> None:
    await fence.set_plan("acme", "free")
    long = [{"role": "user", "content": [{"type": "text", "text": "x" * 2001}]}]
    with pytest.raises(InputTooLong) as info:
        await call(cb, messages=long)
    assert info.value.status_code == 413
    await call(cb, messages=[{"role": "user", "content": "x" * 2000}])


async def test_positional_model_is_reserved_but_never_downgraded(
    cb: TokenFenceCallback, fence: TokenFence, spy: Spy
) -> None:
    async with tenant_scope("acme"):
        await litellm.acompletion("gpt-4o-mini", MSGS, mock_response="hi")
        await cb.settle()
        assert await used(fence) == (cost_of(spy), 0)
        await fence.set_plan("acme", "free")
        with pytest.raises(ModelNotAllowed, match="pass model= as a keyword"):
            await litellm.acompletion("gpt-4o", MSGS, mock_response="hi")


async def test_no_tenant_is_refused_unless_unscoped_allowed(
    cb: TokenFenceCallback, fence: TokenFence, spy: Spy
) -> None:
    with pytest.raises(TenantRequired):
        await litellm.acompletion(model="gpt-4o-mini", messages=MSGS, mock_response="hi")
    token = push_context(FenceContext(None, None, "anonymous-request"))
    try:
        with pytest.raises(TenantRequired):
            await litellm.acompletion(model="gpt-4o-mini", messages=MSGS, mock_response="hi")
    finally:
        pop_context(token)
    assert spy.costs == []
    litellm.callbacks = [TokenFenceCallback(fence, unscoped="allow"), spy]
    response = await litellm.acompletion(model="gpt-4o-mini", messages=MSGS, mock_response="hi")
    assert response.choices[0].message.content == "hi"  # let through, unfenced


async def test_metadata_names_the_tenant(
    cb: TokenFenceCallback, fence: TokenFence, spy: Spy
) -> None:
    meta = {"tenant_id": "globex", "feature": "batch"}
    await litellm.acompletion(model="gpt-4o-mini", messages=MSGS, mock_response="hi", metadata=meta)
    for _ in range(200):  # no scope to settle: the success event commits a few loop steps later
        if (await used(fence, "globex"))[1] == 0:
            break
        await asyncio.sleep(0)
    assert await used(fence, "globex") == (cost_of(spy), 0)
    assert meta == {"tenant_id": "globex", "feature": "batch"}  # the caller's dict is untouched


async def test_stream_is_charged_when_it_ends(
    cb: TokenFenceCallback, fence: TokenFence, spy: Spy
) -> None:
    async with tenant_scope("acme"):
        stream = await litellm.acompletion(
            model="gpt-4o-mini", messages=MSGS, mock_response="a streamed answer", stream=True
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
        assert text == "a streamed answer"
        await cb.settle()
    assert len(spy.costs) == 1
    assert await used(fence) == (cost_of(spy), 0)


async def test_abandoned_stream_is_charged_what_it_streamed(
    cb: TokenFenceCallback, fence: TokenFence
) -> None:
    estimate = cb.prices.estimate("gpt-4o-mini", MSGS, max_output_tokens=50)
    async with tenant_scope("acme"):
        stream = await litellm.acompletion(
            model="gpt-4o-mini",
            messages=MSGS,
            mock_response="one two three four five six seven eight",
            stream=True,
            max_tokens=50,
        )
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                break  # the reader goes away: LiteLLM fires no callback
        assert (await used(fence))[1] == from_nanos(estimate.amount_nanos)
        await cb.settle()
    # charged its input and the 3 chunks (of up to 3 characters, one token each) it streamed,
    # not its hold
    charged = await used(fence)
    assert charged == (from_nanos(to_nanos(estimate.cost_of(3))), 0)
    assert charged[0] < from_nanos(estimate.amount_nanos) / 5


async def test_cancelled_call_is_released(cb: TokenFenceCallback, fence: TokenFence) -> None:
    async with tenant_scope("acme"):
        task = asyncio.create_task(
            litellm.acompletion(
                model="gpt-4o-mini", messages=MSGS, mock_response="hi", mock_delay=30
            )
        )
        for _ in range(1000):  # until the callback holds the call (not just Redis the hold)
            await asyncio.sleep(0)
            if cb._calls and (await used(fence))[1]:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await cb.settle()
    assert await used(fence) == (0, 0)


async def test_router_refusal_is_final_and_cools_nothing_down(
    cb: TokenFenceCallback, fence: TokenFence, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    reserves = 0
    reserve_first = fence.reserve_first

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal reserves
        reserves += 1
        return await reserve_first(*args, **kwargs)

    monkeypatch.setattr(fence, "reserve_first", counting)
    router = litellm.Router(
        model_list=[
            {
                "model_name": "chat",
                "litellm_params": {"model": "gpt-4o-mini", "mock_response": "a"},
            },
            {
                "model_name": "chat",
                "litellm_params": {"model": "gpt-4o-mini", "mock_response": "b"},
            },
        ],
        num_retries=3,
    )
    await fence.set_plan("poor", "tiny")
    for _ in range(3):
        with pytest.raises(BudgetExceeded) as info:
            async with tenant_scope("poor"):
                await router.acompletion(model="chat", messages=MSGS)
        assert type(info.value).status_code == 402
    assert reserves == 3  # never retried
    for _ in range(5):  # no deployment went into cooldown
        async with tenant_scope("rich"):
            await router.acompletion(model="chat", messages=MSGS)
            await cb.settle()
    assert len(spy.costs) == 5
    assert (await used(fence, "rich"))[0] == sum(from_nanos(to_nanos(str(c))) for c in spy.costs)


async def test_store_outage_is_refused_with_store_unavailable(clean_callbacks: None) -> None:
    fence = TokenFence(redis_url="redis://127.0.0.1:1/0", timeout_s=0.2)
    litellm.callbacks = [TokenFenceCallback(fence)]
    try:
        with pytest.raises(StoreUnavailable):
            async with tenant_scope("acme"):
                await litellm.acompletion(model="gpt-4o-mini", messages=MSGS, mock_response="hi")
    finally:
        await fence.aclose()


async def test_unpriced_model_is_refused_unless_priced(
    cb: TokenFenceCallback, fence: TokenFence, spy: Spy
) -> None:
    with pytest.raises(ConfigError, match="no price for model 'openai/acme-llm-7b'"):
        await call(cb, model="openai/acme-llm-7b")
    priced = ModelPrice.per_million("1", "2", max_output_tokens=1000)
    litellm.callbacks = [TokenFenceCallback(fence, prices={"acme-llm-7b": priced}), spy]
    await call(litellm.callbacks[0], model="openai/acme-llm-7b", max_tokens=100)
    # a configured price is what the operator pays: usage (10 in, 20 out) at that price
    assert await used(fence) == (Decimal("0.00005"), 0)


def test_sync_completion_without_an_event_loop(clean_callbacks: None) -> None:
    fence = TokenFence(plans=PLANS, default_plan="open")
    callback = TokenFenceCallback(fence)
    spy = Spy()
    litellm.callbacks = [callback, spy]
    try:
        with tenant_scope("acme"):
            response = callback.completion(model="gpt-4o-mini", messages=MSGS, mock_response="hi")
            assert response.choices[0].message.content == "hi"
            window = callback.run_sync(fence.status, "acme").windows[0]
            assert (window.used, window.held) == (cost_of(spy), 0)  # charged before it returns
            chunks = list(
                callback.completion(
                    model="gpt-4o-mini", messages=MSGS, mock_response="x y z", stream=True
                )
            )
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == "x y z"
            window = callback.run_sync(fence.status, "acme").windows[0]
            assert window.held == 0
            assert len(spy.costs) == 2
            before = window.used
            stream = callback.completion(
                model="gpt-4o-mini",
                messages=MSGS,
                mock_response="one two three four five six",
                stream=True,
                max_tokens=100,
            )
            next(stream)
            stream.close()  # abandoned: this iterator saw what was produced, so it is exact
            window = callback.run_sync(fence.status, "acme").windows[0]
            hold = callback.prices.estimate("gpt-4o-mini", MSGS, max_output_tokens=100)
            assert window.held == 0
            assert 0 < window.used - before < from_nanos(hold.amount_nanos)
            router = litellm.Router(
                model_list=[
                    {
                        "model_name": "chat",
                        "litellm_params": {"model": "gpt-4o-mini", "mock_response": "r"},
                    }
                ]
            )
            routed = callback.completion(model="chat", messages=MSGS, router=router)
            assert routed.choices[0].message.content == "r"
            callback.run_sync(fence.set_plan, "acme", "tiny")
            with pytest.raises(BudgetExceeded):
                callback.completion(model="gpt-4o-mini", messages=MSGS, mock_response="hi")
    finally:
        callback.run_sync(fence.aclose)
        callback.close()


async def test_sync_completion_inside_an_event_loop_thread_is_refused(
    cb: TokenFenceCallback,
) -> None:
    with pytest.raises(RuntimeError, match=r"await litellm\.acompletion"):
        cb.completion(model="gpt-4o-mini", messages=MSGS, mock_response="hi")


def run_in_thread(target: Callable[[], None]) -> None:
    """Run ``target`` in a plain thread (not an AnyIO worker thread) and wait for it."""
    thread = threading.Thread(target=target)
    thread.start()
    thread.join()


async def test_sync_completion_from_a_plain_thread_uses_the_apps_loop(
    cb: TokenFenceCallback, fence: TokenFence, spy: Spy
) -> None:
    await call(cb)  # an async call first: the callback now knows the app's loop
    results: list[Any] = []

    def worker() -> None:
        with tenant_scope("acme"):
            results.append(cb.completion(model="gpt-4o-mini", messages=MSGS, mock_response="t"))

    await asyncio.to_thread(run_in_thread, worker)
    assert results[0].choices[0].message.content == "t"
    assert await used(fence) == (sum(from_nanos(to_nanos(str(c))) for c in spy.costs), 0)


async def test_the_call_is_charged_to_the_feature_in_context(
    cb: TokenFenceCallback, fence: TokenFence, spy: Spy
) -> None:
    await fence.set_plan("acme", "shared")
    await call(cb)  # tenant_scope(..., feature="chat")
    features = (await fence.status("acme")).windows[0].features
    assert features == {"chat": cost_of(spy), "search": 0}


async def test_a_call_running_in_another_task_is_left_to_its_own_events(
    cb: TokenFenceCallback, fence: TokenFence, spy: Spy
) -> None:
    async with tenant_scope("acme"):
        task = asyncio.create_task(
            litellm.acompletion(
                model="gpt-4o-mini", messages=MSGS, mock_response="late", mock_delay=0.2
            )
        )
        for _ in range(1000):
            await asyncio.sleep(0)
            if (await used(fence))[1]:
                break
        await cb.settle()  # the request ends while the call still runs elsewhere
        assert (await used(fence))[1] > 0
        await task
        await cb.settle()
    assert await used(fence) == (cost_of(spy), 0)


async def test_store_outage_with_fail_open_lets_the_call_through(clean_callbacks: None) -> None:
    fence = TokenFence(redis_url="redis://127.0.0.1:1/0", timeout_s=0.2, on_store_error="open")
    callback = TokenFenceCallback(fence)
    litellm.callbacks = [callback]
    try:
        async with tenant_scope("acme"):
            response = await litellm.acompletion(
                model="gpt-4o-mini", messages=MSGS, mock_response="hi"
            )
            await callback.settle()
        assert response.choices[0].message.content == "hi"
        assert fence.counters.allowed_without_store == 1
    finally:
        await fence.aclose()


async def test_sync_litellm_completion_in_a_scope_is_charged_after_the_fact(
    cb: TokenFenceCallback, fence: TokenFence
) -> None:
    """No LiteLLM 1.110.2 hook can refuse a sync call: it is charged once it is answered."""
    with structlog.testing.capture_logs() as logs:
        async with tenant_scope("acme", feature="chat"):
            # as a sync endpoint of the app runs: in a worker thread of the app's loop
            response = await anyio.to_thread.run_sync(
                lambda: litellm.completion(model="gpt-4o", messages=MSGS, mock_response="hi")
            )
        for _ in range(200):  # LiteLLM runs its sync success event on a thread of its own
            if (await used(fence))[0] > 0:
                break
            await asyncio.sleep(0.01)
    assert response.choices[0].message.content == "hi"
    litellms = response._hidden_params["response_cost"]
    assert await used(fence) == (from_nanos(to_nanos(str(litellms))), 0)
    assert fence.counters.charged_unfenced == 1
    assert "sync_call_not_fenced" in [e["event"] for e in logs]


async def test_sync_call_with_its_own_prices_is_charged_at_the_fences(
    cb: TokenFenceCallback, fence: TokenFence
) -> None:
    async with tenant_scope("acme", feature="chat"):
        await anyio.to_thread.run_sync(
            lambda: litellm.completion(
                model="gpt-4o",
                messages=MSGS,
                mock_response="hi",
                input_cost_per_token=0,
                output_cost_per_token=0,
            )
        )
    for _ in range(200):
        if (await used(fence))[0] > 0:
            break
        await asyncio.sleep(0.01)
    gpt4o = cb.prices.price("gpt-4o")
    # the mock's usage: 10 input and 20 output tokens
    assert (await used(fence))[0] == from_nanos(to_nanos(gpt4o.cost(10, 20)))
