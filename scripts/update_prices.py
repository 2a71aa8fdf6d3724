"""Regenerate the price snapshot the library ships: ``tokenfence_asgi/pricing/_prices/prices.json``.

Run by hand, never at import, with the dev extras installed::

    python scripts/update_prices.py                # prices as of today
    python scripts/update_prices.py --as-of 2026-12-01 --check   # exit 1 if the file differs

Prices, price tiers, cache and batch prices and the model-name match rules come from
``genai-prices`` (its bundled data, no download), for the providers OpenAI, Azure and
Anthropic. genai-prices has no maximum output per model, so each model takes the largest
``max_output_tokens`` of the LiteLLM price-map keys that genai-prices resolves to it (the map is
read as a JSON file from the installed ``litellm`` package, which is not imported), then
``MAX_OUTPUT_FROM_DOCS`` for chat models the map lacks. Both versions are pinned in the dev
extras and recorded in the file, so a regeneration is reproducible and its diff reviewable.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from genai_prices import types
from genai_prices.data_snapshot import get_snapshot

OUT = (
    Path(__file__).resolve().parent.parent
    / "tokenfence_asgi"
    / "pricing"
    / "_prices"
    / "prices.json"
)
PROVIDERS = ("openai", "azure", "anthropic")

# Maximum output tokens of chat models LiteLLM's map does not list, from the providers' model
# pages (Anthropic: "Models overview" and "Extended output"; OpenAI: the model pages). Where a
# model can produce more with an opt-in header (claude-3-7-sonnet: 128k), the larger is kept:
# it is a bound.
MAX_OUTPUT_FROM_DOCS = {
    "anthropic": {
        "claude-2": 4096,
        "claude-3-haiku": 4096,
        "claude-3-sonnet": 4096,
        "claude-3-opus-latest": 4096,
        "claude-3-5-haiku-latest": 8192,
        "claude-3-5-sonnet": 8192,
        "claude-3-7-sonnet-latest": 128000,
        "claude-sonnet-4-0": 64000,
        "claude-opus-4-0": 32000,
        "claude-opus-4-1": 32000,
    },
    "openai": {
        "chatgpt-4o-latest": 16384,
        "gpt-4.5-preview": 16384,
        "o1-mini": 65536,
        "o1-preview": 32768,
        "codex-mini": 100000,
    },
}


def clause(match: Any) -> dict[str, Any]:
    """A genai-prices match clause as plain JSON: ``{"equals": ...}``, ``{"or": [...]}``."""
    if isinstance(match, types.ClauseOr):
        return {"or": [clause(c) for c in match.or_]}
    if isinstance(match, types.ClauseAnd):
        return {"and": [clause(c) for c in match.and_]}
    for cls, key in (
        (types.ClauseEquals, "equals"),
        (types.ClauseStartsWith, "starts_with"),
        (types.ClauseEndsWith, "ends_with"),
        (types.ClauseContains, "contains"),
        (types.ClauseRegex, "regex"),
    ):
        if isinstance(match, cls):
            return {key: getattr(match, key)}
    raise TypeError(f"unknown match clause {match!r}")


def price_value(value: Any) -> Any:
    if isinstance(value, types.TieredPrices):
        return {"base": str(value.base), "tiers": [[t.start, str(t.price)] for t in value.tiers]}
    return str(value)


def prices(model_price: types.ModelPrice) -> dict[str, Any]:
    return {
        key: price_value(value)
        for key, value in sorted(vars(model_price).items())
        if value is not None and not key.startswith("_")
    }


def litellm_map() -> tuple[str, dict[str, Any]]:
    """LiteLLM's bundled price map, read as a file (importing litellm takes seconds)."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        sys.exit("litellm is not installed: pip install -e '.[dev]'")
    path = Path(spec.origin).parent / "model_prices_and_context_window_backup.json"
    return importlib.metadata.version("litellm"), json.loads(path.read_text())


def max_outputs(provider: types.Provider, raw: dict[str, Any]) -> dict[str, int]:
    """The largest LiteLLM ``max_output_tokens`` among the keys that resolve to each model."""
    found: dict[str, int] = {}
    for key, entry in raw.items():
        if not isinstance(entry, dict) or entry.get("litellm_provider") not in (
            provider.id,
            "text-completion-openai" if provider.id == "openai" else None,
        ):
            continue
        name = key.split("/", 1)[1] if key.startswith(provider.id + "/") else key
        model = provider.find_model(name)  # the model genai-prices prices this name as
        limit = entry.get("max_output_tokens")
        if model is None or isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            continue
        found[model.id] = max(limit, found.get(model.id, 0))
    return found


def build(as_of: date) -> dict[str, Any]:
    snapshot = get_snapshot()
    when = datetime(as_of.year, as_of.month, as_of.day, 12, tzinfo=UTC)
    litellm_version, raw = litellm_map()
    out: dict[str, Any] = {
        "generated_from": {
            "genai-prices": importlib.metadata.version("genai-prices"),
            "litellm": litellm_version,
            "prices_as_of": as_of.isoformat(),
        },
        "providers": {},
    }
    for provider in snapshot.providers:
        if provider.id not in PROVIDERS:
            continue
        from_map = max_outputs(provider, raw)
        from_docs = MAX_OUTPUT_FROM_DOCS.get(provider.id, {})
        models = []
        for model in provider.models:
            variants = [
                {"when": dict(v.when), "prices": prices(v.prices)}
                for v in model.price_variants or ()
                if v.constraint is None or v.constraint.active(when)
            ]
            models.append(
                {
                    "id": model.id,
                    "match": clause(model.match),
                    "context_window": model.context_window,
                    "max_output_tokens": from_map.get(model.id, from_docs.get(model.id)),
                    "prices": prices(model.get_prices(when)),
                    "variants": [v for v in variants if v["prices"]],
                }
            )
        fallback = [p for p in provider.fallback_model_providers or () if p in PROVIDERS]
        out["providers"][provider.id] = {"fallback": fallback, "models": models}
    return out


def render(data: dict[str, Any]) -> str:
    # One model per line: a price change is a one-line diff.
    lines = ["{", f' "generated_from": {json.dumps(data["generated_from"])},', ' "providers": {']
    providers = list(data["providers"].items())
    for i, (pid, provider) in enumerate(providers):
        lines.append(f"  {json.dumps(pid)}: {{")
        lines.append(f'   "fallback": {json.dumps(provider["fallback"])},')
        lines.append('   "models": [')
        models = provider["models"]
        for j, model in enumerate(models):
            comma = "," if j < len(models) - 1 else ""
            lines.append(f"    {json.dumps(model, separators=(',', ':'))}{comma}")
        lines.append("   ]")
        lines.append("  }" + ("," if i < len(providers) - 1 else ""))
    lines += [" }", "}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--as-of", type=date.fromisoformat, default=None, help="YYYY-MM-DD")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file would change")
    args = parser.parse_args()
    as_of = args.as_of
    if as_of is None:
        as_of = date.today()
        if args.check and OUT.exists():  # check against the date the file was made for
            as_of = date.fromisoformat(
                json.loads(OUT.read_text())["generated_from"]["prices_as_of"]
            )
    text = render(build(as_of))
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            sys.exit(f"{OUT} is out of date: run python scripts/update_prices.py")
        return
    OUT.write_text(text)
    data = json.loads(text)
    models = [m for p in data["providers"].values() for m in p["models"]]
    print(f"wrote {OUT} ({len(text):,} bytes, {len(models)} models)")


if __name__ == "__main__":
    main()
