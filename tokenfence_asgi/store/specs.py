"""Plans as script arguments, built once per plan.

A limit becomes five strings (window, kind, max cost nanos or -1, max requests or -1, rollover cap
nanos); feature weights become parts per million, so the scripts only ever do integer arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.store.keys import encode_id

__all__ = ["NO_LIMITS", "CompiledPlan", "compile_plan", "rollover_cap"]

PPM = 1_000_000


def rollover_cap(limit: Limit) -> int:
    """The most a calendar limit may carry over, in nano-dollars: ``floor(max_cost x rollover)``."""
    if limit.max_cost_nanos is None or not limit.rollover:
        return 0
    exact = Decimal(limit.max_cost_nanos) * Decimal(str(limit.rollover))
    return int(exact.to_integral_value(ROUND_FLOOR))


def _limit_args(limits: tuple[Limit, ...]) -> tuple[str, ...]:
    args = [str(len(limits))]
    for limit in limits:
        args += [
            limit.window,
            "c" if limit.kind == "calendar" else "s",
            str(-1 if limit.max_cost_nanos is None else limit.max_cost_nanos),
            str(-1 if limit.max_requests is None else limit.max_requests),
            str(rollover_cap(limit)),
        ]
    return tuple(args)


@dataclass(frozen=True, slots=True)
class CompiledPlan:
    """A plan and the script arguments that depend only on it."""

    plan: Plan
    limit_args: tuple[str, ...]
    feature_args: tuple[str, ...]
    feature_ppm: tuple[tuple[str, int], ...]
    mode: str

    @property
    def name(self) -> str:
        return self.plan.name


def compile_plan(plan: Plan) -> CompiledPlan:
    """The script arguments of ``plan``."""
    ppm: list[tuple[str, int]] = []
    for name, weight in (plan.features or {}).items():
        parts = Decimal(str(weight)) * PPM
        ppm.append((name, int(parts.to_integral_value(ROUND_HALF_UP))))
    feature_args = [str(len(ppm))]
    for name, parts_per_million in ppm:
        feature_args += [encode_id(name), str(parts_per_million)]
    return CompiledPlan(
        plan=plan,
        limit_args=_limit_args(plan.limits),
        feature_args=tuple(feature_args),
        feature_ppm=tuple(ppm),
        mode=plan.feature_mode if ppm else "",
    )


NO_LIMITS = compile_plan(Plan("none"))
"""A pool without a configured plan: no pool limits."""
