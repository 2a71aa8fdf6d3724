"""``FenceSettings``: a fence's options, validated once, with the script arguments they make."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tokenfence_asgi.config import BUILTIN_PLANS, Plan, PlanSet, default_plan_for
from tokenfence_asgi.errors import ConfigError, InvalidAmount
from tokenfence_asgi.money import MoneyInput, to_nanos
from tokenfence_asgi.policy import Policy
from tokenfence_asgi.pricing.book import ModelPrice, PriceBook
from tokenfence_asgi.store.keys import KeySpace
from tokenfence_asgi.store.specs import CompiledPlan, compile_plan

__all__ = ["Clock", "FenceSettings", "OnStoreError"]

Clock = Callable[[], float]
OnStoreError = Literal["closed", "open", "allowance"]


def _seconds(name: str, value: object, *, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not (math.isfinite(value) and 0 < value <= maximum):
        raise ConfigError(f"{name} must be in (0, {maximum:g}] seconds, got {value!r}")
    return float(value)


def _bounded_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be an int in [{low}, {high}], got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class FenceSettings:
    """Everything a ``TokenFence`` is configured with but its store (see ``TokenFence``).

    Build it with ``FenceSettings.of(...)``, which takes the fence's own keywords (plans as
    ``Plan`` objects, prices as a mapping or a ``PriceBook``, the allowance in dollars) and
    raises ``ConfigError`` (``UnknownPlan`` for a default plan not configured) naming the
    field and the bad value. Script arguments that depend only on the settings are built here
    once (the ``*_arg`` fields).
    """

    plans: Mapping[str, CompiledPlan]
    default_plan: str
    prices: PriceBook
    prefix: str = "tf"
    clock: Clock | None = None
    on_store_error: OnStoreError = "closed"
    outage_allowance_nanos: int = 100_000_000
    enforce: bool = True
    hold_ttl: float = 600
    record_ttl: float = 86400
    timeout_s: float = 0.5
    reclaim_batch: int = 16
    kill_cache_s: float = 1.0
    cache_size: int = 10_000
    policy: Policy | None = None
    approval_ttl: float = 3600
    ledger_retention: float | None = 7 * 86400
    ledger_maxlen: int | None = 100_000
    usage_days: int = 400
    max_open_holds: int | None = 1000
    default_output_tokens: int | None = 4096

    hold_ms_arg: str = field(init=False)
    record_ttl_arg: str = field(init=False)
    reclaim_arg: str = field(init=False)
    approval_ttl_arg: str = field(init=False)
    ledger_retention_arg: str = field(init=False)
    ledger_maxlen_arg: str = field(init=False)
    usage_days_arg: str = field(init=False)
    max_open_holds_arg: str = field(init=False)

    def __post_init__(self) -> None:
        tokens = self.default_output_tokens
        if tokens is not None and not (type(tokens) is int and 1 <= tokens <= 10_000_000):
            raise ConfigError(
                f"default_output_tokens must be an int in [1, 10000000] or None, got {tokens!r}"
            )
        if not isinstance(self.prices, PriceBook):
            raise ConfigError(f"prices must be a PriceBook, got {type(self.prices).__name__}")
        for name, compiled in self.plans.items():
            if not isinstance(compiled, CompiledPlan) or compiled.name != name:
                raise ConfigError(f"plans must map each plan's name to its compiled plan: {name!r}")
        if self.default_plan not in self.plans:
            raise ConfigError(f"default_plan {self.default_plan!r} is not among the plans")
        if self.on_store_error not in ("closed", "open", "allowance"):
            raise ConfigError(
                "on_store_error must be 'closed', 'open' or 'allowance', "
                f"got {self.on_store_error!r}"
            )
        allowance = self.outage_allowance_nanos
        if isinstance(allowance, bool) or not isinstance(allowance, int) or allowance < 0:
            raise ConfigError(f"outage_allowance_nanos must be an int >= 0, got {allowance!r}")
        if not isinstance(self.enforce, bool):
            raise ConfigError(f"enforce must be True or False, got {self.enforce!r}")
        if self.clock is not None and not callable(self.clock):
            raise ConfigError("clock must be a callable returning epoch seconds")
        _bounded_int("reclaim_batch", self.reclaim_batch, 1, 1000)
        _bounded_int("cache_size", self.cache_size, 0, 10**7)
        _bounded_int("usage_days", self.usage_days, 1, 3660)
        maxlen, holds = self.ledger_maxlen, self.max_open_holds
        _bounded_int("ledger_maxlen", 1 if maxlen is None else maxlen, 0, 10**9)
        _bounded_int("max_open_holds", 1 if holds is None else holds, 1, 10**7)
        if self.policy is not None and not isinstance(self.policy, Policy):
            raise ConfigError(f"policy must be a Policy, got {type(self.policy).__name__}")
        approval_s = _seconds("approval_ttl", self.approval_ttl, maximum=30 * 86400)
        hold_s = _seconds("hold_ttl", self.hold_ttl, maximum=7 * 86400)
        record_s = _seconds("record_ttl", self.record_ttl, maximum=90 * 86400)
        retention_s = self.ledger_retention
        if retention_s is not None:
            retention_s = _seconds("ledger_retention", retention_s, maximum=3660 * 86400)
        kill_s = self.kill_cache_s
        kill_s = 0.0 if kill_s == 0 else _seconds("kill_cache_s", kill_s, maximum=60)
        KeySpace(self.prefix)  # validates the prefix
        if not (isinstance(self.timeout_s, int | float) and 0 < self.timeout_s <= 60):
            raise ConfigError(f"timeout_s must be in (0, 60] seconds, got {self.timeout_s!r}")

        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        put("approval_ttl", approval_s)
        put("hold_ttl", hold_s)
        put("record_ttl", record_s)
        put("ledger_retention", retention_s)
        put("kill_cache_s", kill_s)
        put("hold_ms_arg", str(max(1, round(hold_s * 1000))))
        put("record_ttl_arg", str(max(1, math.ceil(record_s))))
        put("reclaim_arg", str(self.reclaim_batch))
        put("approval_ttl_arg", str(math.ceil(approval_s)))
        put(
            "ledger_retention_arg",
            "" if retention_s is None else str(max(1, round(retention_s * 1000))),
        )
        put("ledger_maxlen_arg", "" if maxlen is None else str(maxlen))
        put("usage_days_arg", str(self.usage_days))
        put("max_open_holds_arg", "" if holds is None else str(holds))

    @classmethod
    def of(
        cls,
        *,
        plans: Sequence[Plan] | None = None,
        default_plan: str | None = None,
        prefix: str = "tf",
        clock: Clock | None = None,
        on_store_error: OnStoreError = "closed",
        outage_allowance: MoneyInput = "0.10",
        enforce: bool = True,
        hold_ttl: float = 600,
        record_ttl: float = 86400,
        timeout_s: float = 0.5,
        reclaim_batch: int = 16,
        kill_cache_s: float = 1.0,
        cache_size: int = 10_000,
        policy: Policy | None = None,
        approval_ttl: float = 3600,
        ledger_retention: float | None = 7 * 86400,
        ledger_maxlen: int | None = 100_000,
        usage_days: int = 400,
        max_open_holds: int | None = 1000,
        default_output_tokens: int | None = 4096,
        prices: Mapping[str, ModelPrice] | PriceBook | None = None,
        default_price: ModelPrice | None = None,
    ) -> FenceSettings:
        """Settings from ``TokenFence``'s keywords (every one but ``redis_url`` / ``redis``)."""
        if isinstance(prices, PriceBook):
            if default_price is not None:
                raise ConfigError("give default_price to the PriceBook passed as prices")
            book = prices
        else:
            book = PriceBook(prices, default_price=default_price)
        plan_list = tuple(BUILTIN_PLANS if plans is None else plans)
        compiled: dict[str, CompiledPlan] = {}
        for plan in plan_list:
            if not isinstance(plan, Plan):
                raise ConfigError(f"plans must be Plan instances, got {type(plan).__name__}")
            if plan.name in compiled:
                raise ConfigError(f"plans: duplicate plan name {plan.name!r}")
            compiled[plan.name] = compile_plan(plan)
        # A PlanSet carries its file's default_plan; any other sequence was read into plan_list.
        named = plans if isinstance(plans, PlanSet) else plan_list
        default = default_plan_for(named, default_plan)
        try:
            allowance_nanos = to_nanos(outage_allowance, field="outage_allowance")
        except InvalidAmount as exc:
            raise ConfigError(exc.message) from None
        return cls(
            plans=compiled,
            default_plan=default,
            prices=book,
            prefix=prefix,
            clock=clock,
            on_store_error=on_store_error,
            outage_allowance_nanos=allowance_nanos,
            enforce=enforce,
            hold_ttl=hold_ttl,
            record_ttl=record_ttl,
            timeout_s=timeout_s,
            reclaim_batch=reclaim_batch,
            kill_cache_s=kill_cache_s,
            cache_size=cache_size,
            policy=policy,
            approval_ttl=approval_ttl,
            ledger_retention=ledger_retention,
            ledger_maxlen=ledger_maxlen,
            usage_days=usage_days,
            max_open_holds=max_open_holds,
            default_output_tokens=default_output_tokens,
        )
