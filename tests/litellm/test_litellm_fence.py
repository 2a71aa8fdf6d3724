"""No LiteLLM call escapes the fence: every call type, true upper bounds, honest refusals.

Each test is one way a paid call could once slip past its tenant's budget (or be refused for
no good reason), run through LiteLLM with ``mock_response`` on real Redis and the embedded store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import litellm
import pytest
import structlog
from litellm.integrations.custom_logger import CustomLogger

from tests.litellm.test_litellm import MSGS, clean_callbacks, used
from tokenfence_asgi.config import BUILTIN_PLANS, Limit, Plan
from tokenfence_asgi.context import FenceContext, pop_context, push_context, tenant_scope
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import (
    BudgetExceeded,
    ConfigError,
    InvalidCall,
    TenantDisabled,
    TenantRequired,
)
from tokenfence_asgi.litellm import TokenFenceCallback
from tokenfence_asgi.money import from_nanos, to_nanos
from tokenfence_asgi.pricing.book import ModelPrice, PriceBook
from tokenfence_asgi.pricing.call import CallShape
from tokenfence_asgi.web.problem import limit_headers

__all__ = ["clean_callbacks"]

pytestmark = pytest.mark.filterwarnings(
    "ignore:Items? .* on TypedDict class .* using the `ReadOnly` qualifier:UserWarning",
    "ignore:Pydantic serializer warnings:UserWarning",
)

OPEN = Plan("open", [Limit("1d", max_cost="10", max_requests=1000)])
CENTS = Plan("cents", [Limit("1d", max_cost="0.05")])
SHRINK = Plan("shrink", [Limit("1d", max_cost="0.01")], fit="shrink", min_output_tokens=64)
CHATTY = Plan("chatty", [Limit("1d", max_cost="10")], default_output_tokens=1000)
FIVE = Plan("five", [Limit("1d", max_cost="5")])
IMAGE = "openai/dall-e-3"


class Seen(CustomLogger):
    """What LiteLLM reported for each successful call, and the kwargs each call was sent with."""

    def __init__(self) -> None:
        super().__init__()
        self.costs: list[float | None] = []
        self.sent: list[dict[str, Any]] = []

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self.costs.append(kwargs.get("response_cost"))
        self.sent.append(dict(kwargs.get("optional_params") or {}))


@pytest.fixture
def fence(make_fence: Callable[..., TokenFence]) -> TokenFence:
    return make_fence(
        plans=[*BUILTIN_PLANS, OPEN, CENTS, SHRINK, CHATTY, FIVE], default_plan="open"
    )


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def cb(fence: TokenFence, seen: Seen, clean_callbacks: None) -> Iterator[TokenFenceCallback]:
    callback = TokenFenceCallback(fence, prices={"dall-e-3": ModelPrice.flat("0.04")})
    litellm.callbacks = [callback, seen]
    try:
        yield callback
    finally:
        callback.close()


def nanos(amount: object) -> Decimal:
    """LiteLLM's float cost as the fence charges it (half-up to the nano-dollar)."""
    return from_nanos(to_nanos(str(amount)))


CALLS: dict[str, Callable[..., Any]] = {
    "acompletion": lambda **kw: litellm.acompletion(
        model="gpt-4o-mini", messages=MSGS, mock_response="Hello!", max_tokens=50, **kw
    ),
    "acompletion-stream": lambda **kw: litellm.acompletion(
        model="gpt-4o-mini",
        messages=MSGS,
        mock_response="Hello there!",
        stream=True,
        max_tokens=50,
        **kw,
    ),
    "aresponses": lambda **kw: litellm.aresponses(
        model="gpt-4o-mini",
        input="Say hello.",
        mock_response="Hello!",
        max_output_tokens=50,
        **kw,
    ),
    "aembedding": lambda **kw: litellm.aembedding(
        model="text-embedding-3-small", input=["hello there"], mock_response=[0.1, 0.2], **kw
    ),
    "atext_completion": lambda **kw: litellm.atext_completion(
        model="gpt-3.5-turbo-instruct",
        prompt="Say hello.",
        mock_response="Hello!",
        max_tokens=50,
        **kw,
    ),
    "aimage_generation": lambda **kw: litellm.aimage_generation(
        model=IMAGE, prompt="a lighthouse", mock_response="x", **kw
    ),
}


async def run(name: str, **kwargs: Any) -> Any:
    response = await CALLS[name](**kwargs)
    if hasattr(response, "__aiter__"):
        async for _ in response:
            pass
    return response


@pytest.mark.parametrize("name", list(CALLS))
async def test_every_call_type_is_refused_for_a_killed_tenant(
    cb: TokenFenceCallback, fence: TokenFence, seen: Seen, name: str
) -> None:
    await fence.kill("acme")
    async with tenant_scope("acme"):
        with pytest.raises(TenantDisabled):
            await run(name)
        await cb.settle()
    assert seen.costs == []  # nothing reached the provider


@pytest.mark.parametrize("name", list(CALLS))
async def test_every_call_type_is_refused_over_budget(
    cb: TokenFenceCallback, fence: TokenFence, seen: Seen, name: str
) -> None:
    await fence.set_plan("acme", "cents")
    held = await fence.reserve("acme", "0.049999999")  # leaves one nano-dollar
    async with tenant_scope("acme"):
        with pytest.raises(BudgetExceeded):
            await run(name)
        await cb.settle()
    await fence.release(held)
    assert seen.costs == []


@pytest.mark.parametrize("name", list(CALLS))
async def test_every_call_type_is_charged_litellms_cost(
    cb: TokenFenceCallback, fence: TokenFence, seen: Seen, name: str
) -> None:
    async with tenant_scope("acme", feature="chat"):
        await run(name)
        await cb.settle()
    charged, held = await used(fence)
    assert held == 0
    cost = seen.costs[-1]
    if name == "aimage_generation":
        assert cost is None  # LiteLLM cannot price a mocked image: the fence's price is charged
        assert charged == Decimal("0.04")
    else:
        assert cost is not None
        assert cost > 0
        assert charged == nanos(cost)


async def test_an_image_model_without_a_per_call_price_is_refused(
    fence: TokenFence, clean_callbacks: None
) -> None:
    callback = TokenFenceCallback(fence)
    litellm.callbacks = [callback]
    try:
        async with tenant_scope("acme"):
            with pytest.raises(ConfigError, match=r"no price for model|cannot bound the cost"):
                await litellm.aimage_generation(
                    model="openai/gpt-image-1", prompt="a cat", mock_response="x"
                )
    finally:
        callback.close()
    assert (await used(fence)) == (0, 0)


async def test_an_image_call_holds_each_image(cb: TokenFenceCallback, fence: TokenFence) -> None:
    await fence.set_plan("acme", "cents")  # $0.05: one image of $0.04 fits, two do not
    async with tenant_scope("acme"):
        with pytest.raises(BudgetExceeded):
            await litellm.aimage_generation(model=IMAGE, prompt="a", n=2, mock_response="x")


FAILING: dict[str, Callable[[], Any]] = {
    "acompletion": lambda: litellm.acompletion(
        model="gpt-4o-mini", messages=MSGS, mock_response=Exception("provider down")
    ),
    "atext_completion": lambda: litellm.atext_completion(
        model="gpt-3.5-turbo-instruct", prompt="hi", mock_response=Exception("provider down")
    ),
}


@pytest.mark.parametrize("name", list(FAILING))
async def test_a_failed_call_is_released(
    cb: TokenFenceCallback, fence: TokenFence, name: str
) -> None:
    async with tenant_scope("acme"):
        with pytest.raises(Exception, match="provider down"):
            await FAILING[name]()
        await cb.settle()
    assert await used(fence) == (0, 0)


async def test_a_calls_own_prices_do_not_make_it_cheaper(
    cb: TokenFenceCallback, fence: TokenFence, seen: Seen
) -> None:
    async with tenant_scope("acme"):
        await litellm.acompletion(
            model="gpt-4o",
            messages=MSGS,
            mock_response="hi",
            max_tokens=10,
            input_cost_per_token=0,
            output_cost_per_token=0,
        )
        await cb.settle()
    gpt4o = cb.prices.price("gpt-4o")
    assert seen.costs[-1] == pytest.approx(float(gpt4o.cost(10, 20)))  # LiteLLM's, map prices
    assert (await used(fence))[0] == nanos(seen.costs[-1]) > 0


async def test_a_forged_model_info_does_not_make_it_cheaper(
    cb: TokenFenceCallback, fence: TokenFence, seen: Seen
) -> None:
    forged = {"id": "x", "input_cost_per_token": 0, "output_cost_per_token": 0}
    async with tenant_scope("acme"):
        await litellm.acompletion(
            model="gpt-4o",
            messages=MSGS,
            mock_response="hi",
            max_tokens=10,
            model_info=forged,
            base_model="gpt-4o-mini",
        )
        await cb.settle()
    gpt4o = cb.prices.price("gpt-4o")
    assert (await used(fence))[0] == nanos(float(gpt4o.cost(10, 20)))


async def test_a_router_deployments_configured_prices_still_count(
    cb: TokenFenceCallback, fence: TokenFence, seen: Seen
) -> None:
    router = litellm.Router(
        model_list=[
            {
                "model_name": "house",
                "litellm_params": {
                    "model": "gpt-4o",
                    "input_cost_per_token": 1e-6,
                    "output_cost_per_token": 2e-6,
                    "mock_response": "hi",
                },
            }
        ]
    )
    async with tenant_scope("acme"):
        # the caller's own zero prices are dropped; the deployment's configured ones are kept
        await router.acompletion(model="house", messages=MSGS, input_cost_per_token=0)
        await cb.settle()
    assert seen.costs[-1] == pytest.approx(10 * 1e-6 + 20 * 2e-6)
    assert (await used(fence))[0] == nanos(seen.costs[-1])


async def test_the_hold_covers_every_choice(cb: TokenFenceCallback, fence: TokenFence) -> None:
    one = cb.prices.estimate("gpt-4o", MSGS, max_output_tokens=1000).amount_nanos
    async with tenant_scope("acme"):
        stream = await litellm.acompletion(
            model="gpt-4o",
            messages=MSGS,
            mock_response="hi",
            n=50,
            max_tokens=1000,
            stream=True,
        )
        held = (await used(fence))[1]
        async for _ in stream:
            pass
        await cb.settle()
    price = cb.prices.price("gpt-4o")
    input_cost = from_nanos(one) - price.cost(0, 1000)
    assert held >= input_cost + price.cost(0, 50 * 1000)  # 50 choices of 1,000 tokens
    assert held > 45 * from_nanos(one)


async def test_the_hold_takes_the_larger_of_two_output_limits(
    cb: TokenFenceCallback, fence: TokenFence, seen: Seen
) -> None:
    large = cb.prices.estimate("gpt-4o", MSGS, max_output_tokens=16000).amount_nanos
    async with tenant_scope("acme"):
        stream = await litellm.acompletion(
            model="gpt-4o",
            messages=MSGS,
            mock_response="hi",
            max_tokens=16000,
            max_completion_tokens=5,
            stream=True,
        )
        assert (await used(fence))[1] == from_nanos(large)
        async for _ in stream:
            pass
        await cb.settle()


@pytest.mark.parametrize("n", ["50", 0, -1, 2.5, True, 10**9])
async def test_an_unboundable_n_is_refused(
    cb: TokenFenceCallback, fence: TokenFence, n: object
) -> None:
    async with tenant_scope("acme"):
        with pytest.raises(InvalidCall):
            await litellm.acompletion(model="gpt-4o", messages=MSGS, mock_response="hi", n=n)
    assert await used(fence) == (0, 0)


async def test_metadata_cannot_move_a_call_to_another_feature(
    cb: TokenFenceCallback, fence: TokenFence
) -> None:
    await fence.kill("acme", feature="chat")
    async with tenant_scope("acme", feature="chat"):
        with pytest.raises(TenantDisabled):
            await litellm.acompletion(
                model="gpt-4o-mini",
                messages=MSGS,
                mock_response="hi",
                metadata={"feature": "docs", "tenant_id": "globex"},
            )


async def test_trust_metadata_lets_the_app_choose(fence: TokenFence, clean_callbacks: None) -> None:
    callback = TokenFenceCallback(fence, trust_metadata=True)
    litellm.callbacks = [callback]
    try:
        await fence.kill("acme", feature="chat")
        async with tenant_scope("acme", feature="chat"):
            await litellm.acompletion(
                model="gpt-4o-mini",
                messages=MSGS,
                mock_response="hi",
                metadata={"feature": "docs"},
            )
            await callback.settle()
    finally:
        callback.close()


async def test_a_call_without_a_limit_holds_the_default_allowance_and_is_capped_to_it(
    cb: TokenFenceCallback, fence: TokenFence, seen: Seen
) -> None:
    async with tenant_scope("acme"):
        stream = await litellm.acompletion(
            model="claude-sonnet-4-5", messages=MSGS, mock_response="hi", stream=True
        )
        held = (await used(fence))[1]
        async for _ in stream:
            pass
        await cb.settle()
    expected = cb.prices.estimate("claude-sonnet-4-5", MSGS, max_output_tokens=4096)
    assert held == from_nanos(expected.amount_nanos)  # not the model's 64,000 tokens ($0.96)
    assert seen.sent[-1]["max_tokens"] == 4096  # what the hold covers is what was sent


async def test_a_plans_default_output_tokens_wins(
    cb: TokenFenceCallback, fence: TokenFence, seen: Seen
) -> None:
    await fence.set_plan("acme", "chatty")
    async with tenant_scope("acme"):
        await litellm.acompletion(model="gpt-4o", messages=MSGS, mock_response="hi")
        await cb.settle()
    assert seen.sent[-1]["max_tokens"] == 1000


async def test_concurrent_uncapped_calls_of_a_small_tenant_are_served(
    cb: TokenFenceCallback, fence: TokenFence
) -> None:
    """A $5/day tenant with $0 spent: 8 concurrent claude-sonnet-4-5 calls that set no limit."""
    await fence.set_plan("acme", "five")  # was: 5 of 8 refused, each holding 64,000 tokens

    async def one() -> Any:
        async with tenant_scope("acme"):
            response = await litellm.acompletion(
                model="claude-sonnet-4-5", messages=MSGS, mock_response="hi"
            )
            await cb.settle()
            return response

    results = await asyncio.gather(*(one() for _ in range(8)), return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []


async def test_fit_shrink_runs_a_call_with_a_smaller_limit_that_fits(
    cb: TokenFenceCallback, fence: TokenFence, seen: Seen
) -> None:
    await fence.set_plan("acme", "shrink")  # $0.01/day; 4,096 gpt-4o tokens cost $0.041
    with structlog.testing.capture_logs() as logs:
        async with tenant_scope("acme"):
            await litellm.acompletion(model="gpt-4o", messages=MSGS, mock_response="hi")
            await cb.settle()
    sent = seen.sent[-1]["max_tokens"]
    assert 64 <= sent < 1000
    price = cb.prices.price("gpt-4o")
    assert price.cost(20, sent) <= Decimal("0.01")
    assert "output_limit_shrunk" in [e["event"] for e in logs]


async def test_fit_shrink_still_refuses_below_the_floor(
    cb: TokenFenceCallback, fence: TokenFence
) -> None:
    await fence.set_plan("acme", "shrink")
    await fence.reserve("acme", "0.00999")
    async with tenant_scope("acme"):
        with pytest.raises(BudgetExceeded):
            await litellm.acompletion(model="gpt-4o", messages=MSGS, mock_response="hi")


async def test_a_call_too_large_for_the_plan_says_so_without_retry_after(
    cb: TokenFenceCallback, fence: TokenFence
) -> None:
    await fence.set_plan("acme", "cents")
    async with tenant_scope("acme", feature="chat"):
        with pytest.raises(BudgetExceeded) as caught:
            await litellm.acompletion(
                model="gpt-4o", messages=MSGS, mock_response="hi", max_tokens=16000
            )
    error = caught.value
    assert error.reason == "call_too_large"
    body = error.to_dict()
    assert (body["reason"], body["feature"], body["held"]) == ("call_too_large", "chat", "0.000000")
    headers = limit_headers(error)
    assert "Retry-After" not in headers
    assert "RateLimit" in headers


async def test_a_call_refused_for_holds_in_flight_retries_after_their_lease(
    cb: TokenFenceCallback, fence: TokenFence
) -> None:
    await fence.set_plan("acme", "cents")
    await fence.reserve("acme", "0.04")  # a call in flight
    async with tenant_scope("acme"):
        with pytest.raises(BudgetExceeded) as caught:
            await litellm.acompletion(
                model="gpt-4o", messages=MSGS, mock_response="hi", max_tokens=1000
            )
    error = caught.value
    assert error.reason == "held"
    assert error.to_dict()["held"] == "0.040000"
    retry = int(limit_headers(error)["Retry-After"])
    assert 1 <= retry <= fence.hold_ttl


def test_shapes_bound_what_each_call_type_pays() -> None:
    from tokenfence_asgi.litellm.calls import shape_of

    text = shape_of("text", {"prompt": ["a", "b"], "n": 2, "best_of": 3, "max_tokens": 5})
    assert (text.choices, text.output_limit) == (6, 5)  # 3 generated per prompt, 2 prompts
    embed = shape_of("embedding", {"input": [[1, 2, 3], "hi"]})
    assert (embed.tokens, embed.texts) == (3, ("hi",))
    speech = shape_of("speech", {"input": "hello"})
    assert speech.characters == 5
    chat = shape_of("chat", {"messages": MSGS, "max_tokens": 9, "max_completion_tokens": 90})
    assert chat.output_limit == 90
    assert isinstance(chat, CallShape)


async def test_an_anonymous_request_cannot_charge_a_tenant_named_in_metadata(
    cb: TokenFenceCallback, fence: TokenFence, seen: Seen
) -> None:
    ctx = FenceContext(None)  # a request the middleware let through without a tenant
    token = push_context(ctx)
    try:
        with pytest.raises(TenantRequired):
            await litellm.acompletion(
                model="gpt-4o-mini",
                messages=MSGS,
                mock_response="hi",
                metadata={"tenant_id": "acme"},
            )
    finally:
        pop_context(token)
    assert seen.costs == []
    assert await used(fence) == (0, 0)


def test_a_zero_cost_from_litellm_for_a_priced_usage_is_not_trusted() -> None:
    """LiteLLM 1.110.2 prices some models it does not map (claude-opus-4-1) at $0."""
    book = PriceBook(default_price=ModelPrice.per_million("15", "75"))
    cost = book.actual_cost(
        "claude-opus-4-1", response_cost=0.0, input_tokens=1000, output_tokens=100
    )
    assert cost == Decimal("0.0225")
    # a free usage is still free
    assert book.actual_cost("gpt-4o", response_cost=0.0, input_tokens=0, output_tokens=0) == 0


async def test_a_sync_scope_exit_settles_its_open_calls(
    cb: TokenFenceCallback, fence: TokenFence
) -> None:
    """A plain ``with tenant_scope(...)`` in async code: an abandoned stream is settled too."""
    with tenant_scope("acme"):
        stream = await litellm.acompletion(
            model="gpt-4o-mini",
            messages=MSGS,
            mock_response="one two three four five six",
            stream=True,
            max_tokens=50,
        )
        async for _ in stream:
            break
        assert (await used(fence))[1] > 0
    for _ in range(200):
        if (await used(fence))[1] == 0:
            break
        await asyncio.sleep(0.005)
    used_now, held = await used(fence)
    assert held == 0
    assert used_now > 0
