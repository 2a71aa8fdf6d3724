"""A paid call as the price book sees it: its kind, its ``CallShape`` and its ``Estimate``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from tokenfence_asgi.money import from_nanos
from tokenfence_asgi.pricing._prices.model_price import ModelPrice
from tokenfence_asgi.pricing.variants import Tier

__all__ = ["FLAT_KINDS", "OUTPUT_KINDS", "CallKind", "CallShape", "Estimate"]


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
    references: int = 0
    """Input the call names instead of sending (an earlier response, a conversation, a stored
    prompt or item): bounded by the model's context window, like an audio or file part."""
    tier: Tier | None = None
    """The costlier service tier the call asks for (``pricing.variants.call_tier``)."""
    tool_calls: int | None = None
    """The most hosted tool calls the call allows (``max_tool_calls``); ``None``: it set none."""
    window: int | None = None
    """A context window the call asks for beyond the model's listed one (Anthropic's
    ``context-1m`` beta): it bounds opaque and by-reference input instead."""
    predicted: tuple[str, ...] = ()
    """A predicted output's texts (``prediction``): the tokens of it the model rejects are
    billed as output on top of what it generates."""


@dataclass(frozen=True, slots=True)
class Estimate:
    """The worst-case cost of one call on one model.

    ``output_tokens`` is the allowance per choice the estimate assumed; ``from_call`` is true
    when the call set it (``max_tokens``), false when the allowance was imposed and should be
    written into the call. ``choices``, ``units`` and ``characters`` are the shape's.
    ``price`` is the price of the tier held (``tier``); ``tool_calls`` the hosted tool calls
    held (the call's limit when ``tool_calls_from_call``, else an allowance to write into it),
    each at the highest of ``tool_fees`` (dollars per call of each hosted tool offered).
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
    tier: Tier | None = None
    tool_calls: int = 0
    tool_calls_from_call: bool = False
    tool_fees: tuple[tuple[str, Decimal], ...] = ()

    def cost_of(self, output_tokens: int, hosted: Mapping[str, int] | None = None) -> Decimal:
        """Dollars of this call had it produced ``output_tokens`` in all (input included) and
        made the ``hosted`` tool calls."""
        if self.price is None:
            return from_nanos(self.amount_nanos)
        tokens = self.price.cost(
            self.input_tokens, output_tokens, units=self.units, characters=self.characters
        )
        return tokens + self.hosted_cost(hosted or {})

    def hosted_cost(self, calls: Mapping[str, int]) -> Decimal:
        """Dollars of the hosted tool calls a response reports, by tool, at the fees held (a
        tool the call did not offer at the highest of them)."""
        fees = dict(self.tool_fees)
        highest = max(fees.values(), default=Decimal(0))
        return sum(
            (count * fees.get(tool, highest) for tool, count in calls.items() if count > 0),
            Decimal(0),
        )
