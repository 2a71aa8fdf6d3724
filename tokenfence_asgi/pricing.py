"""Prices of LLM calls: the worst case before a call, the actual cost after it.

The worst case of a chat call is its input tokens (LiteLLM's token counter for the model, the
messages and the tools) at the input price, plus its output allowance at the output price. The
allowance is the call's ``max_tokens`` / ``max_completion_tokens``, else ``default_output_tokens``,
else the model's maximum output. Estimates round up to the nano-dollar; actual costs half-up.

Prices are looked up in this order: ``prices`` (negotiated prices, self-hosted models), the
call's own ``input_cost_per_token`` / ``output_cost_per_token`` (a Router deployment's), LiteLLM's
bundled price map, then ``default_price``. A model with no price is never free: it raises
``ConfigError`` naming the model. LiteLLM is imported on first use, with
``LITELLM_LOCAL_MODEL_COST_MAP=True`` set unless the environment says otherwise, so no price
list is fetched from the internet and prices cannot change mid-process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import ModuleType
from typing import Any, cast

import structlog

from tokenfence_asgi.errors import ConfigError
from tokenfence_asgi.money import MoneyInput, to_nanos

__all__ = ["Estimate", "ModelPrice", "PriceBook", "load_litellm"]

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
    """

    input_per_token: Decimal
    output_per_token: Decimal
    max_output_tokens: int | None

    def __init__(
        self,
        input_per_token: MoneyInput,
        output_per_token: MoneyInput,
        *,
        max_output_tokens: int | None = None,
    ) -> None:
        object.__setattr__(self, "input_per_token", _per_token("input_per_token", input_per_token))
        object.__setattr__(
            self, "output_per_token", _per_token("output_per_token", output_per_token)
        )
        if max_output_tokens is not None:
            _token_count("max_output_tokens", max_output_tokens, low=1)
        object.__setattr__(self, "max_output_tokens", max_output_tokens)

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

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        """Exact dollars for the given token counts (not rounded)."""
        return input_tokens * self.input_per_token + output_tokens * self.output_per_token


@dataclass(frozen=True, slots=True)
class Estimate:
    """The worst-case cost of one call on one model.

    ``output_tokens`` is the allowance the estimate assumed; ``from_call`` is true when the call
    set it (``max_tokens``), false when the call had none and the allowance should be imposed.
    """

    model: str
    input_tokens: int
    output_tokens: int
    amount_nanos: int
    from_call: bool


def _stripped(model: str) -> list[str]:
    """``model`` and what remains after each leading ``provider/``: lookup keys, best first."""
    keys = [model]
    while "/" in keys[-1]:
        keys.append(keys[-1].split("/", 1)[1])
    return keys


class PriceBook:
    """Prices by model, and the estimates and costs computed from them.

    ``prices`` maps a model name (as passed to LiteLLM, or without its ``provider/`` prefix) to
    a ``ModelPrice``; ``default_price`` prices every model nothing else prices (without it such
    a model raises ``ConfigError``); ``default_output_tokens`` is the output allowance of a
    call without ``max_tokens``, instead of the model's maximum output.
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

    def _mapped(self, model: str) -> ModelPrice | None:
        model_cost = cast("dict[str, dict[str, Any]]", self.litellm.model_cost)
        for key in _stripped(model):
            entry = model_cost.get(key)
            if entry is None:
                continue
            raw = (
                entry.get("input_cost_per_token"),
                entry.get("output_cost_per_token"),
                entry.get("max_output_tokens") or entry.get("max_tokens"),
            )
            cached = self._cache.get(key)
            if cached is not None and cached[0] == raw:
                return cached[1]
            if raw[0] is None or raw[1] is None:
                continue
            max_out = raw[2] if isinstance(raw[2], int) and 0 < raw[2] <= _MAX_TOKENS else None
            price = ModelPrice(raw[0], raw[1], max_output_tokens=max_out)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = (raw, price)
            return price
        return None

    def price(self, model: str, request: Mapping[str, object] | None = None) -> ModelPrice:
        """The price of ``model``; ``request`` is the call's kwargs (for deployment prices).

        Raises ``ConfigError`` when nothing prices the model.
        """
        found = self.override(model)
        if found is not None:
            return found
        if request is not None:
            inp, out = request.get("input_cost_per_token"), request.get("output_cost_per_token")
            if inp is not None and out is not None:
                return ModelPrice(cast("MoneyInput", inp), cast("MoneyInput", out))
        found = self._mapped(model)
        if found is not None:
            return found
        if self._default_price is not None:
            return self._default_price
        raise ConfigError(
            f"no price for model {model!r}: LiteLLM's price map does not list it; pass "
            f"prices={{{model!r}: ModelPrice(...)}} or default_price=ModelPrice(...)"
        )

    def input_tokens(
        self, model: str, messages: Sequence[object], tools: Sequence[object] | None = None
    ) -> int:
        """Input tokens of a chat call, counted by LiteLLM for ``model`` (no image downloads)."""
        try:
            count = self.litellm.token_counter(
                model=model, messages=list(messages), tools=list(tools) if tools else None,
                use_default_image_token_count=True,
            )  # fmt: skip
        except Exception as exc:  # a message shape the counter does not know: never count less
            log.warning("token_count_failed", model=model, error=repr(exc))
            return sum(len(repr(part)) for part in (*messages, *(tools or ())))
        return int(count)

    def text_tokens(self, model: str, text: str) -> int:
        """Tokens of plain text for ``model`` (what a stream produced), counted by LiteLLM."""
        try:
            return int(self.litellm.token_counter(model=model, text=text))
        except Exception as exc:
            log.warning("token_count_failed", model=model, error=repr(exc))
            return len(text)

    def estimate(
        self,
        model: str,
        messages: Sequence[object],
        *,
        tools: Sequence[object] | None = None,
        max_output_tokens: int | None = None,
        request: Mapping[str, object] | None = None,
    ) -> Estimate:
        """The worst-case cost of a chat call on ``model``, rounded up to the nano-dollar.

        Raises ``ConfigError`` when the model has no price, or no output allowance is known
        (no ``max_tokens``, no ``default_output_tokens``, no maximum output in the price map).
        """
        price = self.price(model, request)
        input_tokens = self.input_tokens(model, messages, tools)
        from_call = max_output_tokens is not None
        allowance = max_output_tokens if from_call else self._default_output
        if allowance is None:
            allowance = price.max_output_tokens or self._mapped_max_output(model)
        if allowance is None:
            raise ConfigError(
                f"no output allowance for model {model!r}: pass max_tokens, set "
                "default_output_tokens, or give its ModelPrice a max_output_tokens"
            )
        cap = price.max_output_tokens
        if cap is not None and allowance > cap:
            allowance = cap  # the provider cannot produce more than its maximum
        nanos = to_nanos(price.cost(input_tokens, allowance), rounding="up", field="estimate")
        return Estimate(model, input_tokens, allowance, nanos, from_call)

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
        request: Mapping[str, object] | None = None,
    ) -> Decimal | None:
        """What a finished call cost, in dollars; ``None`` when nothing can price it.

        A configured price wins (it is what the operator pays); else LiteLLM's own cost of the
        response (``response_cost``); else the price the estimate used, times the usage.
        """
        override = self.override(model)
        if override is not None:
            return override.cost(input_tokens, output_tokens)
        if (
            isinstance(response_cost, int | float)
            and not isinstance(response_cost, bool)
            and math.isfinite(response_cost)
            and response_cost >= 0
        ):
            return Decimal(str(response_cost))
        try:
            return self.price(model, request).cost(input_tokens, output_tokens)
        except ConfigError:
            return None

    def warm_up(self) -> None:
        """Load LiteLLM and its default tokenizer now (about half a second, once per process)."""
        self.input_tokens("gpt-4o-mini", [{"role": "user", "content": "warm up"}])
