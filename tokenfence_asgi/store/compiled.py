"""The plans and settings of one fence, compiled into the Lua source of its reserve and commit.

A reserve or commit would otherwise send every limit and feature weight of the tenant's and the
pool's plans with each call and parse them in Lua: more than half of the arguments and a good
part of a script's time. Compiled, a call sends ids, the feature, the amounts and the plan names
it assumes; the script finds the plan's limits as constants (``plan_named``), its feature
weights in a chain of comparisons (``feature_ppm``: the cost of a call does not grow with the
number of features), and the fence's settings (hold lease, record ttl, ledger bounds, ...) as
constants.

The compiled source is the plan version: a plan or a setting that changes makes another script
(another SHA1), loaded by redis-py on its first NOSCRIPT, while instances still running the old
one keep theirs. Each distinct configuration adds its two scripts (tens of KB) to the server's
script cache, which ``SCRIPT FLUSH`` empties safely (they are loaded again on first use). Which
plan a tenant is on stays in the store, as before: a plan change made on any instance is
honoured by the next reserve on every instance. Each plan also carries a short content hash
(``ver``), stored beside the feature share sums it was used to compute, so a state written under
another version of the plan is recomputed on first use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tokenfence_asgi.config import Limit
from tokenfence_asgi.store.scripts import script_source
from tokenfence_asgi.store.specs import CompiledPlan, rollover_cap

__all__ = [
    "COMPILED_SCRIPTS",
    "ScriptSettings",
    "compile_scripts",
    "compiled_sources",
    "lua_string",
    "plan_version",
]

COMPILED_SCRIPTS = ("reserve", "commit")
"""The scripts compiled per fence (the others take their arguments as they are)."""

_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.~%+/:@ ")
_SIZES = {"1m": 60, "1h": 3600, "1d": 86400, "7d": 604800, "1mo": 2678400}


def lua_string(value: str) -> str:
    """``value`` as a Lua string literal: any byte outside a safe set as a decimal escape."""
    out = "".join(chr(b) if b in _SAFE else f"\\{b:03d}" for b in value.encode("utf-8"))
    return f"'{out}'"


@dataclass(frozen=True, slots=True)
class ScriptSettings:
    """The fence settings the compiled scripts use, as the strings the store expects."""

    default_plan: str
    hold_ms: str
    reclaim: str
    record_ttl_s: str
    usage_days: str
    max_open_holds: str  # '' for no bound
    ledger_maxlen: str  # '' unbounded, '0' no ledger
    ledger_retention_ms: str  # '' none


def plan_version(plan: CompiledPlan) -> str:
    """A short content hash of what the scripts enforce for ``plan``."""
    text = "\x1f".join([*plan.limit_args, *plan.feature_args, plan.mode])
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:12]


META = ("t", "plan", "k", "loc", "pool", "sv", "held", "nh", "rv", "lt")
"""The state fields every compiled reserve and commit reads first, in this order."""
POOL_META = ("plan", "held", "sv")
"""The pool state fields read first."""


def _block(limit: Limit) -> list[str]:
    """The counters a calendar limit reads each call: end, cost, requests, then the preceding
    cost only with a rollover, the alert levels only of a cost or request maximum."""
    w = limit.window
    block = [f"{w}:e", f"{w}:c", f"{w}:r"]
    if rollover_cap(limit) > 0:
        block.append(f"{w}:q")
    if limit.max_cost_nanos is not None:
        block.append(f"{w}:a")
    if limit.max_requests is not None:
        block.append(f"{w}:b")
    return block


def _limit(limit: Limit, offset: int, shares_at: int) -> str:
    w = limit.window
    m = -1 if limit.max_cost_nanos is None else limit.max_cost_nanos
    n = -1 if limit.max_requests is None else limit.max_requests
    if limit.kind == "calendar":
        block = _block(limit)
        names = ", ".join(f"f{s} = '{w}:{s}'" for s in "pecqrabs")
        at = ", ".join(
            f"i{s} = {block.index(f'{w}:{s}') + 1 if f'{w}:{s}' in block else 0}" for s in "qab"
        )
        return (
            f"{{ w = '{w}', cal = true, m = {m}, n = {n}, cap = {rollover_cap(limit)}, "
            f"{names}, fg = '{w}:g:', o = {offset}, {at}, is = {shares_at} }}"
        )
    size = _SIZES[w]
    return (
        f"{{ w = '{w}', cal = false, m = {m}, n = {n}, cap = 0, wkey = 'w:{w}', "
        f"bucket = {size // 60}, ttl = '{size * 1000 + 60000}', is = 0 }}"
    )


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def _plan(plan: CompiledPlan) -> str:
    """A plan's table: its limits, and the state fields a call reads for them, in order."""
    blocks: list[str] = []
    offsets: list[int] = []
    for limit in plan.plan.limits:
        offsets.append(len(blocks))
        if limit.kind == "calendar":
            blocks += _block(limit)
    shares: list[str] = []
    shares_at: list[int] = []
    for limit in plan.plan.limits:
        cost_calendar = limit.kind == "calendar" and limit.max_cost_nanos is not None
        if plan.feature_ppm and cost_calendar:
            shares.append(f"{limit.window}:s")
            shares_at.append(len(META) + len(blocks) + len(shares))
        else:
            shares_at.append(0)
    limits = ",\n      ".join(
        _limit(limit, offset, at)
        for limit, offset, at in zip(plan.plan.limits, offsets, shares_at, strict=True)
    )
    name = lua_string(plan.name)
    return (
        f"{{ name = {name}, ver = '{plan_version(plan)}', mode = '{plan.mode}', "
        f"nf = {len(plan.feature_ppm)},\n"
        f"      fields = {{ {_quoted([*META, *blocks, *shares])} }},\n"
        f"      pfields = {{ {_quoted([*POOL_META, *blocks])} }},\n"
        f"      limits = {{ {limits} }} }}"
    )


def _plans(plans: Iterable[CompiledPlan]) -> str:
    named, ppm, features = [], [], []
    for plan in plans:
        name = lua_string(plan.name)
        named.append(f"if name == {name} then\n    return {_plan(plan)}\n")
        if plan.feature_ppm:
            args = plan.feature_args[1:]
            pairs = list(zip(args[::2], args[1::2], strict=True))
            chain = "\n    else".join(
                f"if f == '{enc}' then\n      return {ppm_value}" for enc, ppm_value in pairs
            )
            ppm.append(f"if plan == {name} then\n    {chain}\n    end\n")
            listed = ", ".join(f"{{ '{enc}', {ppm_value} }}" for enc, ppm_value in pairs)
            features.append(f"if plan == {name} then\n    return {{ {listed} }}\n")
    return (
        "-- The plan a name stands for, or nil (a new table each call: it gains the counters).\n"
        "local function plan_named(name)\n  "
        + "  else".join(named)
        + ("  end\n" if named else "")
        + "  return nil\nend\n\n"
        + "-- A listed feature's weight in parts per million, or nil.\n"
        "local function feature_ppm(plan, f)\n  "
        + "  else".join(ppm)
        + ("  end\n" if ppm else "")
        + "  return nil\nend\n\n"
        + "-- Every listed feature of a plan as {encoded name, ppm} (share sums from scratch).\n"
        "local function plan_features(plan)\n  "
        + "  else".join(features)
        + ("  end\n" if features else "")
        + "  return {}\nend\n"
    )


def _settings(settings: ScriptSettings) -> str:
    max_open = settings.max_open_holds or "false"
    return (
        f"local DEFAULT_PLAN = {lua_string(settings.default_plan)}\n"
        f"local HOLD_MS = {int(settings.hold_ms)}\n"
        f"local RECLAIM = '{int(settings.reclaim)}'\n"
        f"local RECORD_TTL = '{int(settings.record_ttl_s)}'\n"
        f"local USAGE_DAYS = {int(settings.usage_days)}\n"
        f"local MAX_OPEN = {max_open}\n"
        f"local LEDGER_MAXLEN = '{settings.ledger_maxlen}'\n"
        f"local LEDGER_RETENTION = '{settings.ledger_retention_ms}'\n"
    )


def compile_scripts(plans: Mapping[str, CompiledPlan], settings: ScriptSettings) -> dict[str, str]:
    """The prologue of each compiled script: the fence's settings, then its plans."""
    prologue = (
        "-- ---- compiled: this fence's settings and plans (tokenfence_asgi/store/compiled.py)\n"
        + _settings(settings)
        + "\n"
        + _plans(plans.values())
    )
    return dict.fromkeys(COMPILED_SCRIPTS, prologue)


def compiled_sources(plans: Mapping[str, CompiledPlan], settings: ScriptSettings) -> dict[str, str]:
    """The full source of each compiled script for these plans and settings."""
    return {
        name: script_source(name, prologue)
        for name, prologue in compile_scripts(plans, settings).items()
    }
