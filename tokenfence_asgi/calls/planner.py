"""The call planner: one paid LLM call, from any client, bounded, checked and reserved.

Every integration (the LiteLLM callback, the SDK guards) describes its call as a ``CallRequest``
(a model and a provider-neutral ``CallShape``) and hands it to ``CallPlanner.reserve``, which:

1. applies the plan as the store holds it: ``max_input_chars``, the tool-call policy on the
   tools offered, the model allow-list and downgrade chain, ``max_input_tokens``;
2. bounds the call's worst case on each allowed model: its input plus ``choices`` times the
   largest output limit it set, else the plan's or the fence's ``default_output_tokens``
   (never more than the model can produce), plus what it pays per image, query or character;
3. reserves, in one round trip, the first candidate that fits: the chain's models at that
   allowance, then, on a plan with ``fit="shrink"``, the same models with smaller output
   limits down to ``min_output_tokens``.

The ``PlannedCall`` it returns says what to write into the call: the model, the output limit
the hold covers (when the call set none, or it was shrunk), the tools left to offer and the
hosted tool calls the hold covers (when the call offers hosted tools and set no
``max_tool_calls``). A costlier service tier is held at its own price (``pricing.variants``).
Settling is the integration's (it knows where usage arrives), with the estimate's prices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import structlog

from tokenfence_asgi.config import Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import InputTooLong, ModelNotAllowed, ModelNotPriced, PolicyDenied
from tokenfence_asgi.policy import Decision, Policy
from tokenfence_asgi.pricing.book import ModelPrice, PriceBook
from tokenfence_asgi.pricing.call import OUTPUT_KINDS, CallShape, Estimate
from tokenfence_asgi.pricing.variants import Tier
from tokenfence_asgi.results import Reservation

__all__ = ["CallPlanner", "CallRequest", "PlannedCall", "tool_action"]

log = structlog.get_logger("tokenfence_asgi")

DeniedTools = Literal["remove", "refuse"]

_SHRINK_STEP = 0.75  # each smaller candidate offers 3/4 of the output of the one before
_MAX_SHRINK_STEPS = 12


def tool_action(name: str) -> str:
    """The default action name of a tool: ``"tool:" + name`` (``delete_user`` ->
    ``tool:delete_user``). Pass ``tool_action=`` to map names differently, e.g.
    ``lambda n: "tool:" + n.replace("__", ":")`` for ``db__delete`` -> ``tool:db:delete``."""
    return f"tool:{name}"


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _tool_name(tool: object) -> str | None:
    """The name of an offered tool: OpenAI ``{"type": "function", "function": {"name": ...}}``,
    a flat ``{"name": ...}`` (Anthropic, Responses API), or a built-in tool's ``type``."""
    tool = _mapping(tool)
    name = _mapping(tool.get("function")).get("name", tool.get("name", tool.get("type")))
    return name if isinstance(name, str) else None


def _forced_tool(choice: object) -> object:
    """The tool a ``tool_choice`` forces: ``{"type": "function", "function": {"name": ...}}``
    (chat), ``{"type": "function", "name": ...}`` (Responses) or ``{"type": "tool", "name":
    ...}`` (Anthropic); ``None`` when it forces none."""
    choice = _mapping(choice)
    forced = _mapping(choice.get("function")).get("name")
    if forced is None and choice.get("type") in ("function", "tool"):
        forced = choice.get("name")
    return forced


def text_chars(shape: CallShape) -> int:
    """Characters of text in a call's input: message contents and text parts, plain texts."""
    total = sum(len(text) for text in shape.texts)
    for message in shape.messages:
        content = _mapping(message).get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                text = _mapping(part).get("text")
                if isinstance(text, str):
                    total += len(text)
    return total


@dataclass(frozen=True, slots=True)
class CallRequest:
    """One paid call as an integration describes it to the planner.

    ``fixed_model``: the model cannot be changed (a LiteLLM model passed positionally), so the
    call is never downgraded. ``tool_choice`` as the call gave it. ``deployment`` is the price a
    trusted deployment configuration gives the model (a LiteLLM Router's), if any.
    """

    model: str
    shape: CallShape
    fixed_model: bool = False
    tool_choice: object = None
    deployment: ModelPrice | None = None


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """A reserved call and what the integration writes into it before sending it.

    ``output_limit`` is the output limit per choice the hold covers, to be written into every
    output-limit argument of the call when ``write_limit`` (the call set none, or it was shrunk).
    ``tools`` is what to offer when ``tools_changed`` (``None`` or empty: offer none).
    ``tool_calls`` is the hosted tool calls the hold covers, to be written into the call
    (``max_tool_calls``) when it set none; ``None``: nothing to write.
    """

    reservation: Reservation
    model: str
    estimate: Estimate
    output_limit: int | None
    write_limit: bool
    tools: tuple[object, ...] | None
    tools_changed: bool
    tool_calls: int | None = None


class CallPlanner:
    """Estimate -> plan rules -> reserve, once, for every integration (see the module doc).

    ``prices`` is the price book; ``denied_tools="remove"`` drops offered tools the policy
    denies (``"refuse"``: refuse the call); ``tool_action`` maps a tool name to a policy action.
    """

    def __init__(
        self,
        fence: TokenFence,
        prices: PriceBook,
        *,
        denied_tools: DeniedTools = "remove",
        tool_action: Callable[[str], str] = tool_action,
    ) -> None:
        self.fence = fence
        self.prices = prices
        self._denied_tools: DeniedTools = denied_tools
        self._tool_action = tool_action

    def decide(self, policy: Policy, name: str | None) -> tuple[str, Decision]:
        """The action of tool ``name`` and the policy's decision; unreadable names are denied."""
        action = str(name)
        try:
            action = self._tool_action(str(name))
            return action, policy.decide(action)
        except ValueError:
            return action, Decision.DENY

    def offered_tools(
        self, plan: Plan, tools: Sequence[object] | None, choice: object, tenant: str
    ) -> tuple[object, ...] | None:
        """The offered tools the policy does not deny (or ``PolicyDenied``, see the class)."""
        if not tools:
            return None if tools is None else ()
        policy = self.fence.policy_for(plan)
        kept: list[object] = []
        for tool in tools:
            action, decision = self.decide(policy, _tool_name(tool))
            if decision != Decision.DENY:
                kept.append(tool)
            elif self._denied_tools == "refuse":
                raise PolicyDenied(action, tenant_id=tenant)
        forced = _forced_tool(choice)
        if forced is not None:
            action, decision = self.decide(policy, forced if isinstance(forced, str) else None)
            if decision == Decision.DENY:
                raise PolicyDenied(action, tenant_id=tenant)
        return tuple(kept)

    def served_price(self, estimate: Estimate, tier: Tier | None) -> ModelPrice:
        """The price to settle a call at: the held one (``estimate.price``), or the price of
        the tier the provider reports it served when that is another one; the held price, with
        a ``service_tier_unpriced`` warning, when nothing prices that tier."""
        held = estimate.price or self.prices.price(estimate.model)
        if tier is None or tier == estimate.tier:
            return held
        try:
            return self.prices.tier_price(estimate.model, tier)
        except ModelNotPriced:
            log.warning("service_tier_unpriced", model=estimate.model, tier=tier[1])
            return held

    async def check_tool_calls(
        self, reservation: Reservation, names: Sequence[str], *, approval_id: str | None = None
    ) -> None:
        """Check the tools a (charged) response calls against the tenant's plan's policy.

        Raises ``PolicyDenied`` for a denied one, and ``ApprovalRequired`` (a new pending
        approval, see ``TokenFence.check_tool``) for one that needs an operator, unless
        ``approval_id`` is an approved one (used once, for the first such action).
        """
        if not names:
            return
        plan = self.fence.plans.get(reservation.plan)
        policy = self.fence.policy_for(plan) if plan is not None else Policy(default="deny")
        pending: list[str] = []
        for name in names:
            action, decision = self.decide(policy, name)
            if decision == Decision.DENY:
                log.warning(
                    "tool_call_denied",
                    tenant=reservation.tenant_id,
                    action=action,
                    reservation=reservation.id,
                )
                raise PolicyDenied(action, tenant_id=reservation.tenant_id)
            if decision == Decision.REQUIRE_APPROVAL:
                pending.append(action)
        for action in dict.fromkeys(pending):
            await self.fence.check_tool(
                action, tenant_id=reservation.tenant_id, approval_id=approval_id
            )
            approval_id = None  # an approval is used once, for one action

    def allowance(self, plan: Plan) -> int | None:
        """The output allowance of a call that sets none: the plan's, else the fence's."""
        if plan.default_output_tokens is not None:
            return plan.default_output_tokens
        if self.prices.default_output_tokens is not None:
            return self.prices.default_output_tokens
        return self.fence.default_output_tokens

    async def reserve(
        self, request: CallRequest, *, tenant: str, feature: str | None
    ) -> PlannedCall:
        """Apply the plan, bound the call and reserve it (see the module doc).

        Raises ``InputTooLong``, ``ModelNotAllowed``, ``PolicyDenied``, ``ConfigError`` (a model
        with no price, a call that cannot be bounded), and whatever ``fence.reserve_first``
        raises (``BudgetExceeded``, ``RequestLimitExceeded``, ``TenantDisabled``, ...).
        """
        shape, model = request.shape, request.model
        chars = text_chars(shape)
        offered_tools = shape.tools
        kept_tools: list[tuple[object, ...] | None] = [offered_tools]
        estimates: dict[tuple[str, int | None], Estimate] = {}
        counted: dict[str, int] = {}

        def bound(name: str, plan_shape: CallShape, allowance: int | None) -> Estimate:
            key = (name, plan_shape.output_limit if allowance is None else allowance)
            found = estimates.get(key)
            if found is None:
                deployment = request.deployment if name == model else None
                found = self.prices.bound(
                    name,
                    plan_shape,
                    allowance=allowance,
                    deployment=deployment,
                    input_tokens=counted.get(name),
                )
                counted[name] = found.input_tokens
                estimates[key] = found
            return found

        def offer(plan: Plan) -> list[tuple[str | None, int]]:
            # Called with the plan as the store holds it, maybe more than once.
            _check_length(plan, chars, plan.max_input_chars, "characters", tenant, feature)
            kept = self.offered_tools(plan, offered_tools, request.tool_choice, tenant)
            if kept != kept_tools[-1]:
                estimates.clear()  # counted with other tools
                counted.clear()
            kept_tools.append(kept)
            plan_shape = shape if kept == offered_tools else _with_tools(shape, kept)
            chain = (model,) if request.fixed_model else plan.chain_for(model)
            allowed = [m for m in chain if plan.allows(m)]
            if not allowed:
                hint = ""
                if request.fixed_model and len(plan.chain_for(model)) > 1:
                    hint = "; pass model= as a keyword so that it can be downgraded"
                raise ModelNotAllowed(
                    f"model {model!r} is not allowed on plan {plan.name!r}{hint}",
                    tenant_id=tenant,
                    feature=feature,
                    upgrade_url=plan.upgrade_url,
                )
            allowance = self.allowance(plan)
            full = [bound(name, plan_shape, allowance) for name in allowed]
            tokens = full[0].input_tokens
            _check_length(plan, tokens, plan.max_input_tokens, "tokens", tenant, feature)
            candidates: list[tuple[str | None, int]] = [(e.model, e.amount_nanos) for e in full]
            if plan.fit == "shrink" and shape.kind in OUTPUT_KINDS:
                for estimate in full:
                    for smaller in _ladder(estimate.output_tokens, plan.min_output_tokens):
                        shrunk = bound(estimate.model, _limited(plan_shape, smaller), None)
                        candidates.append((estimate.model, shrunk.amount_nanos))
            return candidates

        reservation = await self.fence.reserve_first(tenant, offer, feature=feature)
        chosen = reservation.model or model
        estimate = _chosen(estimates, chosen, reservation.amount_nanos)
        full_limit = shape.output_limit
        write_limit = shape.kind in OUTPUT_KINDS and (
            not estimate.from_call or estimate.output_tokens != full_limit
        )
        if write_limit and estimate.from_call:
            log.info(
                "output_limit_shrunk",
                tenant=tenant,
                model=chosen,
                asked=full_limit,
                limit=estimate.output_tokens,
                reservation=reservation.id,
            )
        if chosen != model:
            log.info(
                "model_downgraded",
                tenant=tenant,
                requested=model,
                model=chosen,
                reservation=reservation.id,
            )
        tools = kept_tools[-1]
        return PlannedCall(
            reservation=reservation,
            model=chosen,
            estimate=estimate,
            output_limit=estimate.output_tokens if shape.kind in OUTPUT_KINDS else None,
            write_limit=write_limit,
            tools=tools,
            tools_changed=tools != offered_tools,
            tool_calls=None
            if estimate.tool_calls_from_call or not estimate.tool_calls
            else estimate.tool_calls,
        )


def _check_length(
    plan: Plan, length: int, limit: int | None, unit: str, tenant: str, feature: str | None
) -> None:
    """Refuse a prompt longer than the plan's ``limit`` (of ``unit``) with ``InputTooLong``."""
    if limit is not None and length > limit:
        raise InputTooLong(
            f"the prompt has {length} {unit}; plan {plan.name!r} allows {limit}",
            tenant_id=tenant,
            feature=feature,
            upgrade_url=plan.upgrade_url,
            limit=limit,
            length=length,
            unit=unit,
        )


def _with_tools(shape: CallShape, tools: tuple[object, ...] | None) -> CallShape:
    return replace(shape, tools=tools or None)


def _limited(shape: CallShape, output_limit: int) -> CallShape:
    return replace(shape, output_limit=output_limit)


def _ladder(start: int, floor: int) -> list[int]:
    """Smaller output limits to try after ``start``: 3/4 each step, ending at ``floor``."""
    steps: list[int] = []
    limit = start
    while limit > floor and len(steps) < _MAX_SHRINK_STEPS:
        limit = max(floor, int(limit * _SHRINK_STEP))
        steps.append(limit)
    if steps and steps[-1] != floor and start > floor:
        steps[-1] = floor  # always offer the floor last
    return steps


def _chosen(
    estimates: Mapping[tuple[str, int | None], Estimate], model: str, nanos: int
) -> Estimate:
    """The estimate the reserve script chose: its model and amount (a retried id keeps both)."""
    best: Estimate | None = None
    for estimate in estimates.values():
        if estimate.model != model:
            continue
        if estimate.amount_nanos == nanos:
            return estimate
        if best is None or estimate.amount_nanos > best.amount_nanos:
            best = estimate
    if best is None:  # pragma: no cover - reserve_first only returns offered models
        raise LookupError(f"no estimate for model {model!r}")
    return best
