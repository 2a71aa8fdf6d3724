"""``TokenFenceCallback``: LiteLLM chat calls made for a tenant are reserved, capped and charged.

``litellm.callbacks = [TokenFenceCallback(fence)]`` fences every ``litellm.acompletion`` and
``Router.acompletion`` made inside a request, a ``tenant_scope``, or with
``metadata={"tenant_id": ..., "feature": ...}``. What LiteLLM 1.110.2 (the pinned release) offers
in SDK mode, measured, and what this module uses of it:

- ``async_pre_call_deployment_hook`` runs first in ``acompletion`` (and per Router attempt, on the
  chosen deployment): an exception raised there reaches the caller with its own type, before any
  provider call, and the kwargs it returns replace the call's. Here the estimate is reserved and
  the call is changed: the chosen (maybe cheaper) model, ``max_tokens`` when the call had none,
  ``stream_options.include_usage`` for streams. Exceptions in ``log_pre_api_call``,
  ``async_log_pre_api_call`` and ``async_pre_call_hook`` are swallowed: they cannot block.
- A model passed positionally (``acompletion("gpt-4o", msgs)``) is not in the hook's kwargs, and
  adding one fails with "multiple values for argument 'model'": such calls are reserved at the
  requested model's price and never downgraded.
- Refusals are raised as classes deriving from both our error and ``litellm.BudgetExceededError``:
  the caller catches ``BudgetExceeded`` (402 from the middleware), and the Router treats it as
  final. Inside a Router the instance's ``status_code`` is 422 (the class keeps 402), because
  the Router decides retries and deployment cooldowns by it: a 402, 401, 429 or 503 put the
  shared deployment in cooldown, denying every other tenant; a 403 was retried.
- ``async_log_success_event`` carries LiteLLM's cost of the response (``response_cost``); for a
  stream it fires once, after the last chunk. It runs after the caller has the response, so a
  commit may land after the request ended. Failures fire ``async_post_call_failure_deployment_hook``
  (per attempt, before the caller sees the error) and ``async_log_failure_event``.
- A stream the caller stops reading, or a call whose task is cancelled, fires no callback at all.
  ``settle`` (run when the request or scope ends) commits what such calls left open: the hold of
  a stream that had produced output (its length is not visible to a callback), nothing for a
  call that produced none.
- Sync ``litellm.completion`` runs no hook that can both block and change a call, so
  ``TokenFenceCallback.completion`` is the sync entry point (see there); a plain sync call made
  for a tenant goes through unfenced, logged as ``sync_completion_not_fenced``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, TypeVar, cast

import anyio
import anyio.from_thread
import structlog

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before LiteLLM is imported

import litellm
from litellm.exceptions import BudgetExceededError
from litellm.integrations.custom_guardrail import CustomGuardrail
from litellm.types.utils import CallTypes

from tokenfence_asgi.context import FenceContext, current_context
from tokenfence_asgi.engine import TokenFence
from tokenfence_asgi.errors import (
    ApprovalRequired,
    ConfigError,
    PolicyDenied,
    TenantRequired,
    TokenFenceError,
)
from tokenfence_asgi.litellm_calls import (
    kind_of,
    output_limit_keys,
    sanitized,
    shape_of,
    trusted_deployment_id,
)
from tokenfence_asgi.money import MoneyInput
from tokenfence_asgi.planner import CallPlanner, CallRequest, DeniedTools, tool_action
from tokenfence_asgi.policy import Decision, Policy
from tokenfence_asgi.pricing import CallKind, Estimate, ModelPrice, PriceBook
from tokenfence_asgi.results import Reservation

__all__ = ["TokenFenceCallback"]

log = structlog.get_logger("tokenfence_asgi")

T = TypeVar("T")
Unscoped = Literal["refuse", "allow"]

RESERVATION_KEY = "tokenfence_reservation_id"
"""The metadata key the callback adds to a fenced call: its reservation id."""

APPROVAL_KEY = "tokenfence_approval_id"
"""The metadata key of an approved ``ApprovalRequired``'s id, to replay the call once."""

_ROUTER_STATUS = 422  # neither retried nor a cooldown reason for the Router (measured)
_GRACE_YIELDS = 50  # a finished call's success event is scheduled a few loop steps later
_WAIT_S = 5.0
_FORGET_AFTER_S = 3600.0
_MAX_SYNC_OWNERS = 10_000
_SYNC_CALLS: ContextVar[list[_Call] | None] = ContextVar("tokenfence_sync_calls", default=None)
_STREAMS: ContextVar[tuple[_Call, ...]] = ContextVar("tokenfence_streams", default=())
"""The fenced chat streams opened on this task, which ``_observe_stream`` keeps count of."""


_DERIVED: dict[type[TokenFenceError], type[TokenFenceError]] = {}  # a memo of classes, like a cache


def _litellm_class(cls: type[TokenFenceError]) -> type[TokenFenceError]:
    derived = _DERIVED.get(cls)
    if derived is None:
        # Same name and module as ours, so tracebacks and `except BudgetExceeded` read as usual.
        namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                     "__doc__": cls.__doc__}  # fmt: skip
        derived = cast("type[TokenFenceError]", type(cls.__name__, (cls, BudgetExceededError),
                                                      namespace))  # fmt: skip
        _DERIVED[cls] = derived
    return derived


def _for_litellm(exc: TokenFenceError, *, router: bool) -> TokenFenceError:
    """``exc`` as an instance of a class deriving from it and ``litellm.BudgetExceededError``."""
    cls = _litellm_class(type(exc))
    error = cls.__new__(cls)
    BudgetExceededError.__init__(
        cast("BudgetExceededError", error),
        current_cost=float(getattr(exc, "total_cost", 0)),
        max_budget=float(getattr(exc, "max_cost", 0)),
        message=exc.message,
    )
    error.__dict__.update(exc.__dict__)
    if router:
        error.__dict__["status_code"] = _ROUTER_STATUS
    else:  # LiteLLM's __init__ set one; ours is the class's (402, 429, ...)
        error.__dict__.pop("status_code", None)
    return error.with_traceback(exc.__traceback__)


def _is_router_call(kwargs: Mapping[str, object]) -> bool:
    return any(
        "model_group" in _mapping(kwargs.get(key)) for key in ("metadata", "litellm_metadata")
    )


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _reservation_id(kwargs: Mapping[str, object]) -> object:
    rid = _mapping(kwargs.get("metadata")).get(RESERVATION_KEY)
    if rid is None:  # the events carry the call's metadata under litellm_params
        rid = _mapping(_mapping(kwargs.get("litellm_params")).get("metadata")).get(RESERVATION_KEY)
    return rid


def _called_tools(response: object) -> list[str]:
    """The tools a chat response calls (``tool_calls``, and the legacy ``function_call``)."""
    names: list[str] = []
    for choice in getattr(response, "choices", None) or ():
        message = getattr(choice, "message", None)
        for call in getattr(message, "tool_calls", None) or ():
            names.append(str(getattr(getattr(call, "function", None), "name", "")))
        function_call = getattr(message, "function_call", None)
        if function_call is not None:
            names.append(str(getattr(function_call, "name", "")))
    return names


def _tokens(kwargs: Mapping[str, object], response: object) -> tuple[int, int]:
    """Input and output tokens of a finished call, from LiteLLM's payload or the response."""
    payload = _mapping(kwargs.get("standard_logging_object"))
    usage = getattr(response, "usage", None)
    counts = []
    for key, alias in (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens")):
        value = payload.get(key, getattr(usage, key, getattr(usage, alias, 0)))
        counts.append(value if isinstance(value, int) and value >= 0 else 0)
    return counts[0], counts[1]


def _caller_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop of a sync caller: its own thread's, or the loop whose worker thread this
    is (a sync endpoint of a FastAPI or Starlette app); ``None`` for a plain thread."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    try:
        return anyio.from_thread.run_sync(asyncio.get_running_loop)
    except (anyio.NoEventLoopError, RuntimeError):
        return None


def _observe_stream(text: str) -> bool:
    """A LiteLLM post-call rule: runs on the caller's task for every chunk of a chat stream,
    with the text streamed so far; records it on the task's open fenced streams."""
    for call in _STREAMS.get():
        if call.state == "open" and len(text) >= len(call.streamed_text):
            call.streamed_text = text
            call.chunks += 1
    return True


@dataclass(slots=True, eq=False)
class _Call:
    """One fenced call, from its reservation to its settlement (internal, mutable)."""

    reservation: Reservation
    estimate: Estimate
    stream: bool
    ctx: FenceContext | None
    logging_obj: object  # LiteLLM's; tells whether a stream produced anything
    task: asyncio.Task[Any] | None
    call_id: str | None = None
    created: float = field(default_factory=time.monotonic)
    response: object = None
    streamed_text: str = ""
    chunks: int = 0
    observed: bool = False  # a stream whose chunks ``_observe_stream`` counts
    state: Literal["open", "settling", "done"] = "open"
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def produced(self) -> bool:
        return (
            self.response is not None
            or self.chunks > 0
            or (
                self.stream and getattr(self.logging_obj, "completion_start_time", None) is not None
            )
        )


class TokenFenceCallback(CustomGuardrail):
    """Fences LiteLLM calls: ``litellm.callbacks = [TokenFenceCallback(fence)]``.

    Every paid async call LiteLLM makes (``acompletion``, ``aresponses``, ``atext_completion``,
    ``aembedding``, ``aimage_generation``, ``atranscription``, ``aspeech``, ``arerank``; plain
    or through a ``Router``; streamed or not) is described to the ``CallPlanner`` (see
    ``tokenfence_asgi.planner``): the plan's model allow-list and downgrade chain, input limits
    and tool-call policy are applied, and the call's worst case is reserved in one round trip on
    the first allowed model that fits. The call then uses that model, with the output limit the
    hold covers written into it when it set none (``default_output_tokens`` of the plan or the
    fence). After it, LiteLLM's cost of the response is committed with the token counts; a
    failure releases the hold; a stream is charged when it ends, and a stream the caller
    abandons is charged its input plus the output streamed so far. A call type that cannot be
    bounded from its arguments (an image, a transcription) is refused unless its model has a
    ``ModelPrice.flat`` price.

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
        self._calls: dict[str, _Call] = {}
        self._by_call_id: dict[str, _Call] = {}
        self._sync_owners: dict[
            str, tuple[str, str | None, str | None, asyncio.AbstractEventLoop | None]
        ] = {}
        self._portal = _Portal()
        if _observe_stream not in litellm.post_call_rules:
            litellm.post_call_rules.append(_observe_stream)
        self.prices.warm_up()

    # -- before the call -------------------------------------------------------------------------

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
            raise _for_litellm(exc, router=_is_router_call(kwargs)) from None

    def _who(
        self, metadata: Mapping[str, Any]
    ) -> tuple[str | None, str | None, FenceContext | None]:
        ctx = current_context()
        tenant, feature = metadata.get("tenant_id"), metadata.get("feature")
        if ctx is not None and ctx.tenant_id is not None:
            # Inside a request or scope for a tenant, call metadata (maybe client-sent JSON
            # passed on) moves neither the charge nor its feature unless the app says it may.
            if self._trust_metadata:
                return (
                    tenant if tenant is not None else ctx.tenant_id,
                    feature if feature is not None else ctx.feature,
                    ctx,
                )
            if (tenant is not None and tenant != ctx.tenant_id) or (
                feature is not None and feature != ctx.feature
            ):
                log.warning("metadata_ignored", tenant=ctx.tenant_id, feature=ctx.feature,
                            metadata_tenant=str(tenant)[:200],
                            metadata_feature=str(feature)[:200])  # fmt: skip
            return ctx.tenant_id, ctx.feature, ctx
        if ctx is not None and not self._trust_metadata:
            ctx.require_tenant()  # an anonymous request is refused, whatever the metadata says
        if tenant is None:
            if ctx is None:
                if self._unscoped == "allow":
                    return None, None, None
                raise TenantRequired(
                    "a LiteLLM call was made outside any request or tenant_scope and without "
                    "metadata={'tenant_id': ...}"
                )
            tenant = ctx.require_tenant()  # an anonymous request: refused
        return tenant, feature, ctx

    async def _fence_call(self, kwargs: dict[str, object], kind: CallKind) -> dict[str, object]:
        metadata = _mapping(kwargs.get("metadata"))
        tenant, feature, ctx = self._who(metadata)
        if tenant is None:
            return kwargs
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
            model, shape, fixed_model=positional, tool_choice=kwargs.get("tool_choice"),
            deployment=deployment,
        )  # fmt: skip
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
        stream = bool(kwargs.get("stream"))
        if stream and kind in ("chat", "text"):
            options = _mapping(kwargs.get("stream_options"))
            changed["stream_options"] = {**options, "include_usage": True}
        if planned.tools_changed:
            if planned.tools:
                changed["tools"] = list(planned.tools)
            else:  # nothing left to offer: a tool_choice would be rejected by the provider
                changed.pop("tools", None)
                changed.pop("tool_choice", None)
            log.info("tools_removed", tenant=tenant, reservation=planned.reservation.id,
                     kept=len(planned.tools or ()), offered=len(shape.tools or ()))  # fmt: skip
        changed["metadata"] = {**_mapping(changed.get("metadata")), RESERVATION_KEY:
                               planned.reservation.id}  # fmt: skip
        call_id = kwargs.get("litellm_call_id")
        call = _Call(
            planned.reservation, planned.estimate, stream, ctx, logging_obj,
            asyncio.current_task(), call_id if isinstance(call_id, str) else None,
        )  # fmt: skip
        self._register(call)
        if stream and kind in ("chat", "text"):  # LiteLLM runs post-call rules per chunk
            call.observed = True
            _STREAMS.set((*(c for c in _STREAMS.get() if c.state == "open"), call))
        self._portal.app_loop = asyncio.get_running_loop()
        return changed

    def _register(self, call: _Call) -> None:
        while self._calls:  # oldest first; one whose lease ran out long ago is forgotten
            rid, old = next(iter(self._calls.items()))
            if call.created - old.created < _FORGET_AFTER_S:
                break
            del self._calls[rid]
            if old.call_id is not None:
                self._by_call_id.pop(old.call_id, None)
        self._calls[call.reservation.id] = call
        if call.call_id is not None:
            self._by_call_id[call.call_id] = call
        sync_calls = _SYNC_CALLS.get()
        if sync_calls is not None:
            sync_calls.append(call)
        if call.ctx is not None:
            call.ctx.track(call.reservation)
            on_end = getattr(call.ctx, "on_end", None)  # the settle hook, where the context has one
            if on_end is not None:
                on_end(self.settle)

    # -- sync calls LiteLLM cannot refuse ----------------------------------------------------------

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: dict[str, Any]) -> None:
        """Note who a sync call made for a tenant is for (its caller's thread): no LiteLLM hook
        can refuse it, so it is charged after the fact (see the class)."""
        call_type = kwargs.get("call_type")
        if not isinstance(call_type, str) or call_type.startswith("a") or _reservation_id(kwargs):
            return
        call_id = kwargs.get("litellm_call_id")
        metadata = _mapping(_mapping(kwargs.get("litellm_params")).get("metadata"))
        try:
            tenant, feature, ctx = self._who(metadata)
        except TokenFenceError:
            tenant, feature, ctx = None, None, None
        if tenant is None or not isinstance(call_id, str):
            return
        if len(self._sync_owners) >= _MAX_SYNC_OWNERS:
            self._sync_owners.pop(next(iter(self._sync_owners)))
        request_id = None if ctx is None else ctx.request_id
        self._sync_owners[call_id] = (tenant, feature, request_id, _caller_loop())
        log.warning("sync_call_not_fenced", tenant=tenant, model=model, call_type=call_type,
                    hint="use TokenFenceCallback.completion for a fenced sync call")  # fmt: skip

    def log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Charge a sync call made for a tenant after the fact (LiteLLM's sync event)."""
        call_id = kwargs.get("litellm_call_id")
        owner = self._sync_owners.pop(call_id, None) if isinstance(call_id, str) else None
        if owner is None:
            return
        tenant, feature, request_id, loop = owner
        model = kwargs.get("model")
        model = model if isinstance(model, str) else ""
        input_tokens, output_tokens = _tokens(kwargs, response_obj)
        priced_by_call = any("cost_per" in key for key in _mapping(kwargs.get("litellm_params")))
        cost = self.prices.actual_cost(
            model, response_cost=None if priced_by_call else kwargs.get("response_cost"),
            input_tokens=input_tokens, output_tokens=output_tokens,
        )  # fmt: skip
        if cost is None:
            log.error("sync_call_not_charged", tenant=tenant, model=model, reason="no price")
            return

        async def charge() -> None:
            await self.fence.charge(
                tenant, cost, feature=feature, model=model, input_tokens=input_tokens,
                output_tokens=output_tokens, request_id=request_id,
            )  # fmt: skip

        try:
            if loop is not None and loop.is_running():  # the loop the fence's connections use
                asyncio.run_coroutine_threadsafe(charge(), loop).result(timeout=_WAIT_S)
            else:
                self._portal.run(charge, None)
        except Exception as exc:
            log.error("sync_call_not_charged", tenant=tenant, model=model, error=repr(exc))

    def log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Forget a failed sync call (LiteLLM's sync event)."""
        call_id = kwargs.get("litellm_call_id")
        if isinstance(call_id, str):
            self._sync_owners.pop(call_id, None)

    # -- after the call --------------------------------------------------------------------------

    def _find(self, kwargs: Mapping[str, object]) -> _Call | None:
        rid = _reservation_id(kwargs)
        call = self._calls.get(rid) if isinstance(rid, str) else None
        if call is None:
            call_id = kwargs.get("litellm_call_id")
            call = self._by_call_id.get(call_id) if isinstance(call_id, str) else None
        return call

    def _claim(self, kwargs: Mapping[str, object]) -> _Call | None:
        call = self._find(kwargs)
        if call is None or call.state != "open":
            return None
        call.state = "settling"
        return call

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
                    raise _for_litellm(exc, router=_is_router_call(request_data)) from None
        return None

    async def _check_calls(
        self, call: _Call, request_data: Mapping[str, object], response: object
    ) -> None:
        names = _called_tools(response)
        if not names:
            return
        reservation = call.reservation
        plan = self.fence.plans.get(reservation.plan)
        policy = self.fence.policy_for(plan) if plan is not None else Policy(default="deny")
        pending = []
        for name in names:
            action, decision = self.planner.decide(policy, name)
            if decision == Decision.DENY:
                await self._charge(call)
                log.warning("tool_call_denied", tenant=reservation.tenant_id, action=action,
                            reservation=reservation.id)  # fmt: skip
                raise PolicyDenied(action, tenant_id=reservation.tenant_id)
            if decision == Decision.REQUIRE_APPROVAL:
                pending.append(action)
        if not pending:
            return
        await self._charge(call)  # the call was made: its cost is owed whatever happens next
        approval = _mapping(request_data.get("metadata")).get(APPROVAL_KEY)
        for action in dict.fromkeys(pending):
            try:
                await self.fence.check_tool(
                    action, tenant_id=reservation.tenant_id,
                    approval_id=approval if isinstance(approval, str) else None,
                )  # fmt: skip
            except ApprovalRequired as exc:
                exc.model_response = response
                raise
            approval = None  # an approval is used once, for one action

    async def _charge(self, call: _Call) -> None:
        """Commit an answered call now (before its error reaches the caller)."""
        if call.state == "open":
            call.state = "settling"
            await self._charge_response(call)

    def _cost(
        self, call: _Call, response_cost: object, input_tokens: int, output_tokens: int
    ) -> Decimal | None:
        estimate = call.estimate
        return self.prices.actual_cost(
            estimate.model, response_cost=response_cost, input_tokens=input_tokens,
            output_tokens=output_tokens, units=estimate.units, characters=estimate.characters,
            deployment=estimate.price,
        )  # fmt: skip

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Commit LiteLLM's cost of the response with its token counts (LiteLLM event)."""
        call = self._claim(kwargs)
        if call is not None:
            if call.response is None and not call.stream:
                call.response = response_obj
            input_tokens, output_tokens = _tokens(kwargs, response_obj)
            cost = self._cost(call, kwargs.get("response_cost"), input_tokens, output_tokens)
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

    async def _fail(self, call: _Call, kwargs: Mapping[str, object]) -> None:
        cost = kwargs.get("response_cost")
        if isinstance(cost, int | float) and not isinstance(cost, bool) and cost > 0:
            input_tokens, output_tokens = _tokens(kwargs, None)
            await self._settle_with(call, Decimal(str(cost)), input_tokens, output_tokens)
        elif call.chunks > 0:  # a stream that broke after it produced: what it produced
            await self._settle_abandoned(call)
        else:
            await self._settle_with(call, None, 0, 0, release=True)

    async def _settle_with(
        self,
        call: _Call,
        cost: Decimal | None,
        input_tokens: int,
        output_tokens: int,
        *,
        release: bool = False,
    ) -> None:
        """Commit ``cost`` (the hold when ``None``) or release; then forget the call."""
        reservation = call.reservation
        try:
            if release:
                await self.fence.release(reservation)
            else:
                if cost is None:
                    log.warning("cost_unknown", reservation=reservation.id,
                                model=call.estimate.model,
                                charged=str(reservation.amount))  # fmt: skip
                    cost = reservation.amount
                answered = getattr(call.response, "model", None)
                await self.fence.commit(
                    reservation, cost, input_tokens=input_tokens, output_tokens=output_tokens,
                    model=answered if isinstance(answered, str) else call.estimate.model,
                    request_id=None if call.ctx is None else call.ctx.request_id,
                )  # fmt: skip
        except asyncio.CancelledError:
            call.state = "open"  # let settle() try again
            raise
        except Exception as exc:
            # LiteLLM swallows what a callback raises, so say it here; the hold stays until
            # its lease runs out.
            log.error("settle_failed", tenant=reservation.tenant_id, reservation=reservation.id,
                      error=repr(exc))  # fmt: skip
        call.state = "done"
        call.done.set()
        self._calls.pop(reservation.id, None)
        if call.call_id is not None:
            self._by_call_id.pop(call.call_id, None)
        if call.ctx is not None:
            call.ctx.untrack(reservation.id)

    # -- end of request --------------------------------------------------------------------------

    async def settle(self, ctx: FenceContext | None = None) -> None:
        """Settle the calls this callback made in ``ctx`` (default: the current one) and left open.

        For the end of a request or ``tenant_scope``. A call answered but not yet charged is
        charged its LiteLLM cost; a stream abandoned after it produced output is charged its
        input and the output streamed so far; a call that produced nothing (cancelled, or
        abandoned before its first chunk) is released. A call still running in another task
        is left to its own events.
        """
        ctx = current_context() if ctx is None else ctx
        if ctx is None:
            return
        for rid in list(ctx.open_reservations):
            call = self._calls.get(rid)
            if call is not None:
                await self._settle(call)

    async def _settle(self, call: _Call, produced_text: str | None = None) -> None:
        task = call.task
        if (call.state == "open" and not call.stream and call.response is None and task
                and not task.done() and task is not asyncio.current_task()):  # fmt: skip
            return
        if call.state == "open" and produced_text is None and call.produced():
            for _ in range(_GRACE_YIELDS):  # its success event may be one step away
                await asyncio.sleep(0)
                if call.state != "open":
                    break
        if call.state != "open":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.done.wait(), _WAIT_S)
            return
        call.state = "settling"
        if produced_text is not None and len(produced_text) > len(call.streamed_text):
            call.streamed_text = produced_text
        if call.response is not None:
            await self._charge_response(call)
        elif call.produced() or produced_text:
            await self._settle_abandoned(call)
        else:
            log.info("call_abandoned", reservation=call.reservation.id)
            await self._settle_with(call, None, 0, 0, release=True)

    async def _settle_abandoned(self, call: _Call) -> None:
        """Charge a stream that stopped early: its input, and the output it streamed.

        The output counted is the larger of the tokens of the text streamed so far (LiteLLM's
        tokenizer for the model) and the chunks seen (a chunk with no text, a tool call's
        arguments, counts as one token), times the choices asked for; never more than the hold.
        A stream LiteLLM gives no per-chunk view of (the Responses API) is charged its hold.
        """
        estimate = call.estimate
        if not call.observed:  # no view of what it streamed (the Responses API): its hold
            log.warning("stream_abandoned", reservation=call.reservation.id,
                        charged=str(call.reservation.amount), counted=False)  # fmt: skip
            await self._settle_with(
                call, call.reservation.amount, estimate.input_tokens,
                estimate.output_tokens * estimate.choices,
            )  # fmt: skip
            return
        produced = max(self.prices.text_tokens(estimate.model, call.streamed_text), call.chunks)
        if produced == 0:  # started (the provider answered) but no chunk reached the caller
            produced = 1
        output_tokens = min(produced * estimate.choices, estimate.output_tokens * estimate.choices)
        cost = min(estimate.cost_of(output_tokens), call.reservation.amount)
        log.info("stream_abandoned", reservation=call.reservation.id, charged=str(cost),
                 output_tokens=output_tokens)  # fmt: skip
        await self._settle_with(call, cost, estimate.input_tokens, output_tokens)

    async def _charge_response(self, call: _Call) -> None:
        hidden = _mapping(getattr(call.response, "_hidden_params", None))
        input_tokens, output_tokens = _tokens({}, call.response)
        cost = self._cost(call, hidden.get("response_cost"), input_tokens, output_tokens)
        await self._settle_with(call, cost, input_tokens, output_tokens)

    # -- sync callers ----------------------------------------------------------------------------

    def completion(self, *args: Any, router: Any = None, **kwargs: Any) -> Any:
        """``litellm.completion`` (or ``router.completion``), fenced: for sync code.

        Sync ``completion`` runs no LiteLLM hook that can both refuse and change a call (the
        deployment hook is async-only; ``log_pre_api_call`` swallows exceptions), so this runs
        ``acompletion`` instead, through the same hooks, on an event loop: the app's own from
        a worker thread of a sync FastAPI/Starlette endpoint, else the loop of the last fenced
        async call, else a private loop thread. Returns when the call is charged; a stream is
        a sync iterator, charged when exhausted or, when closed early, for what it produced.
        Raises ``RuntimeError`` on a thread running an event loop (await ``acompletion``).
        """
        acompletion = litellm.acompletion if router is None else router.acompletion
        context = contextvars.copy_context()
        response, calls = self._portal.run(lambda: self._acall(acompletion, args, kwargs), context)
        if not kwargs.get("stream"):
            return response
        return self._iterate(response, calls)

    def run_sync(self, function: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``await function(*args, **kwargs)`` from sync code, where ``completion`` would.

        For the fence itself in a sync program: ``callback.run_sync(fence.status, "acme")``.
        """
        return self._portal.run(lambda: function(*args, **kwargs), contextvars.copy_context())

    async def _acall(
        self, acompletion: Callable[..., Awaitable[Any]], args: Sequence[Any], kwargs: Any
    ) -> tuple[Any, list[_Call]]:
        calls: list[_Call] = []
        token = _SYNC_CALLS.set(calls)
        try:
            response = await acompletion(*args, **kwargs)
        finally:
            _SYNC_CALLS.reset(token)
        if not kwargs.get("stream"):
            for call in calls:
                await self._settle(call)
        return response, calls

    def _iterate(self, stream: Any, calls: list[_Call]) -> Iterator[Any]:
        text: list[str] = []
        finished = False
        try:
            while True:
                try:
                    chunk = self._portal.run(stream.__anext__, None)
                except StopAsyncIteration:
                    finished = True
                    return
                for choice in getattr(chunk, "choices", None) or ():
                    content = getattr(getattr(choice, "delta", None), "content", None)
                    if isinstance(content, str):
                        text.append(content)
                yield chunk
        finally:
            produced = None if finished else "".join(text)

            async def end() -> None:
                if not finished:
                    await stream.aclose()
                for call in calls:
                    await self._settle(call, produced)

            try:
                self._portal.run(end, None)
            except RuntimeError:  # closed by the garbage collector on a loop's thread
                log.warning("stream_not_settled", reservations=[c.reservation.id for c in calls])

    def close(self) -> None:
        """Stop the private loop thread of sync calls, if one was started."""
        self._portal.close()


class _Portal:
    """Runs coroutines for sync callers on a loop where the fence's connections may be used."""

    __slots__ = ("_lock", "_loop", "_thread", "app_loop")

    def __init__(self) -> None:
        self.app_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, make: Callable[[], Awaitable[T]], context: contextvars.Context | None) -> T:
        """``await make()`` on a suitable loop (in ``context`` when given); blocks until done."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("a sync fenced call would block this thread's event loop; "
                               "await litellm.acompletion(...) instead")  # fmt: skip

        async def main() -> T:
            coro = make()
            if context is None:
                return await coro
            return await asyncio.get_running_loop().create_task(_wrap(coro), context=context)

        try:
            return anyio.from_thread.run(main)  # a worker thread of the app's own loop
        except anyio.NoEventLoopError:
            pass
        loop = self.app_loop
        if loop is None or loop.is_closed() or not loop.is_running():
            loop = self._own_loop()
        return asyncio.run_coroutine_threadsafe(main(), loop).result()

    def _own_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="tokenfence-sync",
                                          daemon=True)  # fmt: skip
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def close(self) -> None:
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is not None and thread is not None:
            # What asyncio.run does at the end: LiteLLM leaves a logging task on the loop.
            async def drain() -> None:
                tasks = asyncio.all_tasks() - {asyncio.current_task()}
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await loop.shutdown_asyncgens()

            asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()


async def _wrap(awaitable: Awaitable[T]) -> T:
    return await awaitable
