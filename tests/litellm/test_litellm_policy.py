"""The tool-call policy and input guards in the LiteLLM callback (mock responses, no network).

Offered tools the policy denies are removed (or the call refused) before any reservation; the
tool calls of a response are checked after the call is charged: denied -> ``PolicyDenied``,
approval required -> ``ApprovalRequired`` with a single-use pending approval.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from litellm.types.utils import CallTypes

from tests.litellm.litellm_support import CALLBACK_LISTS
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.context import tenant_scope
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import (
    ApprovalRequired,
    ConfigError,
    InputTooLong,
    PolicyDenied,
)
from tokenfence_asgi.litellm import APPROVAL_KEY, TokenFenceCallback
from tokenfence_asgi.policy import Policy
from tokenfence_asgi.web.problem import http_status

pytestmark = pytest.mark.filterwarnings(
    "ignore:Items? .* on TypedDict class .* using the `ReadOnly` qualifier:UserWarning"
)

MSGS = [{"role": "user", "content": "Tidy up the database."}]
POLICY = (
    Policy(default="deny")
    .allow("tool:search_*", "tool:read_*")
    .deny("tool:drop_*")
    .require_approval("tool:send_email")
)
OPEN = Plan("open", [Limit("1d", max_cost="10")], policy=POLICY)
TOKENS = Plan("tokens", [Limit("1d", max_cost="10")], max_input_tokens=20)
PLANS = [OPEN, TOKENS]


def tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


def calls(*names: str) -> list[dict[str, Any]]:
    return [
        {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": "{}"}}
        for n, name in enumerate(names)
    ]


@pytest.fixture
def fence(make_fence: Callable[..., TokenFence]) -> TokenFence:
    return make_fence(plans=PLANS, default_plan="open")


@pytest.fixture
def callbacks() -> Iterator[Callable[..., TokenFenceCallback]]:
    saved = {name: list(getattr(litellm, name)) for name in CALLBACK_LISTS}
    made: list[TokenFenceCallback] = []

    def install(fence: TokenFence, **options: Any) -> TokenFenceCallback:
        callback = TokenFenceCallback(fence, **options)
        litellm.callbacks = [callback]
        made.append(callback)
        return callback

    try:
        yield install
    finally:
        for callback in made:
            callback.close()
        for name, value in saved.items():
            setattr(litellm, name, value)


async def used(fence: TokenFence, tenant: str = "acme") -> tuple[Decimal, Decimal]:
    """Spend and holds of the tenant's day window, once the last success event has landed."""
    for _ in range(200):
        window = (await fence.status(tenant)).windows[0]
        if window.held == 0:
            break
        await asyncio.sleep(0.005)
    return window.used, window.held


async def test_denied_tools_are_removed_before_the_call(
    fence: TokenFence, callbacks: Callable[..., TokenFenceCallback]
) -> None:
    cb = callbacks(fence)
    offered = [tool("search_docs"), tool("drop_table"), tool("send_email"), tool("unknown")]
    kwargs: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": MSGS,
        "tools": offered,
        "tool_choice": "auto",
        "metadata": {"tenant_id": "acme"},
    }
    changed = await cb.async_pre_call_deployment_hook(kwargs, CallTypes.acompletion)
    assert changed is not None
    names = [t["function"]["name"] for t in changed["tools"]]
    assert names == ["search_docs", "send_email"]  # deny and the default deny removed
    assert changed["tool_choice"] == "auto"
    assert kwargs["tools"] == offered  # the caller's list is not mutated

    only_denied = {**kwargs, "tools": [tool("drop_table")]}
    changed = await cb.async_pre_call_deployment_hook(only_denied, CallTypes.acompletion)
    assert changed is not None
    assert "tools" not in changed
    assert "tool_choice" not in changed


async def test_refuse_mode_and_forced_choice_refuse_before_any_reservation(
    fence: TokenFence, callbacks: Callable[..., TokenFenceCallback]
) -> None:
    cb = callbacks(fence, denied_tools="refuse")
    with pytest.raises(PolicyDenied) as refused:
        await litellm.acompletion(
            model="gpt-4o-mini",
            messages=MSGS,
            tools=[tool("search_docs"), tool("drop_table")],
            metadata={"tenant_id": "acme"},
            mock_response="ok",
        )
    assert refused.value.action == "tool:drop_table"
    assert http_status(refused.value) == 403
    assert await used(fence) == (0, 0)

    cb = callbacks(fence)  # remove mode: a tool_choice forcing a denied tool is still refused
    forced = {"type": "function", "function": {"name": "drop_table"}}
    with pytest.raises(PolicyDenied, match="tool:drop_table"):
        await litellm.acompletion(
            model="gpt-4o-mini",
            messages=MSGS,
            tools=[tool("drop_table")],
            tool_choice=forced,
            metadata={"tenant_id": "acme"},
            mock_response="ok",
        )
    assert await used(fence) == (0, 0)
    assert cb.fence is fence


async def test_a_denied_tool_call_in_the_response_raises_after_charging(
    fence: TokenFence, callbacks: Callable[..., TokenFenceCallback]
) -> None:
    callbacks(fence)
    allowed = await litellm.acompletion(
        model="gpt-4o-mini",
        messages=MSGS,
        tools=[tool("search_docs")],
        metadata={"tenant_id": "acme"},
        mock_response="ok",
        mock_tool_calls=calls("search_docs"),
    )
    assert allowed.choices[0].message.tool_calls[0].function.name == "search_docs"
    first, _ = await used(fence)
    assert first > 0

    with pytest.raises(PolicyDenied) as denied:  # the model called a tool it was not offered
        await litellm.acompletion(
            model="gpt-4o-mini",
            messages=MSGS,
            tools=[tool("search_docs")],
            metadata={"tenant_id": "acme"},
            mock_response="ok",
            mock_tool_calls=calls("search_docs", "drop_users"),
        )
    assert denied.value.action == "tool:drop_users"
    assert isinstance(denied.value, litellm.BudgetExceededError)  # final for a Router
    spent, held = await used(fence)
    assert held == 0
    assert spent == 2 * first  # the denied call was made, so it was charged, once


async def test_approval_is_required_then_single_use(
    fence: TokenFence, callbacks: Callable[..., TokenFenceCallback]
) -> None:
    callbacks(fence)
    request: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": MSGS,
        "tools": [tool("send_email")],
        "mock_response": "ok",
        "mock_tool_calls": calls("send_email"),
    }
    with pytest.raises(ApprovalRequired) as pending:
        await litellm.acompletion(**request, metadata={"tenant_id": "acme"})
    approval = pending.value.approval_id
    assert pending.value.action == "tool:send_email"
    assert pending.value.model_response is not None
    assert pending.value.to_dict()["approval_id"] == approval

    # Not yet approved: the replay is still pending (same id reported).
    with pytest.raises(ApprovalRequired) as still:
        await litellm.acompletion(**request, metadata={"tenant_id": "acme", APPROVAL_KEY: approval})
    assert still.value.approval_id == approval

    assert await fence.approve(approval)
    replayed = await litellm.acompletion(
        **request, metadata={"tenant_id": "acme", APPROVAL_KEY: approval}
    )
    assert replayed.choices[0].message.tool_calls[0].function.name == "send_email"
    with pytest.raises(ApprovalRequired) as again:  # used once: a new approval is needed
        await litellm.acompletion(**request, metadata={"tenant_id": "acme", APPROVAL_KEY: approval})
    assert again.value.approval_id != approval

    assert await fence.deny(again.value.approval_id)
    with pytest.raises(PolicyDenied):
        await litellm.acompletion(
            **request, metadata={"tenant_id": "acme", APPROVAL_KEY: again.value.approval_id}
        )
    spent, held = await used(fence)
    assert held == 0
    assert spent > 0


async def test_another_tenants_approval_is_not_accepted(
    fence: TokenFence, callbacks: Callable[..., TokenFenceCallback]
) -> None:
    callbacks(fence)
    request: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": MSGS,
        "mock_response": "ok",
        "mock_tool_calls": calls("send_email"),
    }
    with pytest.raises(ApprovalRequired) as pending:
        await litellm.acompletion(**request, metadata={"tenant_id": "acme"})
    assert await fence.approve(pending.value.approval_id)
    with pytest.raises(Exception, match="belongs to another tenant"):
        await litellm.acompletion(
            **request, metadata={"tenant_id": "globex", APPROVAL_KEY: pending.value.approval_id}
        )


async def test_max_input_tokens_refuses_before_any_reservation(
    fence: TokenFence, callbacks: Callable[..., TokenFenceCallback]
) -> None:
    callbacks(fence)
    await fence.set_plan("acme", "tokens")
    short = await litellm.acompletion(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        metadata={"tenant_id": "acme"},
        mock_response="ok",
    )
    assert short.choices[0].message.content == "ok"
    before = await used(fence)
    long = [{"role": "user", "content": "word " * 100}]
    with pytest.raises(InputTooLong) as refused:
        await litellm.acompletion(
            model="gpt-4o-mini", messages=long, metadata={"tenant_id": "acme"}, mock_response="ok"
        )
    error = refused.value
    assert http_status(error) == 413
    assert (error.limit, error.unit) == (20, "tokens")
    assert error.length is not None
    assert error.length > 20
    assert error.to_dict()["limit"] == 20
    assert "allows 20" in error.message
    assert await used(fence) == before


async def test_tool_calls_are_checked_in_a_tenant_scope_and_can_be_switched_off(
    fence: TokenFence,
    make_fence: Callable[..., TokenFence],
    callbacks: Callable[..., TokenFenceCallback],
) -> None:
    callbacks(fence, check_tool_calls=False)
    async with tenant_scope("acme", feature="agent"):
        response = await litellm.acompletion(
            model="gpt-4o-mini",
            messages=MSGS,
            mock_response="ok",
            mock_tool_calls=calls("drop_users"),
        )
    assert response.choices[0].message.tool_calls[0].function.name == "drop_users"

    # A fence-wide policy, merged with the plan's; tool names mapped to namespaced actions.
    strict = make_fence(
        plans=[Plan("p", [Limit("1d", max_cost="5")])],
        default_plan="p",
        policy=Policy().deny("tool:db:*"),
    )
    callbacks(strict, tool_action=lambda name: "tool:" + name.replace("__", ":"))
    with pytest.raises(PolicyDenied, match="tool:db:delete"):
        async with tenant_scope("acme", feature="agent"):
            await litellm.acompletion(
                model="gpt-4o-mini",
                messages=MSGS,
                mock_response="ok",
                mock_tool_calls=calls("db__delete"),
            )
    async with tenant_scope("acme", feature="agent"):
        fine = await litellm.acompletion(
            model="gpt-4o-mini",
            messages=MSGS,
            mock_response="ok",
            mock_tool_calls=calls("web__search"),
        )
    assert fine.choices[0].message.tool_calls[0].function.name == "web__search"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"denied_tools": "drop"}, "denied_tools"),
        ({"tool_action": "tool:"}, "tool_action"),
        ({"check_tool_calls": "yes"}, "check_tool_calls"),
    ],
)
def test_bad_options(fence: TokenFence, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TokenFenceCallback(fence, **options)


@pytest.mark.parametrize(("trust", "charged"), [(False, "acme"), (True, "globex")])
async def test_metadata_names_another_tenant_only_when_trusted(
    fence: TokenFence,
    callbacks: Callable[..., TokenFenceCallback],
    trust: bool,
    charged: str,
) -> None:
    callbacks(fence, trust_metadata_tenant=trust)
    async with tenant_scope("acme", feature="chat"):
        await litellm.acompletion(
            model="gpt-4o-mini", messages=MSGS, mock_response="ok", metadata={"tenant_id": "globex"}
        )
    other = "globex" if charged == "acme" else "acme"
    spent, _ = await used(fence, charged)
    assert spent > 0
    assert await used(fence, other) == (0, 0)
