"""Prices of LLM calls: the worst case before a call, the actual cost after it.

The worst case of a call is its input tokens (counted offline by ``tokens``: OpenAI's own
tokenizers, a byte bound for other models; messages, tools, response format, plain texts,
images and files) at the input price, plus ``choices`` (``n`` x ``best_of``) times its output
allowance at the output price, plus what it pays per image, per query or per character. The
allowance is the largest output limit the call set (``max_tokens``, ``max_completion_tokens``,
``max_output_tokens``), else ``default_output_tokens``, else the model's maximum output, and
never more than that maximum. Estimates round up to the nano-dollar; actual costs half-up.

Prices are looked up in this order: ``prices`` (negotiated prices, self-hosted models), the
prices of a trusted deployment (a LiteLLM Router's), the price snapshot shipped in the package
(``_prices/prices.json``: OpenAI, Azure and Anthropic, generated from genai-prices), LiteLLM's
bundled price map only when LiteLLM is already imported, then ``default_price``. A call's own
arguments (``input_cost_per_token=0``) never price it. A model with no price is never free: it
raises ``ModelNotPriced`` naming the model. Nothing is downloaded and LiteLLM is never imported
here; a model's price, once found, stays the same for the life of the price book.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from types import ModuleType

import structlog

from tokenfence_asgi.errors import ConfigError, ModelNotPriced
from tokenfence_asgi.money import to_nanos
from tokenfence_asgi.pricing._litellm_map import CACHE_SIZE as _CACHE_SIZE
from tokenfence_asgi.pricing._litellm_map import mapped_price
from tokenfence_asgi.pricing._prices import snapshot
from tokenfence_asgi.pricing._prices.model_price import (
    ModelPrice,
    checked_model,
    shown,
    snapshot_price,
    token_count,
)
from tokenfence_asgi.pricing.call import FLAT_KINDS, OUTPUT_KINDS, CallShape, Estimate
from tokenfence_asgi.pricing.tokens import (
    InputCount,
    input_flags,
    predicted_tokens,
    shape_input,
    tokenizer_for,
)
from tokenfence_asgi.pricing.variants import (
    DEFAULT_HOSTED_TOOL_CALLS,
    Tier,
    is_standard,
    tool_fees,
    unpriced_tier,
    variant_price,
)

__all__ = ["ModelPrice", "PriceBook", "load_litellm"]

log = structlog.get_logger("tokenfence_asgi")


def load_litellm() -> ModuleType:
    """Import LiteLLM with its bundled price map (no download); raises ``ImportError`` if absent."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    return litellm


def _stripped(model: str) -> list[str]:
    """``model`` and what remains after each leading ``provider/``: lookup keys, best first."""
    keys = [model]
    while "/" in keys[-1]:
        keys.append(keys[-1].split("/", 1)[1])
    return keys


class PriceBook:
    """Prices by model, and the estimates and costs computed from them.

    ``prices`` maps a model name (as passed to LiteLLM or an SDK, or without its ``provider/``
    prefix) to a ``ModelPrice``; ``default_price`` prices every model nothing else prices
    (without it such a model raises ``ModelNotPriced``); ``default_output_tokens`` is the
    output allowance of a call without ``max_tokens``, instead of the model's maximum output;
    ``default_tool_calls`` the hosted tool calls a call that offers hosted tools and sets no
    ``max_tool_calls`` is held for (see ``pricing.variants``).

    Prices are looked up in this order: ``prices``, the prices of a trusted deployment (a
    LiteLLM ``Router``'s, passed as ``deployment``), the snapshot shipped in the package,
    LiteLLM's bundled price map when LiteLLM is already imported, then ``default_price``. A
    call's own arguments never price it. Once a model is priced, its price does not change for
    the life of the book (up to 4,096 models). Call ``check`` at start-up with the models an
    app uses to learn of a missing price before a user does.
    """

    __slots__ = (
        "_cache",
        "_default_output",
        "_default_price",
        "_default_tools",
        "_listed",
        "_litellm",
        "_overrides",
        "_resolved",
        "_tiers",
    )

    def __init__(
        self,
        prices: Mapping[str, ModelPrice] | None = None,
        *,
        default_price: ModelPrice | None = None,
        default_output_tokens: int | None = None,
        default_tool_calls: int = DEFAULT_HOSTED_TOOL_CALLS,
    ) -> None:
        overrides = dict(prices or {})
        for model, price in overrides.items():
            if not isinstance(model, str) or not model:
                raise ConfigError(f"prices: model names must be non-empty strings, got {model!r}")
            try:
                checked_model(model)
            except ModelNotPriced as exc:
                raise ConfigError(f"prices: {exc.message}") from None
            if not isinstance(price, ModelPrice):
                raise ConfigError(f"prices[{model!r}] must be a ModelPrice, got {price!r}")
        if default_price is not None and not isinstance(default_price, ModelPrice):
            raise ConfigError(f"default_price must be a ModelPrice or None, got {default_price!r}")
        if default_output_tokens is not None:
            token_count("default_output_tokens", default_output_tokens, low=1)
        self._overrides = overrides
        self._default_price = default_price
        self._default_output = default_output_tokens
        self._default_tools = token_count("default_tool_calls", default_tool_calls, low=1)
        self._litellm: ModuleType | None = None
        self._cache: dict[str, tuple[tuple[object, ...], ModelPrice]] = {}
        self._listed: dict[str, ModelPrice] = {}
        self._resolved: dict[str, ModelPrice] = {}
        self._tiers: dict[tuple[str, Tier], ModelPrice] = {}

    @property
    def default_output_tokens(self) -> int | None:
        """The output allowance of a call that sets none (``None``: the model's maximum)."""
        return self._default_output

    @property
    def litellm(self) -> ModuleType:
        """The LiteLLM module, imported on first use (the price book itself never imports it)."""
        if self._litellm is None:
            self._litellm = load_litellm()
        return self._litellm

    def override(self, model: str) -> ModelPrice | None:
        """The configured price of ``model`` (or of its name without provider prefixes)."""
        if self._overrides:
            for key in _stripped(model):
                if key in self._overrides:
                    return self._overrides[key]
        return None

    def mapped_entry(self, key: str) -> ModelPrice | None:
        """The price of one exact key of LiteLLM's price map (no prefix stripping), or ``None``
        (also when LiteLLM is not imported: the price book does not import it).

        A LiteLLM ``Router`` registers each deployment's configured prices there under the
        deployment's id, which a caller cannot write: the way to trust a deployment's prices.
        """
        return mapped_price(key, self._cache)

    def _mapped(self, model: str) -> ModelPrice | None:
        for key in _stripped(model):
            found = self.mapped_entry(key)
            if found is not None:
                return found
        return None

    def _listed_price(self, model: str) -> ModelPrice | None:
        """The snapshot's price of ``model``, else LiteLLM's map's when LiteLLM is imported."""
        listed = self._listed.get(model)
        if listed is not None:
            return listed
        entry = snapshot.find(model)
        listed = None if entry is None else snapshot_price(entry)
        if listed is None:
            listed = self._mapped(model)
            if listed is None:
                return None  # not remembered: LiteLLM may be imported later
        if len(self._listed) < _CACHE_SIZE:
            self._listed[model] = listed
        return listed

    def price(self, model: str, deployment: ModelPrice | None = None) -> ModelPrice:
        """The price of ``model``; ``deployment`` is a trusted deployment's price.

        Raises ``ModelNotPriced`` (a ``ConfigError``) when nothing prices the model, or when
        its name has surrounding whitespace or control characters.
        """
        found = self.override(checked_model(model))
        if found is not None:
            return found
        if deployment is not None:
            return deployment
        found = self._resolved.get(model)
        if found is not None:
            return found
        listed = self._listed_price(model)
        if listed is not None:
            found = listed
        elif self._default_price is not None:
            found = self._default_price
        else:
            raise ModelNotPriced(
                f"no price for model {shown(model)}: it is not in the price snapshot"
                + ("" if "litellm" in sys.modules else " (LiteLLM's map is not loaded)")
                + f"; pass prices={{{shown(model)}: ModelPrice(...)}} or "
                "default_price=ModelPrice(...)",
                models=(model,),
            )
        if len(self._resolved) < _CACHE_SIZE:
            self._resolved[model] = found  # the same price for the rest of the process
        return found

    def tier_price(
        self, model: str, tier: Tier | None, deployment: ModelPrice | None = None
    ) -> ModelPrice:
        """The price of ``model`` at service tier ``tier`` (``None``: the standard price).

        A configured price (``prices``, ``default_price`` for a model nothing lists, a trusted
        deployment's) wins at every tier: it is what the operator pays. Else the snapshot's
        price for the tier; a tier that costs no more than the standard one (``"flex"``) and
        that the snapshot does not list is the standard price. Raises ``ModelNotPriced`` for
        a costlier tier nothing prices: it is never charged at the standard price.
        """
        standard = self.price(model, deployment)
        if tier is None or deployment is not None or self.override(model) is not None:
            return standard
        found = self._tiers.get((model, tier))
        if found is None:
            found = variant_price(model, tier)
            if found is None:
                if is_standard(tier) or self._listed_price(model) is None:
                    return standard  # a cheaper tier, or the default_price the operator set
                raise unpriced_tier(model, tier)
            if len(self._tiers) < _CACHE_SIZE:
                self._tiers[(model, tier)] = found
        return found

    def check(self, models: Iterable[str]) -> dict[str, ModelPrice]:
        """Price every model an app uses, at start-up: the price of each, by name.

        Raises ``ModelNotPriced`` naming every model nothing prices (and every malformed name)
        at once. Models that only LiteLLM's map prices are found once LiteLLM is imported
        (create the ``TokenFenceCallback`` first).
        """
        names = [models] if isinstance(models, str) else list(models)
        found: dict[str, ModelPrice] = {}
        missing: list[str] = []
        reasons: list[str] = []
        for model in names:
            try:
                found[model] = self.price(model)
            except ModelNotPriced as exc:
                missing.extend(exc.models)
                reasons.append(exc.message)
        if missing:
            summary = "; ".join(reasons[:10]) + ("; ..." if len(reasons) > 10 else "")
            raise ModelNotPriced(
                f"{len(missing)} of {len(names)} models cannot be priced: {summary}",
                models=missing,
            )
        return found

    def max_output_tokens(self, model: str, deployment: ModelPrice | None = None) -> int | None:
        """The most tokens ``model`` can produce per choice, where a price knows it."""
        price = self.price(model, deployment)
        if price.max_output_tokens is not None:
            return price.max_output_tokens
        listed = self._listed_price(model)
        return None if listed is None else listed.max_output_tokens

    def max_input_tokens(self, model: str, deployment: ModelPrice | None = None) -> int | None:
        """The context window of ``model`` in tokens, where a price knows it."""
        price = self.price(model, deployment)
        if price.max_input_tokens is not None:
            return price.max_input_tokens
        listed = self._listed_price(model)
        return None if listed is None else listed.max_input_tokens

    def _opaque(
        self,
        model: str,
        count: InputCount,
        deployment: ModelPrice | None,
        asked: int | None = None,
    ) -> int:
        """``count``'s tokens, or with opaque parts (audio, files, input named by reference)
        the context window: a call's whole input fits in it (the provider refuses, unbilled,
        one that does not), whatever the parts hold."""
        if not count.opaque:
            return count.tokens
        window = self.max_input_tokens(model, deployment)
        if asked is not None and (window is None or asked > window):
            window = asked  # the call asked for a larger window (a beta): its input may fill it
        if window is None:
            raise ConfigError(
                "cannot bound the input of a call with audio or file parts, or input named by "
                f"reference, on model {shown(model)}: its context window is unknown; give its "
                "ModelPrice max_input_tokens=..."
            )
        return max(count.tokens, window)

    def input_tokens(
        self, model: str, messages: Sequence[object], tools: Sequence[object] | None = None
    ) -> int:
        """Input tokens of a chat call on ``model``, offline: OpenAI's own count (tiktoken), an
        upper bound for other models; images at a per-image bound, audio and files at the
        context window. Raises ``ConfigError`` when such a part cannot be bounded."""
        tokenizer = tokenizer_for(checked_model(model))
        count = tokenizer.messages(messages) + InputCount(tokenizer.tools(tools or ()))
        return self._opaque(model, count, None)

    def text_tokens(self, model: str, text: str) -> int:
        """Tokens of plain text for ``model`` (what a stream produced): OpenAI's own count,
        an upper bound for other models."""
        if not text:
            return 0
        return tokenizer_for(checked_model(model)).text(text)

    def shape_tokens(self, model: str, shape: CallShape) -> int:
        """Input tokens of a call of any shape: messages, tools, plain texts and extras."""
        return self._opaque(model, shape_input(checked_model(model), shape), None)

    def bound(
        self,
        model: str,
        shape: CallShape,
        *,
        allowance: int | None = None,
        deployment: ModelPrice | None = None,
        input_tokens: int | None = None,
    ) -> Estimate:
        """The worst-case cost of a call of ``shape`` on ``model``, rounded up to the nano-dollar.

        ``allowance`` is the output tokens per choice to assume when the call set no limit
        (default: ``default_output_tokens``, else the model's maximum output); a limit above the
        model's maximum output is cut to it. ``input_tokens`` skips counting them again. Input
        tokens cost the highest rate they may be billed at: the long-context tier the count
        reaches, a cache write's when the call marks content to cache, a media token's when it
        carries images or audio; output tokens at the audio output price when the model has a
        higher one. Raises ``ModelNotPriced`` when the model has no price, and ``ConfigError``
        when a generating call has no output allowance, or when the call's kind cannot be
        bounded without a ``per_call`` price. A call is held at the price of the costlier
        service tier it asks for (``shape.tier``, see ``tier_price``), plus its hosted tool
        calls (``shape.tool_calls``, else ``default_tool_calls``) at the highest fee of the
        hosted tools it offers; ``ModelNotPriced`` when nothing prices that tier or a tool.
        """
        price = self.tier_price(model, shape.tier, deployment)
        fees = tool_fees(model, shape.tools, price, self._listed_price(model))
        tool_calls = 0
        if fees:
            tool_calls = self._default_tools if shape.tool_calls is None else shape.tool_calls
        if shape.kind in FLAT_KINDS and price.per_call is None:
            raise ConfigError(
                f"cannot bound the cost of a {shape.kind} call on model {model!r} from its "
                f"arguments: give it a price per call, prices={{{model!r}: "
                "ModelPrice.flat(...)}"
            )
        if shape.kind == "speech" and price.per_character is None and price.per_call is None:
            raise ConfigError(
                f"cannot bound the cost of a speech call on model {model!r}: its price has no "
                f"per_character or per_call; pass prices={{{model!r}: ModelPrice(...)}}"
            )
        if input_tokens is None:
            counted = self._opaque(model, shape_input(model, shape), deployment, shape.window)
        else:
            counted = input_tokens
        output, from_call = 0, False
        if shape.kind in OUTPUT_KINDS:
            from_call = shape.output_limit is not None
            output_limit = shape.output_limit if from_call else allowance
            if output_limit is None:
                output_limit = self._default_output
            cap = self.max_output_tokens(model, deployment)
            if output_limit is None:
                output_limit = cap
            if output_limit is None:
                raise ConfigError(
                    f"no output allowance for model {model!r}: pass max_tokens, set "
                    "default_output_tokens, or give its ModelPrice a max_output_tokens"
                )
            if cap is not None and output_limit > cap:
                output_limit = cap  # the provider cannot produce more than its maximum
            output = output_limit
        units = shape.units if price.per_call is not None else 0
        characters = shape.characters if shape.kind == "speech" else 0
        worst = price.at(counted)
        cache_write, media = input_flags((shape.messages, shape.tools, shape.extra))
        dollars = counted * worst.worst_input_per_token(cache_write=cache_write, media=media)
        billed = output + predicted_tokens(model, shape)  # rejected predictions: output too
        dollars += shape.choices * billed * worst.worst_output_per_token()
        dollars += price.cost(0, 0, units=units, characters=characters)
        dollars += tool_calls * max((fee for _, fee in fees), default=Decimal(0))
        nanos = to_nanos(dollars, rounding="up", field="estimate")
        return Estimate(
            model,
            counted,
            output,
            nanos,
            from_call,
            shape.choices,
            units,
            characters,
            price,
            tier=shape.tier,
            tool_calls=tool_calls,
            tool_calls_from_call=shape.tool_calls is not None,
            tool_fees=fees,
        )

    def estimate(
        self,
        model: str,
        messages: Sequence[object],
        *,
        tools: Sequence[object] | None = None,
        max_output_tokens: int | None = None,
    ) -> Estimate:
        """The worst-case cost of a one-choice chat call on ``model`` (see ``bound``)."""
        shape = CallShape(
            "chat",
            messages=tuple(messages),
            tools=None if tools is None else tuple(tools),
            output_limit=max_output_tokens,
        )
        return self.bound(model, shape)

    def actual_cost(
        self,
        model: str,
        *,
        response_cost: object,
        input_tokens: int,
        output_tokens: int,
        units: int = 0,
        characters: int = 0,
        deployment: ModelPrice | None = None,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Decimal | None:
        """What a finished call cost, in dollars; ``None`` when nothing can price it.

        A configured price wins (it is what the operator pays); else LiteLLM's own cost of the
        response (``response_cost``, computed from prices the call's arguments cannot set),
        unless it is $0 for a usage the price book prices (LiteLLM 1.110.2 prices models it does
        not map, such as claude-opus-4-1, at $0); else the price the estimate used, times the
        usage. ``cache_read_tokens`` and ``cache_write_tokens`` are cached input tokens not
        counted in ``input_tokens`` (see ``ModelPrice.cost``).
        """
        usage = {
            "units": units,
            "characters": characters,
            "cache_read_tokens": cache_read_tokens,
            "cache_write_tokens": cache_write_tokens,
        }
        override = self.override(model)
        if override is not None:
            return override.cost(input_tokens, output_tokens, **usage)
        try:
            priced: Decimal | None = self.price(model, deployment).cost(
                input_tokens, output_tokens, **usage
            )
        except ConfigError:
            priced = None
        if (
            isinstance(response_cost, int | float)
            and not isinstance(response_cost, bool)
            and math.isfinite(response_cost)
            and response_cost >= 0
        ):
            if response_cost == 0 and priced:
                log.warning("litellm_cost_zero", model=model, charged=str(priced))
                return priced
            return Decimal(str(response_cost))
        return priced

    def warm_up(self) -> None:
        """Load the price snapshot and OpenAI's tokenizer now (a few hundred milliseconds, once
        per process) rather than during the first call."""
        self.input_tokens("gpt-4o-mini", [{"role": "user", "content": "warm up"}])
