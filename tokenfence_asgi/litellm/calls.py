"""LiteLLM's call types as the planner sees them: each call's shape, and what it may not set.

``kind_of(call_type)`` names the kind of a LiteLLM call type: chat (``acompletion``,
``aanthropic_messages``), the Responses API, text completion, embeddings, images, transcription,
speech and rerank, whose kwargs ``tokenfence_asgi.calls.shapes.shape_of`` turns into a ``CallShape``
(the OpenAI request format, which the SDK guards read too). Other call types that may be paid
are ``"other"``: the planner refuses them unless their model has a ``per_call`` price. Calls
that cost nothing (listing, retrieving, deleting, moderation) are ``None``: not fenced.

``sanitized(kwargs, trusted)`` removes what would let a call's own arguments lower its price:
``input_cost_per_token=0`` and every other ``*cost_per*`` argument, ``base_model``, and prices
in ``model_info`` that LiteLLM did not register itself (a Router registers each deployment's
configured prices in ``litellm.model_cost`` under the deployment's id, which no call can write).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokenfence_asgi.calls.shapes import OUTPUT_LIMIT_KEYS, output_limit_keys, shape_of
from tokenfence_asgi.pricing.call import CallKind

__all__ = ["OUTPUT_LIMIT_KEYS", "kind_of", "output_limit_keys", "sanitized", "shape_of"]

_KINDS: dict[str, CallKind] = {
    "acompletion": "chat",
    "aanthropic_messages": "chat",
    "anthropic_messages": "chat",
    "aresponses": "responses",
    "atext_completion": "text",
    "aembedding": "embedding",
    "aimage_generation": "image",
    "aimage_edit": "image",
    "aimage_variation": "image",
    "atranscription": "transcription",
    "aspeech": "speech",
    "arerank": "rerank",
}
_FREE_PREFIXES = ("aget_", "adelete_", "alist_", "aretrieve_", "acancel_", "afile_")
_FREE = frozenset({"amoderation", "acount_tokens", "avideo_retrieve", "avideo_content"})

_PRICE_KEYS = frozenset({"base_model", "custom_pricing", "model_info"})


def kind_of(call_type: str) -> CallKind | None:
    """The kind of a LiteLLM call type (``"acompletion"`` -> ``"chat"``); ``None``: free."""
    kind = _KINDS.get(call_type)
    if kind is not None:
        return kind
    if call_type in _FREE or call_type.startswith(_FREE_PREFIXES):
        return None
    return "other"


def _cost_key(key: str) -> bool:
    return "cost_per" in key or key in _PRICE_KEYS


def sanitized(kwargs: Mapping[str, object], registered: Mapping[str, Any]) -> dict[str, object]:
    """``kwargs`` without the arguments that would set the call's price (see the module doc).

    ``registered`` is LiteLLM's price map: a ``model_info`` whose ``id`` it lists (a Router
    deployment's) is kept with the registered prices; any other is dropped.
    """
    clean = {key: value for key, value in kwargs.items() if not _cost_key(key)}
    info = _trusted_info(kwargs.get("model_info"), registered)
    if info is not None:
        clean["model_info"] = info
    metadata = kwargs.get("metadata")
    if isinstance(metadata, Mapping) and "model_info" in metadata:
        clean_metadata = dict(metadata)
        meta_info = _trusted_info(metadata.get("model_info"), registered)
        if meta_info is None:
            del clean_metadata["model_info"]
        else:
            clean_metadata["model_info"] = meta_info
        clean["metadata"] = clean_metadata
    return clean


def _trusted_info(info: object, registered: Mapping[str, Any]) -> dict[str, Any] | None:
    if not isinstance(info, Mapping):
        return None
    entry = registered.get(str(info.get("id")))
    if isinstance(entry, Mapping):
        return dict(entry)  # the prices the app configured, not what the call says
    return {key: value for key, value in info.items() if not _cost_key(str(key))} or None


def trusted_deployment_id(
    kwargs: Mapping[str, object], registered: Mapping[str, Any]
) -> str | None:
    """The id of the Router deployment serving this call, when LiteLLM registered its prices."""
    info = kwargs.get("model_info")
    if isinstance(info, Mapping):
        key = str(info.get("id"))
        if isinstance(registered.get(key), Mapping):
            return key
    return None
