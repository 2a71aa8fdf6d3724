"""``tokenfence status``, ``set-plan``, ``kill`` and ``revive``: a tenant on a shared Redis.

They act on the Redis of ``--redis-url`` (or ``TOKENFENCE_REDIS_URL``) under ``--prefix``
(default ``tf``, as ``TokenFence``), with the plans of ``--config``. A tenant the store has no
state for is refused as a typo (exit 9, as the admin API answers 404), unless ``--create`` says
it is new; an empty prefix is pointed out (a forgotten ``--prefix``).
"""

# No ``from __future__ import annotations``: Typer reads the commands' annotations at runtime.

import json
from decimal import Decimal
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tokenfence_asgi.cli.options import (
    ConfigOption,
    CreateOption,
    ExitCode,
    JsonOption,
    PrefixOption,
    RedisUrlOption,
    empty_prefix_hint,
    fail,
    load_config,
    out,
    precise,
    prefix_is_empty,
    run_with_fence,
    usd,
    warn,
)
from tokenfence_asgi.config import Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import UnknownPlan
from tokenfence_asgi.money import format_dollars, format_time, from_nanos, to_nanos
from tokenfence_asgi.results import TenantStatus, WindowStatus
from tokenfence_asgi.store.keys import validate_id
from tokenfence_asgi.store.specs import PPM, compile_plan

__all__ = ["kill", "register", "revive", "set_plan", "status"]

TenantArgument = Annotated[
    str | None, typer.Argument(show_default=False, help="tenant id (or --all)")
]
FeatureOption = Annotated[
    str | None, typer.Option("--feature", show_default=False, help="only this feature")
]
AllOption = Annotated[bool, typer.Option("--all", help="every tenant (the global switch)")]


# -- status -----------------------------------------------------------------------------------


def _money(amount: Decimal | None) -> str | None:
    return format_dollars(amount, 6)


def _feature_limits(plan: Plan, w: WindowStatus) -> dict[str, Decimal]:
    """Each listed feature's guaranteed share (or cap) of a tenant window's limit, carried
    budget included, as the reserve script computes it: floor(limit x weight ppm / 10^6)."""
    if w.scope != "tenant" or w.kind != "calendar" or w.limit is None:
        return {}
    limit_nanos = to_nanos(w.limit)
    return {
        name: from_nanos(limit_nanos * ppm // PPM) for name, ppm in compile_plan(plan).feature_ppm
    }


def _window_dict(w: WindowStatus, plan: Plan) -> dict[str, Any]:
    data = {
        "window": w.window,
        "kind": w.kind,
        "scope": w.scope,
        "used": _money(w.used),
        "held": _money(w.held),
        "limit": _money(w.limit),
        "remaining": _money(w.remaining),
        "carried": _money(w.carried),
        "requests": w.requests,
        "max_requests": w.max_requests,
        "resets_at": format_time(w.resets_at),
        "features": {k: _money(v) for k, v in w.features.items()},
    }
    if w.features:
        data["feature_limits"] = {k: _money(v) for k, v in _feature_limits(plan, w).items()}
    return data


def _status_dict(s: TenantStatus, plan: Plan) -> dict[str, Any]:
    return {
        "tenant": s.tenant_id,
        "plan": s.plan,
        "killed": s.killed,
        "killed_features": list(s.killed_features),
        "held": f"{s.held:.6f}",
        "open_holds": s.open_holds,
        "pool": s.pool,
        "pool_plan": s.pool_plan,
        "feature_mode": plan.feature_mode if plan.features else None,
        "windows": [_window_dict(w, plan) for w in (*s.windows, *s.pool_windows)],
    }


def _print_features(console: Console, s: TenantStatus, plan: Plan) -> None:
    """Each feature's spend against its share (or cap) per window: what a share refusal is
    decided on (a feature's unused share is kept for it, whoever else asks)."""
    if not plan.features:
        return
    cap = plan.feature_mode == "cap"
    table = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("feature", "window", "used", "cap" if cap else "share", "weight", "unused"):
        left = column in ("feature", "window")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    for w in s.windows:
        limits = _feature_limits(plan, w)
        for name, weight in plan.features.items():
            if name in limits and name in w.features:
                used, limit = w.features[name], limits[name]
                unused = usd(max(Decimal(0), limit - used))
                table.add_row(
                    escape(name), w.window, precise(used), usd(limit), f"{weight:.0%}", unused
                )
    if table.row_count:
        rule = (
            "no feature spends past its cap"
            if cap
            else "past its share, a feature spends only what no other's unused share keeps"
        )
        console.print(f"  feature {'caps' if cap else 'shares'} ({rule}):", markup=False)
        console.print(table)


def _print_status(console: Console, s: TenantStatus, configured: set[str]) -> None:
    state = "[bold red]KILLED[/] (no AI calls)" if s.killed else "[green]enabled[/]"
    console.print(
        f"[bold]{escape(s.tenant_id)}[/]  plan [bold]{escape(s.plan)}[/]  AI calls {state}"
    )
    if s.plan not in configured:
        console.print(
            f"  plan {s.plan!r} is not in the configured plans: limits shown are the "
            "default plan's (pass the app's --config)",
            style="yellow",
            markup=False,
        )
    if s.killed_features:
        console.print(f"  features switched off: {escape(', '.join(s.killed_features))}")
    if s.pool:
        console.print(f"  pool {escape(s.pool)} (plan {escape(str(s.pool_plan))})")
    console.print(f"  held now: {precise(s.held)} in {s.open_holds} open hold(s)")
    table = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("window", "used", "limit", "remaining", "requests", "carried", "resets (UTC)"):
        left = column in ("window", "resets (UTC)")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    for w in (*s.windows, *s.pool_windows):
        name = w.window + ("" if w.kind == "calendar" else " sliding")
        name += " (pool)" if w.scope == "pool" else ""
        requests = f"{w.requests:,}" + (f" / {w.max_requests:,}" if w.max_requests else "")
        resets = f"{w.resets_at:%Y-%m-%d %H:%M}"
        used, carried = precise(w.used), precise(w.carried)
        table.add_row(name, used, usd(w.limit), usd(w.remaining), requests, carried, resets)
    console.print(table)


def status(
    tenant: Annotated[str, typer.Argument(help="tenant id")],
    redis_url: RedisUrlOption = None,
    prefix: PrefixOption = "tf",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """A tenant's plan, kill switches, holds, spend in every window, and each feature's spend
    against its share or cap."""

    async def read(fence: TokenFence) -> tuple[TenantStatus, Plan]:
        await _known_tenant(fence, tenant, prefix)
        status = await fence.status(tenant)
        # the plan whose limits the status shows: the default plan's when not configured here
        return status, fence.plans.get(status.plan) or fence.plans[fence.default_plan]

    result, plan = run_with_fence(redis_url, prefix, config, read)
    if as_json:
        print(json.dumps(_status_dict(result, plan), indent=2))
        return
    console = out()
    _print_status(console, result, {p.name for p in load_config(config)})
    _print_features(console, result, plan)


# -- set-plan, kill, revive -------------------------------------------------------------------


async def _known_tenant(
    fence: TokenFence, tenant: str, prefix: str, *, create: bool | None = None
) -> bool:
    """Whether ``tenant`` is new; exit 9 when the store has no state for it, unless ``create``
    (None: the command cannot create one). The admin API's rule: an unknown tenant is a 404."""
    if await fence.has_tenant(tenant):
        return False
    empty = await prefix_is_empty(fence)
    if not create:
        message = f"no tenant {tenant!r} under prefix {prefix!r}: it has no state and no plan"
        message += " assigned" + (" (pass --create for a new tenant)" if create is not None else "")
        fail(ExitCode.UNKNOWN_TENANT, message + (f"; {empty_prefix_hint(prefix)}" if empty else ""))
    if empty:
        warn(empty_prefix_hint(prefix, held=True))
    return True


def set_plan(
    tenant: Annotated[str, typer.Argument(help="tenant id")],
    plan: Annotated[str, typer.Argument(help="a configured plan's name")],
    redis_url: RedisUrlOption = None,
    prefix: PrefixOption = "tf",
    config: ConfigOption = None,
    create: CreateOption = False,
) -> None:
    """Put a tenant on a plan; every app instance honours it on its next call."""
    names = [p.name for p in load_config(config)]
    if plan not in names:
        hint = (
            ""
            if config
            else " (these are the built-in plans: pass the app's plan file with --config)"
        )
        fail(ExitCode.UNKNOWN_PLAN, UnknownPlan(plan, names).message + hint)

    async def assign(fence: TokenFence) -> bool:
        new = await _known_tenant(fence, tenant, prefix, create=create)
        await fence.set_plan(tenant, plan)
        return new

    new = run_with_fence(redis_url, prefix, config, assign)
    out().print(f"tenant {tenant!r} is now on plan {plan!r}" + (" (a new tenant)" if new else ""))


async def _switch(
    fence: TokenFence,
    kill: bool,
    tenant: str | None,
    feature: str | None,
    prefix: str,
    create: bool,
) -> None:
    if tenant is not None:
        if feature is not None:
            validate_id(feature, what="feature")  # a bad id is a 6 before an unknown tenant's 9
        await _known_tenant(fence, tenant, prefix, create=create if kill else None)
    await (fence.kill if kill else fence.revive)(tenant, feature=feature)
    if tenant is None and await prefix_is_empty(fence):
        warn(empty_prefix_hint(prefix))


def _switch_target(tenant: str | None, everyone: bool) -> str | None:
    if tenant is None and not everyone:
        fail(ExitCode.USAGE, "name a TENANT, or pass --all to act on every tenant")
    if tenant is not None and everyone:
        fail(ExitCode.USAGE, "pass a TENANT or --all, not both")
    return tenant


def _switched(tenant: str | None, feature: str | None) -> str:
    who = "every tenant" if tenant is None else f"tenant {tenant!r}"
    return f"feature {feature!r} of {who}" if feature else who


def kill(
    tenant: TenantArgument = None,
    feature: FeatureOption = None,
    everyone: AllOption = False,
    redis_url: RedisUrlOption = None,
    prefix: PrefixOption = "tf",
    config: ConfigOption = None,
    create: CreateOption = False,
) -> None:
    """Refuse AI calls: of a tenant, of one of its features, or (--all) of everyone."""
    target = _switch_target(tenant, everyone)
    run_with_fence(
        redis_url, prefix, config, lambda f: _switch(f, True, target, feature, prefix, create)
    )
    lag = (
        " (every instance sees it within its kill_cache_s, 1 s by default)"
        if target is None
        else ""
    )
    out().print(f"AI calls are now refused for {_switched(target, feature)}{lag}")


def revive(
    tenant: TenantArgument = None,
    feature: FeatureOption = None,
    everyone: AllOption = False,
    redis_url: RedisUrlOption = None,
    prefix: PrefixOption = "tf",
    config: ConfigOption = None,
) -> None:
    """Undo kill, with the same arguments."""
    target = _switch_target(tenant, everyone)
    run_with_fence(
        redis_url, prefix, config, lambda f: _switch(f, False, target, feature, prefix, False)
    )
    out().print(f"AI calls are allowed again for {_switched(target, feature)}")


def register(app: typer.Typer) -> None:
    """Add ``status``, ``set-plan``, ``kill`` and ``revive`` to ``app``."""
    app.command("status")(status)
    app.command("set-plan")(set_plan)
    app.command("kill")(kill)
    app.command("revive")(revive)
