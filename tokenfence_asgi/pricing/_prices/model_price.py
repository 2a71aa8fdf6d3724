"""A model's price per token, as configured or as the snapshot gives it, and model names.

``ModelPrice`` is public (re-exported by ``tokenfence_asgi.pricing.book``); ``snapshot_price``
turns a snapshot entry into one; ``checked_model`` refuses names no price should match.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from tokenfence_asgi.errors import ConfigError, ModelNotPriced
from tokenfence_asgi.money import MoneyInput
from tokenfence_asgi.pricing._prices import snapshot

__all__ = ["MAX_TOKENS", "ModelPrice", "checked_model", "shown", "snapshot_price", "token_count"]

_MILLION = Decimal(1_000_000)
_MAX_PER_TOKEN = Decimal(1000)  # dollars; anything above is a typo, not a price
MAX_TOKENS = 10_000_000
_MAX_NAME = 512


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


def token_count(name: str, value: object, *, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_TOKENS:
        raise ConfigError(f"{name} must be an int in [{low}, {MAX_TOKENS}], got {value!r}")
    return value


def _optional(name: str, value: MoneyInput | None) -> Decimal | None:
    return None if value is None else _per_token(name, value)


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

    Optional, as the snapshot fills them: ``cache_read_per_token``, ``cache_write_per_token``
    (a 5-minute cache write) and ``cache_write_1h_per_token`` (``None``: the input price);
    ``media_input_per_token``, the highest price of an audio or image input token;
    ``audio_output_per_token``, the price of an audio output token (a model that can answer in
    audio is held at it, when it is higher);
    ``max_input_tokens``, the context window (bounds audio and file inputs); ``tiers``,
    ``(start, price)`` pairs: a call with more than ``start`` input tokens pays ``price`` for
    every token (the long-context "cliff" of Anthropic's and OpenAI's price lists);
    ``per_tool_call``, dollars per call of a hosted tool the provider runs and bills apart
    (``{"web_search": "0.01"}``; names as ``pricing.variants.hosted_tool`` gives them).
    """

    input_per_token: Decimal
    output_per_token: Decimal
    max_output_tokens: int | None
    per_call: Decimal | None
    per_character: Decimal | None
    cache_read_per_token: Decimal | None
    cache_write_per_token: Decimal | None
    cache_write_1h_per_token: Decimal | None
    media_input_per_token: Decimal | None
    audio_output_per_token: Decimal | None
    max_input_tokens: int | None
    tiers: tuple[tuple[int, ModelPrice], ...]
    tool_fees: tuple[tuple[str, Decimal], ...]

    def __init__(
        self,
        input_per_token: MoneyInput,
        output_per_token: MoneyInput,
        *,
        max_output_tokens: int | None = None,
        per_call: MoneyInput | None = None,
        per_character: MoneyInput | None = None,
        cache_read_per_token: MoneyInput | None = None,
        cache_write_per_token: MoneyInput | None = None,
        cache_write_1h_per_token: MoneyInput | None = None,
        media_input_per_token: MoneyInput | None = None,
        audio_output_per_token: MoneyInput | None = None,
        max_input_tokens: int | None = None,
        tiers: Iterable[tuple[int, ModelPrice]] = (),
        per_tool_call: Mapping[str, MoneyInput] | None = None,
    ) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "input_per_token", _per_token("input_per_token", input_per_token))
        setattr_(self, "output_per_token", _per_token("output_per_token", output_per_token))
        for name, count in (
            ("max_output_tokens", max_output_tokens),
            ("max_input_tokens", max_input_tokens),
        ):
            if count is not None:
                token_count(name, count, low=1)
            setattr_(self, name, count)
        for name, value in (
            ("per_call", per_call),
            ("per_character", per_character),
            ("cache_read_per_token", cache_read_per_token),
            ("cache_write_per_token", cache_write_per_token),
            ("cache_write_1h_per_token", cache_write_1h_per_token),
            ("media_input_per_token", media_input_per_token),
            ("audio_output_per_token", audio_output_per_token),
        ):
            setattr_(self, name, _optional(name, value))
        checked: list[tuple[int, ModelPrice]] = []
        for tier in tiers:
            if (
                not isinstance(tier, tuple)
                or len(tier) != 2
                or not isinstance(tier[1], ModelPrice)
                or tier[1].tiers
            ):
                raise ConfigError(f"tiers must be (start, ModelPrice) pairs, got {tier!r}")
            checked.append((token_count("tiers start", tier[0], low=1), tier[1]))
        setattr_(self, "tiers", tuple(sorted(checked, key=lambda tier: tier[0])))
        fees: list[tuple[str, Decimal]] = []
        for tool, fee in dict(per_tool_call or {}).items():
            if not isinstance(tool, str) or not tool:
                raise ConfigError(f"per_tool_call: tool names must be strings, got {tool!r}")
            fees.append((tool, _per_token(f"per_tool_call[{tool!r}]", fee)))
        setattr_(self, "tool_fees", tuple(sorted(fees)))

    def tool_fee(self, tool: str) -> Decimal | None:
        """Dollars per call of hosted tool ``tool`` (``None``: this price does not say)."""
        for name, fee in self.tool_fees:
            if name == tool:
                return fee
        return None

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

    def at(self, input_tokens: int) -> ModelPrice:
        """The price a call with ``input_tokens`` in all (cached included) pays per token: the
        highest tier it passes, else this price."""
        chosen = self
        for start, price in self.tiers:
            if input_tokens > start:
                chosen = price
        return chosen

    def worst_input_per_token(self, *, cache_write: bool = False, media: bool = False) -> Decimal:
        """The most one input token can cost: the input price, or a cache write's (``cache_write``,
        the call marks content to cache) or a media token's (``media``) when higher."""
        rates: list[Decimal | None] = [self.input_per_token]
        if cache_write:
            rates += [self.cache_write_per_token, self.cache_write_1h_per_token]
        if media:
            rates.append(self.media_input_per_token)
        return max(rate for rate in rates if rate is not None)

    def worst_output_per_token(self) -> Decimal:
        """The most one output token can cost: the output price, or an audio token's."""
        if self.audio_output_per_token is None:
            return self.output_per_token
        return max(self.output_per_token, self.audio_output_per_token)

    def cost(
        self,
        input_tokens: int,
        output_tokens: int,
        *,
        units: int = 0,
        characters: int = 0,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
    ) -> Decimal:
        """Exact dollars for the given usage (not rounded): tokens, plus ``units`` calls or
        images at ``per_call`` and ``characters`` at ``per_character``.

        ``input_tokens`` are those billed at the plain input price; cached reads and writes,
        when the provider reports them apart, go in ``cache_read_tokens``,
        ``cache_write_tokens`` (5 minutes) and ``cache_write_1h_tokens``. The tier is chosen
        by all of them together.
        """
        cached = cache_read_tokens + cache_write_tokens + cache_write_1h_tokens
        price = self.at(input_tokens + cached)
        total = input_tokens * price.input_per_token + output_tokens * price.output_per_token
        if cached:
            base = price.input_per_token
            total += cache_read_tokens * _or(price.cache_read_per_token, base)
            total += cache_write_tokens * _or(price.cache_write_per_token, base)
            total += cache_write_1h_tokens * _or(price.cache_write_1h_per_token, base)
        if units and self.per_call is not None:
            total += units * self.per_call
        if characters and self.per_character is not None:
            total += characters * self.per_character
        return total


def _or(value: Decimal | None, default: Decimal) -> Decimal:
    return default if value is None else value


def shown(model: str) -> str:
    return repr(model if len(model) <= 100 else model[:100] + "...")


def checked_model(model: object) -> str:
    """``model`` if it can name a priced model; else ``ModelNotPriced`` saying why.

    A name with leading or trailing whitespace or a control or format character is refused,
    never stripped: the provider would bill the stripped name, or reject the call.
    """
    if not isinstance(model, str):
        raise ModelNotPriced(
            f"a model name must be a string, got {type(model).__name__}",
            models=(repr(model)[:100],),
        )
    if not model:
        raise ModelNotPriced("the model name is empty", models=("",))
    if len(model) > _MAX_NAME:
        raise ModelNotPriced(
            f"model name {shown(model)} is {len(model)} characters long; at most {_MAX_NAME}",
            models=(model[:_MAX_NAME],),
        )
    if model != model.strip() or any(
        unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in model
    ):
        raise ModelNotPriced(
            f"model name {shown(model)} has leading or trailing whitespace or control or invisible "
            "characters; pass the exact model name (it is not stripped: the provider would "
            "bill another name than the one priced)",
            models=(model,),
        )
    return model


_TOOL_FEES = {"web_searches_kcount": "web_search", "storage_searches_kcount": "file_search"}
"""Snapshot prices per thousand hosted tool calls, and the tool each prices."""


def _per_thousand(value: snapshot.PriceValue) -> Decimal:
    """Dollars per call of a snapshot price per thousand calls (a tiered one at its highest)."""
    highest = value if isinstance(value, Decimal) else max(value[0], *(p for _, p in value[1]))
    return highest / 1000


def _per_million(value: snapshot.PriceValue | None, tier: int | None) -> Decimal | None:
    """Dollars per token of a snapshot price (per million), at input tier ``tier``."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value / _MILLION
    base, tiers = value
    chosen = base
    for start, price in tiers:
        if tier is not None and tier >= start:
            chosen = price
    return chosen / _MILLION


def snapshot_price(entry: snapshot.SnapshotModel) -> ModelPrice | None:
    """A snapshot model's standard price as a ``ModelPrice`` (``None``: it has no token or
    character price, e.g. a free moderation model or a per-second transcription model)."""
    prices = entry.prices
    if not any(key in prices for key in ("input_mtok", "output_mtok", "input_mchars")):
        return None
    starts = sorted(
        {start for value in prices.values() if isinstance(value, tuple) for start, _ in value[1]}
    )

    def at(tier: int | None, **extra: Any) -> ModelPrice:
        media = [
            _per_million(prices.get(key), tier)
            for key in ("input_audio_mtok", "input_image_mtok")
            if key in prices
        ]
        return ModelPrice(
            _per_million(prices.get("input_mtok"), tier) or 0,
            _per_million(prices.get("output_mtok"), tier) or 0,
            cache_read_per_token=_per_million(prices.get("cache_read_mtok"), tier),
            cache_write_per_token=_per_million(prices.get("cache_write_mtok"), tier),
            cache_write_1h_per_token=_per_million(prices.get("cache_write_1h_mtok"), tier),
            media_input_per_token=max((m for m in media if m is not None), default=None),
            audio_output_per_token=_per_million(prices.get("output_audio_mtok"), tier),
            **extra,
        )

    return at(
        None,
        max_output_tokens=entry.max_output_tokens,
        max_input_tokens=entry.context_window,
        per_character=_per_million(prices.get("input_mchars"), None),
        tiers=[(start, at(start)) for start in starts],
        per_tool_call={
            tool: _per_thousand(prices[key]) for key, tool in _TOOL_FEES.items() if key in prices
        },
    )
