"""Prices of LLM calls: the worst case before a call, the actual cost after it.

The worst case of a call is its input tokens (LiteLLM's token counter for the model: messages,
tools, response format, plain texts) at the input price, plus ``choices`` (``n`` x ``best_of``)
times its output allowance at the output price, plus what it pays per image, per query or per
character. The allowance is the largest output limit the call set (``max_tokens``,
``max_completion_tokens``, ``max_output_tokens``), else ``default_output_tokens``, else the
model's maximum output, and never more than that maximum. Estimates round up to the nano-dollar;
actual costs half-up.

Prices are looked up in this order: ``prices`` (negotiated prices, self-hosted models), the
prices of a Router deployment the app configured, LiteLLM's bundled price map, then
``default_price``. A call's own arguments (``input_cost_per_token=0``) never price it. A model
with no price is never free: it raises ``ConfigError`` naming the model. LiteLLM is imported on
first use, with ``LITELLM_LOCAL_MODEL_COST_MAP=True`` set unless the environment says otherwise,
so no price list is fetched from the internet and prices cannot change mid-process.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import ModuleType
from typing import Any, Literal, cast

import structlog

from tokenfence_asgi.errors import ConfigError
from tokenfence_asgi.money import MoneyInput, from_nanos, to_nanos

__all__ = ["CallKind", "CallShape", "Estimate", "ModelPrice", "PriceBook", "load_litellm"]

log = structlog.get_logger("tokenfence_asgi")

_MILLION = Decimal(1_000_000)
_MAX_PER_TOKEN = Decimal(1000)  # dollars; anything above is a typo, not a price
_MAX_TOKENS = 10_000_000
_CACHE_SIZE = 4096


def load_litellm() -> ModuleType:
    """Import LiteLLM with its bundled price map (no download); raises ``ImportError`` if absent."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    return litellm


def _per_token(name: str, value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | str | int | float):
        raise ConfigError(f"{name} must be dollars per token (Decimal, str, int), got {value!r}")
    try:
        price = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ConfigError(f"{name} must be a number of dollars, got {value!r}") from None
    if not price.is_finite() or price < 0 or price > _MAX_PER_TOKEN:
        raise ConfigError(f"{name} must be in [0, {_MAX_PER_TOKEN}] dollars, got {value!r}")
    return price


def _token_count(name: str, value: object, *, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _MAX_TOKENS:
        raise ConfigError(f"{name} must be an int in [{low}, {_MAX_TOKENS}], got {value!r}")
    return value


@dataclass(frozen=True, slots=True, init=False)
class ModelPrice:
    """Dollars per input and per output token, and the model's maximum output in tokens.

    ``ModelPrice("0.0000025", "0.00001")`` or ``ModelPrice.per_million("2.50", "10")``. Amounts
    are ``Decimal``, ``str`` or ``int`` dollars (a ``float`` is read via ``str``). Raises
    ``ConfigError`` for a negative, non-finite or absurd price.

    Calls not priced by the token (images, audio, rerank) take ``per_call`` (dollars per image
    generated, per rerank query, per transcription) and ``per_character`` (dollars per input
    character, text to speech): ``ModelPrice.flat("0.08")`` prices an image at 8 cents. A call
    whose cost cannot be bounded from its arguments (an image, a transcription) is refused unless
    its model has a ``per_call`` price.
    """

    input_per_token: Decimal
    output_per_token: Decimal
    max_output_tokens: int | None
    per_call: Decimal | None
    per_character: Decimal | None

    def __init__(
        self,
        input_per_token: MoneyInput,
        output_per_token: MoneyInput,
        *,
        max_output_tokens: int | None = None,
        per_call: MoneyInput | None = None,
        per_character: MoneyInput | None = None,
    ) -> None:
        object.__setattr__(self, "input_per_token", _per_token("input_per_token", input_per_token))
        object.__setattr__(
            self, "output_per_token", _per_token("output_per_token", output_per_token)
        )
        if max_output_tokens is not None:
            _token_count("max_output_tokens", max_output_tokens, low=1)
        object.__setattr__(self, "max_output_tokens", max_output_tokens)
        object.__setattr__(
            self, "per_call", None if per_call is None else _per_token("per_call", per_call)
        )
        object.__setattr__(
            self,
            "per_character",
            None if per_character is None else _per_token("per_character", per_character),
        )

    @classmethod
    def flat(cls, per_call: MoneyInput) -> ModelPrice:
        """A price of ``per_call`` dollars per call (per image for image generation)."""
        return cls(0, 0, per_call=per_call)

    @classmethod
    def per_million(
        cls, input: MoneyInput, output: MoneyInput, *, max_output_tokens: int | None = None
    ) -> ModelPrice:
        """A price quoted in dollars per million tokens, as providers publish them."""
        return cls(
            _per_token("input", input) / _MILLION,
            _per_token("output", output) / _MILLION,
            max_output_tokens=max_output_tokens,
        )

    def cost(
        self, input_tokens: int, output_tokens: int, *, units: int = 0, characters: int = 0
    ) -> Decimal:
        """Exact dollars for the given usage (not rounded): tokens, plus ``units`` calls or
        images at ``per_call`` and ``characters`` at ``per_character``."""
        total = input_tokens * self.input_per_token + output_tokens * self.output_per_token
        if units and self.per_call is not None:
            total += units * self.per_call
        if characters and self.per_character is not None:
            total += characters * self.per_character
        return total


CallKind = Literal[
    "chat", "responses", "text", "embedding", "image", "speech", "transcription", "rerank", "other"
]
"""What a paid call is, as far as its price goes (the planner's vocabulary, provider-neutral)."""

OUTPUT_KINDS: frozenset[CallKind] = frozenset({"chat", "responses", "text"})
"""Kinds that generate tokens: their worst case needs an output allowance."""

FLAT_KINDS: frozenset[CallKind] = frozenset({"image", "transcription", "other"})
"""Kinds whose cost cannot be bounded from their arguments: refused without a ``per_call`` price."""


@dataclass(frozen=True, slots=True)
class CallShape:
    """What bounds the cost of one call, whatever its provider or client.

    ``messages`` are chat messages, ``texts`` plain-text input (a prompt, embedding input, a
    rerank query and its documents, a text to speak), ``tools`` the tools offered and ``extra``
    other input the provider counts (a response format's schema, instructions), counted as the
    text of their JSON. ``output_limit`` is the largest output limit the call set (``None``: it
    set none), ``choices`` how many outputs it asks for (``n`` x ``best_of``), ``units`` images or
    calls priced ``per_call``, ``characters`` input characters priced ``per_character``.
    """

    kind: CallKind
    messages: tuple[object, ...] = ()
    texts: tuple[str, ...] = ()
    tools: tuple[object, ...] | None = None
    extra: tuple[object, ...] = ()
    output_limit: int | None = None
    choices: int = 1
    units: int = 0
    characters: int = 0
    tokens: int = 0
    """Input given as token ids (embeddings, prompts): counted as they are."""


@dataclass(frozen=True, slots=True)
class Estimate:
    """The worst-case cost of one call on one model.

    ``output_tokens`` is the allowance per choice the estimate assumed; ``from_call`` is true
    when the call set it (``max_tokens``), false when the allowance was imposed and should be
    written into the call. ``choices``, ``units`` and ``characters`` are the shape's.
    """

    model: str
    input_tokens: int
    output_tokens: int
    amount_nanos: int
    from_call: bool
    choices: int = 1
    units: int = 0
    characters: int = 0
    price: ModelPrice | None = None

    def cost_of(self, output_tokens: int) -> Decimal:
        """Dollars of this call had it produced ``output_tokens`` in all (input included)."""
        if self.price is None:
            return from_nanos(self.amount_nanos)
        return self.price.cost(
            self.input_tokens, output_tokens, units=self.units, characters=self.characters
        )


def _stripped(model: str) -> list[str]:
    """``model`` and what remains after each leading ``provider/``: lookup keys, best first."""
    keys = [model]
    while "/" in keys[-1]:
        keys.append(keys[-1].split("/", 1)[1])
    return keys


def _optional_price(entry: Mapping[str, Any], *names: str) -> object:
    for name in names:
        value = entry.get(name)
        if value is not None:
            return value
    return None


class PriceBook:
    """Prices by model, and the estimates and costs computed from them.

    ``prices`` maps a model name (as passed to LiteLLM, or without its ``provider/`` prefix) to
    a ``ModelPrice``; ``default_price`` prices every model nothing else prices (without it such
    a model raises ``ConfigError``); ``default_output_tokens`` is the output allowance of a
    call without ``max_tokens``, instead of the model's maximum output.

    Prices are looked up in this order: ``prices``, the prices of a LiteLLM ``Router``
    deployment the app configured (passed as ``deployment``), LiteLLM's bundled price map, then
    ``default_price``. A call's own arguments never price it.
    """

    __slots__ = ("_cache", "_default_output", "_default_price", "_litellm", "_overrides")

    def __init__(
        self,
        prices: Mapping[str, ModelPrice] | None = None,
        *,
        default_price: ModelPrice | None = None,
        default_output_tokens: int | None = None,
    ) -> None:
        overrides = dict(prices or {})
        for model, price in overrides.items():
            if not isinstance(model, str) or not model:
                raise ConfigError(f"prices: model names must be non-empty strings, got {model!r}")
            if not isinstance(price, ModelPrice):
                raise ConfigError(f"prices[{model!r}] must be a ModelPrice, got {price!r}")
        if default_price is not None and not isinstance(default_price, ModelPrice):
            raise ConfigError(f"default_price must be a ModelPrice or None, got {default_price!r}")
        if default_output_tokens is not None:
            _token_count("default_output_tokens", default_output_tokens, low=1)
        self._overrides = overrides
        self._default_price = default_price
        self._default_output = default_output_tokens
        self._litellm: ModuleType | None = None
        self._cache: dict[str, tuple[tuple[object, ...], ModelPrice]] = {}

    @property
    def default_output_tokens(self) -> int | None:
        """The output allowance of a call that sets none (``None``: the model's maximum)."""
        return self._default_output

    @property
    def litellm(self) -> ModuleType:
        """The LiteLLM module, imported on first use."""
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
        """The price of one exact key of LiteLLM's price map (no prefix stripping), or ``None``.

        A LiteLLM ``Router`` registers each deployment's configured prices there under the
        deployment's id, which a caller cannot write: the way to trust a deployment's prices.
        """
        model_cost = cast("dict[str, dict[str, Any]]", self.litellm.model_cost)
        entry = model_cost.get(key)
        if not isinstance(entry, Mapping):
            return None
        raw = (
            entry.get("input_cost_per_token"),
            entry.get("output_cost_per_token"),
            entry.get("max_output_tokens") or entry.get("max_tokens"),
            _optional_price(entry, "input_cost_per_query", "output_cost_per_image"),
            entry.get("input_cost_per_character"),
        )
        cached = self._cache.get(key)
        if cached is not None and cached[0] == raw:
            return cached[1]
        if raw[0] is None or raw[1] is None:
            if raw[3] is None and raw[4] is None:
                return None
            raw = (raw[0] or 0, raw[1] or 0, *raw[2:])
        max_out = raw[2] if isinstance(raw[2], int) and 0 < raw[2] <= _MAX_TOKENS else None
        try:
            price = ModelPrice(
                cast("MoneyInput", raw[0]),
                cast("MoneyInput", raw[1]),
                max_output_tokens=max_out,
                per_call=cast("MoneyInput | None", raw[3]),
                per_character=cast("MoneyInput | None", raw[4]),
            )
        except ConfigError:
            log.warning("price_map_entry_invalid", model=key)
            return None
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = (raw, price)
        return price

    def _mapped(self, model: str) -> ModelPrice | None:
        for key in _stripped(model):
            found = self.mapped_entry(key)
            if found is not None:
                return found
        return None

    def price(self, model: str, deployment: ModelPrice | None = None) -> ModelPrice:
        """The price of ``model``; ``deployment`` is a trusted Router deployment's price.

        Raises ``ConfigError`` when nothing prices the model.
        """
        found = self.override(model)
        if found is not None:
            return found
        if deployment is not None:
            return deployment
        found = self._mapped(model)
        if found is not None:
            return found
        if self._default_price is not None:
            return self._default_price
        raise ConfigError(
            f"no price for model {model!r}: LiteLLM's price map does not list it; pass "
            f"prices={{{model!r}: ModelPrice(...)}} or default_price=ModelPrice(...)"
        )

    def max_output_tokens(self, model: str, deployment: ModelPrice | None = None) -> int | None:
        """The most tokens ``model`` can produce per choice, where a price knows it."""
        price = self.price(model, deployment)
        if price.max_output_tokens is not None:
            return price.max_output_tokens
        mapped = self._mapped(model)
        return None if mapped is None else mapped.max_output_tokens

    def input_tokens(
        self, model: str, messages: Sequence[object], tools: Sequence[object] | None = None
    ) -> int:
        """Input tokens of a chat call, counted by LiteLLM for ``model`` (no image downloads)."""
        try:
            count = self.litellm.token_counter(
                model=model,
                messages=list(messages),
                tools=list(tools) if tools else None,
                use_default_image_token_count=True,
            )
        except Exception as exc:  # a message shape the counter does not know: never count less
            log.warning("token_count_failed", model=model, error=repr(exc))
            return sum(len(repr(part)) for part in (*messages, *(tools or ())))
        return int(count)

    def text_tokens(self, model: str, text: str) -> int:
        """Tokens of plain text for ``model`` (what a stream produced), counted by LiteLLM."""
        if not text:
            return 0
        try:
            return int(self.litellm.token_counter(model=model, text=text))
        except Exception as exc:
            log.warning("token_count_failed", model=model, error=repr(exc))
            return len(text)

    def shape_tokens(self, model: str, shape: CallShape) -> int:
        """Input tokens of a call of any shape: messages, tools, plain texts and extras."""
        total = shape.tokens
        if shape.messages or shape.tools:
            total += self.input_tokens(model, shape.messages, shape.tools)
        for text in shape.texts:
            total += self.text_tokens(model, text)
        for part in shape.extra:
            text = part if isinstance(part, str) else json.dumps(part, default=repr)
            total += self.text_tokens(model, text)
        return total

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
        model's maximum output is cut to it. ``input_tokens`` skips counting them again. Raises
        ``ConfigError`` when the model has no price, when a generating call has no output
        allowance, or when the call's kind cannot be bounded without a ``per_call`` price.
        """
        price = self.price(model, deployment)
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
        counted = self.shape_tokens(model, shape) if input_tokens is None else input_tokens
        output, from_call = 0, False
        if shape.kind in OUTPUT_KINDS:
            from_call = shape.output_limit is not None
            output_limit = shape.output_limit if from_call else allowance
            if output_limit is None:
                output_limit = self._default_output
            cap = price.max_output_tokens or self._mapped_max_output(model)
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
        dollars = price.cost(counted, shape.choices * output, units=units, characters=characters)
        nanos = to_nanos(dollars, rounding="up", field="estimate")
        return Estimate(
            model, counted, output, nanos, from_call, shape.choices, units, characters, price
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

    def _mapped_max_output(self, model: str) -> int | None:
        mapped = self._mapped(model)
        return None if mapped is None else mapped.max_output_tokens

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
    ) -> Decimal | None:
        """What a finished call cost, in dollars; ``None`` when nothing can price it.

        A configured price wins (it is what the operator pays); else LiteLLM's own cost of the
        response (``response_cost``, computed from prices the call's arguments cannot set),
        unless it is $0 for a usage the price book prices (LiteLLM 1.110.2 prices models it does
        not map, such as claude-opus-4-1, at $0); else the price the estimate used, times the
        usage.
        """
        override = self.override(model)
        if override is not None:
            return override.cost(input_tokens, output_tokens, units=units, characters=characters)
        try:
            priced: Decimal | None = self.price(model, deployment).cost(
                input_tokens, output_tokens, units=units, characters=characters
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
        """Load LiteLLM and its default tokenizer now (about half a second, once per process)."""
        self.input_tokens("gpt-4o-mini", [{"role": "user", "content": "warm up"}])
