"""What a guarded client applies before it sends, and what it never lets through.

Real SDK clients against the loopback servers, on real Redis and the embedded store: the
tenant and feature (fixed, or from the context; ``TenantRequired`` before anything is sent),
the plan's downgrade chain, input limits, tool policy and feature caps, true upper-bound holds
(``n``, the largest output limit, ``extra_body``, ``default_output_tokens`` written into the
call), and the paths that are refused (batches, unknown POSTs, realtime sockets) or passed
(free calls), on every derived client.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import anthropic
import anyio
import httpx2
import openai
import pytest

from tests.conftest import Held
from tests.e2e.fake_anthropic import FakeAnthropic
from tests.guard.conftest import MSGS, PLANS, list_cost
from tests.guard.providers import GuardProvider
from tests.guard.test_matrix import spent
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.context import FenceContext, pop_context, push_context, tenant_scope
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import (
    ApprovalRequired,
    BudgetExceeded,
    ConfigError,
    InputTooLong,
    InvalidId,
    ModelNotAllowed,
    PolicyDenied,
    TenantRequired,
)
from tokenfence_asgi.guard import CallNotFenced
from tokenfence_asgi.policy import Policy
from tokenfence_asgi.pricing.book import ModelPrice
from tokenfence_asgi.pricing.call import CallShape

pytestmark = pytest.mark.slow

CHAT = list_cost("gpt-4o-mini", 1000, 200)


@pytest.fixture
def aoai(fence: TokenFence, make_client: Callable[[str], Any]) -> Any:
    """A guarded AsyncOpenAI with no fixed tenant."""
    return fence.guard(make_client("AsyncOpenAI"))


async def test_no_tenant_and_no_context_is_refused_before_sending(
    aoai: Any,
    fence: TokenFence,
    make_client: Callable[[str], Any],
    oai: GuardProvider,
    ant: FakeAnthropic,
) -> None:
    with pytest.raises(TenantRequired) as info:
        await aoai.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert isinstance(info.value, openai.AuthenticationError)
    claude = fence.guard(make_client("AsyncAnthropic"))
    with pytest.raises(TenantRequired):
        await claude.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=MSGS)
    token = push_context(FenceContext(None, None, "anonymous-request"))
    try:
        with pytest.raises(TenantRequired):
            await aoai.embeddings.create(model="text-embedding-3-small", input="hi")
    finally:
        pop_context(token)
    assert (oai.calls, ant.calls) == (0, 0)


async def test_tenant_and_feature_come_from_the_context(
    aoai: Any, fence: TokenFence, held: Held
) -> None:
    async with tenant_scope("acme", feature="search"):
        await aoai.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    fixed = fence.guard(aoai, tenant="globex", feature="batch")  # a guarded client, guarded again
    async with tenant_scope("acme", feature="chat"):
        await fixed.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert [(r.tenant_id, r.feature) for r in held.reservations] == [
        ("acme", "search"),
        ("globex", "batch"),
    ]
    assert await spent(fence, "acme") == (CHAT, 0)
    assert await spent(fence, "globex") == (CHAT, 0)
    with pytest.raises(InvalidId):
        fence.guard(aoai, tenant="bad\ntenant")


async def test_the_downgrade_chain_and_the_price_of_the_model_used(
    make_fence: Callable[..., TokenFence], make_client: Callable[[str], Any], oai: GuardProvider
) -> None:
    plan = Plan(
        "down",
        [Limit("1d", max_cost="10")],
        models=["gpt-4o-mini"],
        downgrade={"gpt-4o": "gpt-4o-mini"},
    )
    fence = make_fence(plans=[plan], default_plan="down")
    client = fence.guard(make_client("AsyncOpenAI"), tenant="acme")
    answer = await client.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert answer.model == "gpt-4o-mini"
    assert oai.requests[0]["model"] == "gpt-4o-mini"
    assert await spent(fence) == (CHAT, 0)


async def test_the_hold_is_a_true_upper_bound_written_into_the_call(
    fence: TokenFence, make_client: Callable[[str], Any], oai: GuardProvider, held: Held
) -> None:
    client = fence.guard(make_client("AsyncOpenAI"), tenant="acme")
    await client.chat.completions.create(
        model="gpt-4o-mini", messages=MSGS, n=3, max_tokens=100, max_completion_tokens=300
    )
    shape = CallShape("chat", messages=tuple(MSGS), output_limit=300, choices=3)
    bound = fence.prices.bound("gpt-4o-mini", shape)
    assert held.reservations[0].amount_nanos == bound.amount_nanos
    assert held.reservations[0].amount >= 3 * 300 * Decimal("0.0000006")  # 3 x the larger limit
    # extra_body is merged into what is sent: it is bounded too
    await client.chat.completions.create(
        model="gpt-4o-mini", messages=MSGS, extra_body={"n": 4, "max_completion_tokens": 500}
    )
    bound = fence.prices.bound(
        "gpt-4o-mini", CallShape("chat", tuple(MSGS), output_limit=500, choices=4)
    )
    assert held.reservations[1].amount_nanos == bound.amount_nanos
    assert (oai.requests[1]["n"], oai.requests[1]["max_completion_tokens"]) == (4, 500)
    # no limit: the fence's default_output_tokens is held and written into the call
    await client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    await client.responses.create(model="gpt-4.1-mini", input="Say hello.")
    assert oai.requests[2]["max_completion_tokens"] == fence.default_output_tokens == 4096
    assert oai.requests[3]["max_output_tokens"] == 4096
    assert (
        held.reservations[2].amount_nanos
        == fence.prices.bound(
            "gpt-4o-mini", CallShape("chat", tuple(MSGS)), allowance=4096
        ).amount_nanos
    )
    assert await spent(fence) == (3 * CHAT + list_cost("gpt-4.1-mini", 1000, 200), 0)


async def test_input_named_by_reference_is_held_at_the_context_window(
    fence: TokenFence, make_client: Callable[[str], Any], oai: GuardProvider, held: Held
) -> None:
    """A Responses call that continues an earlier one (``previous_response_id``) is billed the
    earlier input again, which the request does not carry: it is held at the model's window."""
    client = fence.guard(make_client("AsyncOpenAI"), tenant="acme")
    await client.responses.create(model="gpt-4.1-mini", input="Go on.", max_output_tokens=10)
    await client.responses.create(
        model="gpt-4.1-mini", input="Go on.", max_output_tokens=10, previous_response_id="resp_1"
    )
    window = fence.prices.max_input_tokens("gpt-4.1-mini")
    assert window is not None
    plain, continued = held.reservations
    assert plain.amount < Decimal("0.001")
    assert continued.amount >= window * Decimal("0.4") / 1_000_000
    assert oai.requests[1]["previous_response_id"] == "resp_1"
    assert await spent(fence) == (2 * list_cost("gpt-4.1-mini", 1000, 200), 0)  # the usage


async def test_the_1m_context_beta_holds_a_document_at_that_window(
    make_fence: Callable[..., TokenFence], make_client: Callable[[str], Any], ant: FakeAnthropic
) -> None:
    """``betas=["context-1m-..."]`` lets claude-sonnet-4-5 read past its listed 200k window: a
    document whose size the hold cannot count is held at 1M tokens at the long-context price."""
    plan = Plan("long", [Limit("1d", max_cost="100")], models=("claude-sonnet-4-5",))
    fence = make_fence(plans=[plan], default_plan="long")
    held = fence.observe(Held())
    claude = fence.guard(make_client("AsyncAnthropic"), tenant="acme")
    pdf = {"type": "document", "source": {"type": "file", "file_id": "file_123"}}
    messages = [{"role": "user", "content": [pdf]}]
    await claude.beta.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=messages)
    await claude.beta.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=10,
        messages=messages,
        betas=["context-1m-2025-08-07"],
    )
    listed, beta = held.reservations  # type: ignore[attr-defined]
    assert Decimal("0.6") <= listed.amount < Decimal("1")  # its listed 200k tokens at $3/M
    assert beta.amount >= Decimal("6")  # 1M tokens at $6/M past 200k
    assert "context-1m-2025-08-07" in ant.headers[-1].get("anthropic-beta", "")


async def test_a_limit_the_budget_cannot_hold_is_shrunk_on_a_shrink_plan(
    make_fence: Callable[..., TokenFence], make_client: Callable[[str], Any], ant: FakeAnthropic
) -> None:
    plan = Plan("small", [Limit("1d", max_cost="0.003")], fit="shrink", min_output_tokens=16)
    fence = make_fence(plans=[plan], default_plan="small")
    client = fence.guard(make_client("AsyncAnthropic"), tenant="acme")
    await client.messages.create(model="claude-haiku-4-5", max_tokens=300, messages=MSGS)
    assert ant.requests[0]["max_tokens"] == 300  # it fits: the call's own limit is kept
    await client.messages.create(model="claude-haiku-4-5", max_tokens=8000, messages=MSGS)
    assert 16 <= ant.requests[1]["max_tokens"] < 8000  # shrunk to what the budget holds
    assert await spent(fence) == (2 * list_cost("claude-haiku-4-5", 1000, 200), 0)


async def test_input_limits_refuse_before_sending(
    make_fence: Callable[..., TokenFence],
    make_client: Callable[[str], Any],
    oai: GuardProvider,
    ant: FakeAnthropic,
) -> None:
    plan = Plan("short", [Limit("1d", max_cost="10")], max_input_chars=5)
    fence = make_fence(plans=[plan], default_plan="short")
    client = fence.guard(make_client("AsyncOpenAI"), tenant="acme")
    with pytest.raises(InputTooLong) as info:
        await client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert isinstance(info.value, openai.APIStatusError)
    assert info.value.status_code == 413
    claude = fence.guard(make_client("Anthropic"), tenant="acme")
    create = functools.partial(
        claude.messages.create, model="claude-haiku-4-5", max_tokens=10, messages=MSGS
    )
    with pytest.raises(anthropic.ContentTooLargeError):
        await anyio.to_thread.run_sync(create)
    with pytest.raises(RuntimeError, match="would block this thread's event loop"):
        create()  # a sync client on the loop's own thread: refused before sending
    assert (oai.calls, ant.calls) == (0, 0)


TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("lookup_order", "delete_user")
]


async def test_tool_policy_removes_denied_tools_and_refuses_forcing_one(
    make_fence: Callable[..., TokenFence],
    make_client: Callable[[str], Any],
    oai: GuardProvider,
    ant: FakeAnthropic,
) -> None:
    fence = make_fence(plans=PLANS, default_plan="open", policy=Policy().deny("tool:delete_*"))
    client = fence.guard(make_client("AsyncOpenAI"), tenant="acme")
    await client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, tools=TOOLS)
    assert [t["function"]["name"] for t in oai.requests[0]["tools"]] == ["lookup_order"]
    forced = {"type": "function", "function": {"name": "delete_user"}}
    with pytest.raises(PolicyDenied) as info:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=MSGS, tools=TOOLS, tool_choice=forced
        )
    assert isinstance(info.value, openai.PermissionDeniedError)
    claude = fence.guard(make_client("AsyncAnthropic"), tenant="acme")
    tools = [{"name": "delete_user", "input_schema": {"type": "object"}}]
    await claude.messages.create(
        model="claude-haiku-4-5", max_tokens=10, messages=MSGS, tools=tools
    )
    assert "tools" not in ant.requests[0]  # nothing left to offer
    assert oai.calls == 1


async def test_tool_calls_in_an_answer_are_checked_after_it_is_charged(
    make_fence: Callable[..., TokenFence],
    make_client: Callable[[str], Any],
    oai: GuardProvider,
    ant: FakeAnthropic,
) -> None:
    policy = Policy().deny("tool:delete_*").require_approval("tool:refund")
    fence = make_fence(plans=PLANS, default_plan="open", policy=policy)
    client = fence.guard(make_client("AsyncOpenAI"), tenant="acme")
    oai.tool_calls = ("delete_user",)
    with pytest.raises(PolicyDenied) as denied:
        await client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, tools=TOOLS)
    assert isinstance(denied.value, openai.PermissionDeniedError)
    assert await spent(fence) == (CHAT, 0)  # the call was made: it is charged
    oai.tool_calls = ("refund",)
    with pytest.raises(ApprovalRequired) as pending:
        await client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    answer = pending.value.model_response
    assert answer.choices[0].message.tool_calls[0].function.name == "refund"
    assert await fence.approve(pending.value.approval_id)
    await fence.check_tool("tool:refund", tenant_id="acme", approval_id=pending.value.approval_id)
    claude = fence.guard(make_client("AsyncAnthropic"), tenant="acme")
    ant.tool_uses = ("delete_user",)
    with pytest.raises(anthropic.PermissionDeniedError, match="delete_user"):
        await claude.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=MSGS)
    assert await spent(fence) == (2 * CHAT + list_cost("claude-haiku-4-5", 1000, 200), 0)


async def test_tool_calls_in_a_stream_are_checked_when_it_ends(
    make_fence: Callable[..., TokenFence],
    make_client: Callable[[str], Any],
    oai: GuardProvider,
    ant: FakeAnthropic,
) -> None:
    """A streamed answer's tool calls are checked once it has been read whole and charged: the
    caller's loop over the stream ends with the SDK's 403 instead of its normal end, before the
    code after the loop runs the tool."""
    policy = Policy().deny("tool:delete_*").require_approval("tool:refund")
    fence = make_fence(plans=PLANS, default_plan="open", policy=policy)
    client = fence.guard(make_client("AsyncOpenAI"), tenant="acme")
    oai.tool_calls = ("lookup_order", "delete_user")
    seen: list[str] = []

    async def read_chat() -> None:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MSGS, stream=True
        )
        async for chunk in stream:
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                seen.append(call.function.name or "")

    with pytest.raises(PolicyDenied, match="delete_user") as denied:
        await read_chat()
    assert isinstance(denied.value, openai.PermissionDeniedError)
    assert "delete_user" in seen  # the stream was passed on whole, then refused
    assert await spent(fence) == (CHAT, 0)  # the call was made: it is charged
    oai.tool_calls = ("refund",)
    with pytest.raises(ApprovalRequired) as pending:
        async for _ in await client.responses.create(
            model="gpt-4.1-mini", input="Refund it.", stream=True
        ):
            pass
    assert pending.value.approval_id
    sync = fence.guard(make_client("OpenAI"), tenant="acme")
    oai.tool_calls = ("delete_user",)

    def read_sync() -> None:
        for _ in sync.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True):
            pass

    with pytest.raises(openai.PermissionDeniedError, match="delete_user"):
        await anyio.to_thread.run_sync(read_sync)
    claude = fence.guard(make_client("AsyncAnthropic"), tenant="acme")
    ant.tool_uses = ("delete_user",)

    async def read_claude() -> None:
        async with claude.messages.stream(
            model="claude-haiku-4-5", max_tokens=10, messages=MSGS
        ) as events:
            async for _ in events:
                pass

    with pytest.raises(anthropic.PermissionDeniedError, match="delete_user"):
        await read_claude()
    oai.tool_calls = ("lookup_order",)  # allowed: the stream ends as usual
    async for _ in await client.chat.completions.create(
        model="gpt-4o-mini", messages=MSGS, stream=True
    ):
        pass


@pytest.mark.parametrize("stream", [False, True])
async def test_cached_input_is_charged_at_its_own_list_price(
    stream: bool,
    fence: TokenFence,
    make_client: Callable[[str], Any],
    oai: GuardProvider,
    ant: FakeAnthropic,
) -> None:
    oai.cached_tokens = 600  # of the 1,000 prompt tokens, at $0.075/M instead of $0.15/M
    client = fence.guard(make_client("AsyncOpenAI"), tenant="acme")
    answer = await client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=stream)
    if stream:
        async for _ in answer:
            pass
    chat = (400 * Decimal("0.15") + 600 * Decimal("0.075") + 200 * Decimal("0.60")) / 10**6
    assert await spent(fence) == (chat, 0)
    ant.cache = (3000, 500, 100)  # reads $0.10/M, 5-minute writes $1.25/M, 1-hour $2/M
    claude = fence.guard(make_client("AsyncAnthropic"), tenant="acme")
    if stream:
        async with claude.messages.stream(
            model="claude-haiku-4-5", max_tokens=300, messages=MSGS
        ) as events:
            await events.get_final_message()
    else:
        await claude.messages.create(model="claude-haiku-4-5", max_tokens=300, messages=MSGS)
    cached = 3000 * Decimal("0.10") + 500 * Decimal("1.25") + 100 * Decimal(2)
    message = (1000 * Decimal(1) + cached + 200 * Decimal(5)) / 10**6
    assert await spent(fence) == (chat + message, 0)


async def test_feature_shares_apply(
    make_fence: Callable[..., TokenFence], make_client: Callable[[str], Any], oai: GuardProvider
) -> None:
    plan = Plan("capped", [Limit("1d", max_cost="1")], features={"chat": 1.0}, feature_mode="cap")
    fence = make_fence(plans=[plan], default_plan="capped")
    client = fence.guard(make_client("AsyncOpenAI"))
    async with tenant_scope("acme", feature="chat"):
        await client.with_options().embeddings.create(model="text-embedding-3-small", input="x")
    async with tenant_scope("acme", feature="search"):
        with pytest.raises(BudgetExceeded) as info:
            await client.embeddings.create(model="text-embedding-3-small", input="x")
    assert (info.value.feature, info.value.reason) == ("search", "share")  # chat owns it all
    assert oai.calls == 1


async def test_an_azure_deployment_is_priced_by_its_name(
    make_fence: Callable[..., TokenFence], make_client: Callable[[str], Any], oai: GuardProvider
) -> None:
    fence = make_fence(
        plans=[Plan("any", [Limit("1d", max_cost="1")])],
        default_plan="any",
        prices={"support-bot": ModelPrice.per_million("2.50", "10", max_output_tokens=16384)},
    )
    client = fence.guard(make_client("AsyncAzureOpenAI"), tenant="acme")
    await client.chat.completions.create(model="support-bot", messages=MSGS, max_tokens=50)
    assert await spent(fence) == ((1000 * Decimal("2.5") + 200 * Decimal(10)) / 1_000_000, 0)


async def test_an_azure_client_made_for_one_deployment_is_that_deployment(
    fence: TokenFence,
    make_fence: Callable[..., TokenFence],
    openai_server: tuple[GuardProvider, str],
    oai: GuardProvider,
) -> None:
    pinned = openai.AsyncAzureOpenAI(
        api_key="k",
        api_version="2024-10-21",
        azure_endpoint=openai_server[1],
        azure_deployment="gpt-4o",
        max_retries=0,
    )
    try:
        client = fence.guard(pinned, tenant="acme")
        with pytest.raises(ModelNotAllowed, match="'gpt-4o'"):  # the body's model does not matter
            await client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
        assert oai.calls == 0
        fence = make_fence(plans=[Plan("any", [Limit("1d", max_cost="1")])], default_plan="any")
        client = fence.guard(pinned, tenant="acme")
        await client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, max_tokens=50)
        gpt_4o = (1000 * Decimal("2.5") + 200 * Decimal(10)) / 1_000_000
        assert await spent(fence) == (gpt_4o, 0)
    finally:
        await pinned.close()


async def test_paid_calls_the_guard_cannot_bound_are_refused(
    fence: TokenFence, make_client: Callable[[str], Any], oai: GuardProvider, ant: FakeAnthropic
) -> None:
    client = fence.guard(make_client("AsyncOpenAI"), tenant="acme")
    with pytest.raises(CallNotFenced) as info:
        await client.batches.create(
            completion_window="24h", endpoint="/v1/chat/completions", input_file_id="file-1"
        )
    assert isinstance(info.value, openai.PermissionDeniedError)
    assert info.value.to_dict()["error"] == "ai_policy_denied"
    with pytest.raises(CallNotFenced):
        await client.post("/some/new/paid/endpoint", cast_to=object, body={"model": "x"})
    with pytest.raises(CallNotFenced):
        await client.fine_tuning.jobs.with_raw_response.create(
            model="gpt-4o-mini", training_file="f"
        )
    claude = fence.guard(make_client("Anthropic"), tenant="acme")
    with pytest.raises(CallNotFenced):
        await anyio.to_thread.run_sync(
            functools.partial(claude.messages.batches.create, requests=[])
        )
    assert (oai.calls, ant.calls) == (0, 0)
    assert await spent(fence) == (0, 0)


async def test_a_realtime_socket_is_refused(
    fence: TokenFence, make_client: Callable[[str], Any]
) -> None:
    for kind in ("AsyncOpenAI", "AsyncAzureOpenAI"):
        client = fence.guard(make_client(kind), tenant="acme")
        with pytest.raises(CallNotFenced, match="realtime"):
            async with client.realtime.connect(model="gpt-realtime"):
                pass
    client = fence.guard(make_client("AsyncOpenAI"), tenant="acme")
    for manager in (
        client.beta.realtime.connect(model="gpt-realtime"),
        client.responses.connect(),
        client.realtime.translations.connect(model="gpt-realtime-translate"),
    ):
        with pytest.raises(CallNotFenced, match="realtime"):
            async with manager:
                pass
    sync = fence.guard(make_client("OpenAI"), tenant="acme")

    def connect() -> None:
        with sync.realtime.connect(model="gpt-realtime"):
            pass

    with pytest.raises(CallNotFenced):
        await anyio.to_thread.run_sync(connect)


async def test_a_stream_read_whole_by_a_raw_post_is_charged_its_usage(
    fence: TokenFence, make_client: Callable[[str], Any], oai: GuardProvider
) -> None:
    client = fence.guard(make_client("AsyncOpenAI"), tenant="acme")
    body = {"model": "gpt-4o-mini", "messages": MSGS, "stream": True, "max_tokens": 300}
    raw = await client.post("/chat/completions", cast_to=httpx2.Response, body=body)
    assert raw.text.rstrip().endswith("data: [DONE]")
    assert oai.requests[0]["stream_options"] == {"include_usage": True}
    assert await spent(fence) == (CHAT, 0)


async def test_free_calls_pass_without_a_tenant(
    fence: TokenFence, make_client: Callable[[str], Any], ant: FakeAnthropic
) -> None:
    claude = fence.guard(make_client("AsyncAnthropic"))
    counted = await claude.messages.count_tokens(model="claude-haiku-4-5", messages=MSGS)
    assert counted.input_tokens == 1000
    client = fence.guard(make_client("AsyncOpenAI"))
    with pytest.raises(openai.NotFoundError):  # sent: the loopback server has no such route
        await client.models.list()


async def test_every_derived_client_is_guarded_and_a_stateless_copy_refuses(
    fence: TokenFence, make_client: Callable[[str], Any], oai: GuardProvider
) -> None:
    original = make_client("AsyncOpenAI")
    client = fence.guard(original, tenant="acme")
    assert isinstance(client, openai.AsyncOpenAI)
    derived = [
        client.with_options(timeout=9),
        client.copy(max_retries=0),
        client.with_options().copy(),
        client.with_raw_response,
        client.chat,
        client.with_streaming_response,
    ]
    for each in derived[:3]:
        assert type(each) is type(client)
    await fence.kill("acme")
    for each in derived[:3]:
        with pytest.raises(openai.PermissionDeniedError):
            await each.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    with pytest.raises(openai.PermissionDeniedError):
        await client.with_raw_response.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    with pytest.raises(RuntimeError, match="without its fence state"):
        await openai.AsyncOpenAI.copy(client).chat.completions.create(
            model="gpt-4o-mini", messages=MSGS
        )
    with pytest.raises(RuntimeError, match="without its fence state"):
        await type(client)(api_key="k", base_url="http://127.0.0.1:9").embeddings.create(
            model="text-embedding-3-small", input="x"
        )
    assert oai.calls == 0
    await original.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert oai.calls == 1  # the client given to guard() stays as it was
    assert await spent(fence) == (0, 0)


def test_other_clients_are_refused(fence: TokenFence) -> None:
    with pytest.raises(TypeError, match="guard\\(\\) fences"):
        fence.guard(object())
    with pytest.raises(TypeError, match="Anthropic, AsyncAnthropic"):
        fence.guard(
            anthropic.AnthropicBedrock(
                aws_region="us-east-1", aws_access_key="a", aws_secret_key="b"
            )
        )


def test_the_library_imports_no_sdk_until_a_client_is_guarded() -> None:
    code = (
        "import sys, tokenfence_asgi; from tokenfence_asgi import TokenFence, CallNotFenced; "
        "print(sorted(m for m in ('openai', 'anthropic', 'litellm', 'httpx2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_missing_sdk_module_names_the_extra(
    fence: TokenFence, make_client: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client("AsyncAnthropic")
    monkeypatch.setitem(sys.modules, "tokenfence_asgi.guard.anthropic", None)
    with pytest.raises(ConfigError, match=r"pip install 'tokenfence-asgi\[anthropic\]'"):
        fence.guard(client)
