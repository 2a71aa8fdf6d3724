"""A paid call as the price book sees it: its kind, its ``CallShape`` and its ``Estimate``."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from tokenfence_asgi.money import from_nanos
from tokenfence_asgi.pricing._prices.model_price import ModelPrice

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
