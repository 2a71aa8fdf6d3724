"""``TokenFenceCallback``: the LiteLLM hooks that reserve, change and charge a tenant's calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, cast

import litellm
import structlog
from litellm.integrations.custom_guardrail import CustomGuardrail
from litellm.types.utils import CallTypes

from tokenfence_asgi.calls.planner import CallPlanner, CallRequest, DeniedTools, tool_action
from tokenfence_asgi.calls.shapes import check_extra_body, with_max_uses
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.engine.portal import Portal
from tokenfence_asgi.errors import ApprovalRequired, ConfigError, TokenFenceError
from tokenfence_asgi.litellm._book import Unscoped
from tokenfence_asgi.litellm._errors import for_litellm, is_router_call
from tokenfence_asgi.litellm._state import (
    APPROVAL_KEY,
    RESERVATION_KEY,
    STREAMS,
    Call,
    called_tools,
    mapping,
    observe_stream,
    tokens,
)
from tokenfence_asgi.litellm._sync import SyncCalls
from tokenfence_asgi.litellm.calls import (
    kind_of,
    output_limit_keys,
    sanitized,
    shape_of,
    trusted_deployment_id,
)
from tokenfence_asgi.money import MoneyInput
from tokenfence_asgi.pricing.book import ModelPrice, PriceBook
from tokenfence_asgi.pricing.call import CallKind

__all__ = ["TokenFenceCallback"]

log = structlog.get_logger("tokenfence_asgi")


class TokenFenceCallback(SyncCalls, CustomGuardrail):
    """Fences LiteLLM calls: ``litellm.callbacks = [TokenFenceCallback(fence)]``.

    Every paid async call LiteLLM makes (``acompletion``, ``aresponses``, ``atext_completion``,
    ``aembedding``, ``aimage_generation``, ``atranscription``, ``aspeech``, ``arerank``; plain or
    through a ``Router``; streamed or not) is described to the ``CallPlanner`` (see
    ``tokenfence_asgi.calls.planner``): the plan's model allow-list and downgrade chain, input
    limits and tool-call policy are applied, and the call's worst case is reserved in one round trip
    on the first allowed model that fits. The call then uses that model, with the output limit the
    hold covers written into it when it set none (``default_output_tokens`` of the plan or the
    fence). After it, LiteLLM's cost of the response is committed with the token counts; a failure
    releases the hold; a stream is charged when it ends, and a stream the caller abandons is charged
    its input plus the output streamed so far. A call type that cannot be bounded from its arguments
    (an image, a transcription) is refused unless its model has a ``ModelPrice.flat`` price.

    The tenant and feature come from the current request or ``tenant_scope``; outside them,
    from call ``metadata`` ``tenant_id`` / ``feature``. Inside a request, metadata can change
    neither (client JSON passed on to LiteLLM cannot move a charge) unless
    ``trust_metadata=True``. A call's own price arguments (``input_cost_per_token=0``, ...) are
    removed before it is sent, so neither the hold nor LiteLLM's cost can be lowered by them;
    the prices of a Router deployment the app configured still count. ``trust_call_prices=True``
    keeps them, for apps that set them on purpose.

    Tool-call policy (the fence's ``policy`` merged with the plan's): an offered tool the policy
    denies is removed from ``tools`` (``denied_tools="refuse"``: the call is refused with
    ``PolicyDenied``); a ``tool_choice`` forcing a denied tool is refused. The tool calls of a
    (non-streamed) chat response are checked after the call is charged: a denied one raises
    ``PolicyDenied``, one needing approval raises ``ApprovalRequired`` with a pending approval
    id (and the response as ``.model_response``); once an operator approves it
    (``fence.approve(id)``), the call may be replayed once with
    ``metadata={"tokenfence_approval_id": id}``. Streamed responses' tool calls are not checked
    here: check them with ``fence.check_tool`` before running a tool.

    Refusals raise ``BudgetExceeded``, ``RequestLimitExceeded``, ``ModelNotAllowed``,
    ``InputTooLong``, ``TenantDisabled``, ``StoreUnavailable``, ``InvalidCall`` or
    ``TenantRequired`` (a call outside any tenant: refused unless ``unscoped="allow"``, which
    lets it through unfenced); a model nothing prices raises ``ConfigError``. ``prices``,
    ``default_price`` and ``default_output_tokens`` are as in ``PriceBook`` (without them the
    callback prices calls with the fence's own ``fence.prices``). A sync
    ``litellm.completion`` cannot be refused by any LiteLLM hook: it is charged after the fact
    (``fence.charge``) and counted in ``counters.charged_unfenced``; use ``completion`` below
    for a fenced sync call. Creating the callback loads LiteLLM's tokenizer (about half a
    second, once per process).
    """

    def __init__(
        self,
        fence: TokenFence,
        *,
        unscoped: Unscoped = "refuse",
        prices: Mapping[str, ModelPrice] | PriceBook | None = None,
        default_price: ModelPrice | None = None,
        default_output_tokens: int | None = None,
        denied_tools: DeniedTools = "remove",
        tool_action: Callable[[str], str] = tool_action,
        check_tool_calls: bool = True,
        trust_metadata: bool = False,
        trust_metadata_tenant: bool = False,
        trust_call_prices: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(fence, TokenFence):
            raise ConfigError(f"fence must be a TokenFence, got {type(fence).__name__}")
        if unscoped not in ("refuse", "allow"):
            raise ConfigError(f"unscoped must be 'refuse' or 'allow', got {unscoped!r}")
        if denied_tools not in ("remove", "refuse"):
            raise ConfigError(f"denied_tools must be 'remove' or 'refuse', got {denied_tools!r}")
        if not callable(tool_action):
            raise ConfigError("tool_action must be a callable mapping a tool name to an action")
        for name, flag in (
            ("check_tool_calls", check_tool_calls),
            ("trust_metadata", trust_metadata),
            ("trust_metadata_tenant", trust_metadata_tenant),
            ("trust_call_prices", trust_call_prices),
        ):
            if not isinstance(flag, bool):
                raise ConfigError(f"{name} must be True or False, got {flag!r}")
        self._check_tool_calls = check_tool_calls
        self._trust_metadata = trust_metadata or trust_metadata_tenant
        self._trust_call_prices = trust_call_prices
        if isinstance(prices, PriceBook):
            if default_price is not None or default_output_tokens is not None:
                raise ConfigError("give default_price and default_output_tokens to the PriceBook")
            self.prices = prices
        elif prices is None and default_price is None and default_output_tokens is None:
            self.prices = fence.prices  # the fence's own price book
        else:
            self.prices = PriceBook(
                prices, default_price=default_price, default_output_tokens=default_output_tokens
            )
        self.fence = fence
        self.planner = CallPlanner(
            fence, self.prices, denied_tools=denied_tools, tool_action=tool_action
        )
        self._unscoped = unscoped
        self._calls: dict[str, Call] = {}
        self._by_call_id: dict[str, Call] = {}
        self._sync_owners: dict[
            str, tuple[str, str | None, str | None, asyncio.AbstractEventLoop | None]
        ] = {}
        self._portal = Portal("await litellm.acompletion(...) instead")
        if observe_stream not in litellm.post_call_rules:
            litellm.post_call_rules.append(observe_stream)
        self.prices.warm_up()

    async def async_pre_call_deployment_hook(
        self, kwargs: dict[str, object], call_type: CallTypes | None
    ) -> dict[str, object] | None:
        """Reserve the call's worst case and make it use what was reserved (LiteLLM hook)."""
        kind = kind_of("acompletion" if call_type is None else call_type.value)
        if kind is None:
            return None
        try:
            return await self._fence_call(kwargs, kind)
        except TokenFenceError as exc:
            raise for_litellm(exc, router=is_router_call(kwargs)) from None

    async def _fence_call(self, kwargs: dict[str, object], kind: CallKind) -> dict[str, object]:
        metadata = mapping(kwargs.get("metadata"))
        tenant, feature, ctx = self._who(metadata)
        if tenant is None:
            return kwargs
        check_extra_body(kwargs)
        logging_obj = kwargs.get("litellm_logging_obj")
        positional = "model" not in kwargs  # then it cannot be changed (see the module doc)
        model = getattr(logging_obj, "model", None) if positional else kwargs["model"]
        if not isinstance(model, str):
            raise ConfigError("cannot tell the model of this LiteLLM call")
        shape = shape_of(kind, kwargs, getattr(logging_obj, "messages", None))
        if kind == "chat" and not shape.messages:
            raise ConfigError("cannot tell the messages of this LiteLLM chat call")
        registered = cast("Mapping[str, Any]", litellm.model_cost)
        deployment = None
        if self._trust_call_prices:
            inp, out = kwargs.get("input_cost_per_token"), kwargs.get("output_cost_per_token")
            if inp is not None and out is not None:
                deployment = ModelPrice(cast("MoneyInput", inp), cast("MoneyInput", out))
        else:
            deployment_id = trusted_deployment_id(kwargs, registered)
            if deployment_id is not None:
                deployment = self.prices.mapped_entry(deployment_id)
        request = CallRequest(
            model,
            shape,
            fixed_model=positional,
            tool_choice=kwargs.get("tool_choice"),
            deployment=deployment,
        )
        planned = await self.planner.reserve(request, tenant=tenant, feature=feature)
        changed = kwargs if self._trust_call_prices else sanitized(kwargs, registered)
        changed = dict(changed)
        if planned.model != model:
            changed["model"] = planned.model
        if planned.write_limit and planned.output_limit is not None:
            keys = output_limit_keys(kind)
            present = [key for key in keys if changed.get(key) is not None] or list(keys[:1])
            for key in present:  # every limit the provider might honour covers only the hold
                changed[key] = planned.output_limit
        if planned.tool_calls is not None and kind == "responses":
            changed["max_tool_calls"] = planned.tool_calls  # the hosted tool calls held
        stream = bool(kwargs.get("stream"))
        if stream and kind in ("chat", "text"):
            options = mapping(kwargs.get("stream_options"))
            changed["stream_options"] = {**options, "include_usage": True}
        if planned.tools_changed:
            if planned.tools:
                changed["tools"] = list(planned.tools)
            else:  # nothing left to offer: a tool_choice would be rejected by the provider
                changed.pop("tools", None)
                changed.pop("tool_choice", None)
            log.info(
                "tools_removed",
                tenant=tenant,
                reservation=planned.reservation.id,
                kept=len(planned.tools or ()),
                offered=len(shape.tools or ()),
            )
        if planned.tool_calls is not None and kind != "responses":
            offered = changed.get("tools")  # the one server tool without max_uses
            if isinstance(offered, list):
                changed["tools"] = with_max_uses(offered, planned.tool_calls)
        changed["metadata"] = {
            **mapping(changed.get("metadata")),
            RESERVATION_KEY: planned.reservation.id,
        }
        call_id = kwargs.get("litellm_call_id")
        call = Call(
            planned.reservation,
            planned.estimate,
            stream,
            ctx,
            logging_obj,
            asyncio.current_task(),
            call_id if isinstance(call_id, str) else None,
        )
        self._register(call)
        if stream and kind in ("chat", "text"):  # LiteLLM runs post-call rules per chunk
            call.observed = True
            STREAMS.set((*(c for c in STREAMS.get() if c.state == "open"), call))
        self._portal.app_loop = asyncio.get_running_loop()
        return changed

    async def async_post_call_success_deployment_hook(
        self, request_data: dict[str, Any], response: Any, call_type: CallTypes | None
    ) -> Any:
        """Keep the response, so a call whose success event never comes can still be charged;
        check the tool calls it makes against the policy (LiteLLM hook; see the class)."""
        call = self._find(request_data)
        if call is not None:
            call.response = response
            if self._check_tool_calls and not call.stream:
                try:
                    await self._check_calls(call, request_data, response)
                except TokenFenceError as exc:
                    raise for_litellm(exc, router=is_router_call(request_data)) from None
        return None

    async def async_post_call_streaming_deployment_hook(
        self, request_data: dict[str, Any], response_chunk: Any, call_type: CallTypes | None
    ) -> Any:
        """Note that a stream reached its last chunk, so that its success event is awaited at
        the end of the request rather than the stream charged as abandoned (LiteLLM hook)."""
        call = self._find(request_data)
        if call is not None:
            call.finished = True
        return None

    async def _check_calls(
        self, call: Call, request_data: Mapping[str, object], response: object
    ) -> None:
        names = called_tools(response)
        if not names:
            return
        await self._charge(call)  # the call was made: its cost is owed whatever happens next
        approval = mapping(request_data.get("metadata")).get(APPROVAL_KEY)
        try:
            await self.planner.check_tool_calls(
                call.reservation, names, approval_id=approval if isinstance(approval, str) else None
            )
        except ApprovalRequired as exc:
            exc.model_response = response
            raise

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Commit LiteLLM's cost of the response with its token counts (LiteLLM event)."""
        call = self._claim(kwargs)
        if call is not None:
            if call.response is None and not call.stream:
                call.response = response_obj
            input_tokens, output_tokens = tokens(kwargs, response_obj)
            cost = self._cost(
                call, kwargs.get("response_cost"), input_tokens, output_tokens, response_obj
            )
            await self._settle_with(call, cost, input_tokens, output_tokens)

    async def async_post_call_failure_deployment_hook(
        self,
        request_data: Mapping[str, object],
        exception: Exception,
        call_type: CallTypes | None,
        fallback_depth: int | None = None,
    ) -> None:
        """Release the hold of a failed attempt before the caller sees the error (LiteLLM hook)."""
        call = self._claim(request_data)
        if call is not None:
            await self._fail(call, request_data)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Release the hold, or commit the partial cost of a stream that broke (LiteLLM event)."""
        call = self._claim(kwargs)
        if call is not None:
            await self._fail(call, kwargs)
