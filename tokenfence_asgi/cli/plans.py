"""``tokenfence plans``: the effective plans, from ``--config`` or the built-in ones."""

# No ``from __future__ import annotations``: Typer reads the commands' annotations at runtime.

import json
from typing import Any

import typer
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table

from tokenfence_asgi.cli.options import (
    ConfigOption,
    JsonOption,
    default_plan,
    load_config,
    out,
    usd,
)
from tokenfence_asgi.config import Limit, Plan

__all__ = ["plans", "register"]

_PER = {"1m": "min", "1h": "hour", "1d": "day", "7d": "week", "1mo": "month"}


def _limit_text(limit: Limit) -> str:
    """``$5.00 + 500 req / day``, ``$0.50 / min sliding``, ``$5.00 / day, rollover 50%``."""
    parts = []
    if limit.max_cost is not None:
        parts.append(usd(limit.max_cost))
    if limit.max_requests is not None:
        parts.append(f"{limit.max_requests:,} req")
    text = f"{' + '.join(parts)} / {_PER[limit.window]}"
    if limit.kind == "sliding":
        text += " sliding"
    if limit.rollover:
        text += f", rollover {limit.rollover:.0%}"
    return text


def _limit_dict(limit: Limit) -> dict[str, Any]:
    return {
        "window": limit.window,
        "kind": limit.kind,
        "rollover": limit.rollover,
        "max_cost": None if limit.max_cost is None else f"{limit.max_cost:.6f}",
        "max_requests": limit.max_requests,
    }


def _plan_dict(plan: Plan) -> dict[str, Any]:
    price = plan.price_per_month
    return {
        "name": plan.name,
        "limits": [_limit_dict(limit) for limit in plan.limits],
        "models": None if plan.models is None else list(plan.models),
        "downgrade": None if plan.downgrade is None else dict(plan.downgrade),
        "max_input_chars": plan.max_input_chars,
        "max_input_tokens": plan.max_input_tokens,
        "features": None if plan.features is None else dict(plan.features),
        "feature_mode": plan.feature_mode,
        "upgrade_url": plan.upgrade_url,
        "enforce": plan.enforce,
        "price_per_month": None if price is None else f"{price:.2f}",
    }


def _plan_rows(plan: Plan) -> list[tuple[str, str]]:
    rows = [("limits", "; ".join(_limit_text(lim) for lim in plan.limits) or "none")]
    rows.append(("models", ", ".join(plan.models) if plan.models is not None else "all"))
    if plan.downgrade:
        rows.append(("downgrade", ", ".join(f"{a} -> {b}" for a, b in plan.downgrade.items())))
    max_input = [f"{plan.max_input_chars:,} chars"] if plan.max_input_chars else []
    max_input += [f"{plan.max_input_tokens:,} tokens"] if plan.max_input_tokens else []
    if max_input:
        rows.append(("max input", ", ".join(max_input)))
    if plan.features:
        shares = ", ".join(f"{f} {w:.0%}" for f, w in plan.features.items())
        kind = "caps" if plan.feature_mode == "cap" else "shares"
        rows.append(("features", f"{shares} ({kind})"))
    if plan.price_per_month is not None:
        rows.append(("price", f"{usd(plan.price_per_month)} a month"))
    if plan.upgrade_url:
        rows.append(("upgrade", plan.upgrade_url))
    if plan.policy is not None:
        rows.append(("tool policy", "yes"))
    return rows


def plans(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """The effective plans: from --config, else the built-in ones."""
    configured = load_config(config)
    default = default_plan(configured)  # exits 7, as the other commands, when there is none
    if as_json:
        print(json.dumps([_plan_dict(p) for p in configured], indent=2))
        return
    console = out()
    source = "built-in plans" if config is None else f"plans from {config}"
    console.print(
        f"{len(configured)} {source}; tenants without a plan are on {default!r}.", markup=False
    )
    for plan in configured:
        notes = []
        if plan.name == default:
            notes.append("default")
        if not plan.enforce:
            notes.append("shadow mode: never refuses")
        console.print(
            f"\n[bold]{escape(plan.name)}[/]" + (f" ({', '.join(notes)})" if notes else "")
        )
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column(overflow="fold")
        for key, value in _plan_rows(plan):
            grid.add_row(key, escape(value))
        console.print(Padding(grid, (0, 0, 0, 2), expand=False))


def register(app: typer.Typer) -> None:
    """Add ``plans`` to ``app``."""
    app.command("plans")(plans)
