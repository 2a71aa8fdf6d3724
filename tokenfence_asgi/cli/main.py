"""The ``tokenfence`` command: the demo, the noisy-neighbour simulation, operator commands.

``tokenfence demo`` and ``tokenfence simulate`` run on the embedded store unless given
``--redis-url``. The operator commands (``status``, ``set-plan``, ``kill``, ``revive``) act on a
shared Redis (``--redis-url`` or ``TOKENFENCE_REDIS_URL``) under ``--prefix`` (default ``tf``,
as ``TokenFence``), with the plans of ``--config plans.toml`` (default: the built-in plans);
``plans`` shows those plans. Failures exit with a distinct code (``ExitCode``) and one line on
stderr. A tenant the store has no state for is refused as a typo (as the admin API does),
unless ``--create`` says it is new; an empty prefix is pointed out (a forgotten ``--prefix``).

Other modules add commands with a ``register(app: typer.Typer)`` function: list the module in
``COMMAND_MODULES``. They may use ``RedisUrlOption``, ``PrefixOption``, ``ConfigOption``,
``open_fence``, ``run_with_fence``, ``fail``, ``warn`` and ``prefix_is_empty`` from here.
"""

# No ``from __future__ import annotations``: Typer reads the commands' annotations at runtime.

import asyncio
import importlib
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import structlog
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table

from tokenfence_asgi.config import BUILTIN_PLANS, Limit, Plan, default_plan_for, load_plans
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import (
    ConfigError,
    InvalidId,
    StoreUnavailable,
    TokenFenceError,
    UnknownPlan,
)
from tokenfence_asgi.money import from_nanos, to_nanos
from tokenfence_asgi.results import TenantStatus, WindowStatus
from tokenfence_asgi.store.keys import validate_id
from tokenfence_asgi.store.specs import PPM, compile_plan

__all__ = [
    "COMMAND_MODULES",
    "ConfigOption",
    "ExitCode",
    "PrefixOption",
    "RedisUrlOption",
    "app",
    "check_redis_url",
    "default_plan",
    "empty_prefix_hint",
    "fail",
    "load_config",
    "main",
    "open_fence",
    "prefix_is_empty",
    "redact",
    "run_with_fence",
    "usd",
    "warn",
]

T = TypeVar("T")


class ExitCode(IntEnum):
    """What the ``tokenfence`` command's exit status means."""

    OK = 0
    FAILED = 1  # the demo's story did not happen, or an unexpected fence error
    USAGE = 2  # bad arguments (as Click reports them), or no --redis-url for an operator command
    BAD_URL = 3  # a Redis URL that cannot be parsed
    UNKNOWN_PLAN = 4  # a plan name the configuration does not have
    STORE_UNAVAILABLE = 5  # Redis could not be reached in time
    INVALID_ID = 6  # a tenant or feature id that is empty, too long or has control characters
    BAD_CONFIG = 7  # a plan file that cannot be read or is invalid
    MISSING_EXTRA = 8  # the command needs an optional extra that is not installed
    UNKNOWN_TENANT = 9  # the store has no state for the tenant: a typo, or not the app's --prefix


COMMAND_MODULES: tuple[str, ...] = (  # one line per module with a register(app) function
    "tokenfence_asgi.cli.ledger",  # report, export
    "tokenfence_asgi.cli.serve",  # serve
)
"""Modules whose ``register(app)`` adds their commands to ``tokenfence``."""

_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_URL_SCHEMES = ("redis://", "rediss://", "unix://")
_NO_REDIS = (
    "this command acts on a shared Redis: pass --redis-url redis://HOST:6379/0 or set "
    "TOKENFENCE_REDIS_URL (the embedded store lives inside one process, so there is nothing "
    "to act on)"
)

app = typer.Typer(
    name="tokenfence",
    help="Multi-tenant AI cost control: the demo, the noisy-neighbour simulation, and "
    "operator commands against a shared Redis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # never print locals: they may hold a Redis password
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _check_prefix(value: str | None) -> str | None:
    if value is not None and not _PREFIX.fullmatch(value):
        raise typer.BadParameter(f"expected 1-32 of [A-Za-z0-9_.-], got {value!r}")
    return value


RedisUrlOption = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        envvar="TOKENFENCE_REDIS_URL",
        show_default=False,
        help="Redis to act on, e.g. redis://localhost:6379/0 [env TOKENFENCE_REDIS_URL]",
    ),
]
PrefixOption = Annotated[
    str,
    typer.Option(
        "--prefix",
        envvar="TOKENFENCE_PREFIX",
        callback=_check_prefix,
        help="key prefix, as TokenFence(prefix=...)",
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="TOKENFENCE_CONFIG",
        dir_okay=False,
        show_default=False,
        help="plans TOML file (default: the built-in plans)",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
CreateOption = Annotated[
    bool,
    typer.Option(
        "--create",
        help="the tenant may be new (no state in the store yet); without it an unknown tenant "
        "is refused, as a typo or another --prefix would be",
    ),
]


def _out() -> Console:
    return Console(highlight=False)


def fail(code: ExitCode, message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(int(code))


def warn(message: str) -> None:
    """Print ``warning: message`` on stderr."""
    Console(stderr=True, highlight=False).print(f"[yellow]warning:[/] {escape(message)}")


async def prefix_is_empty(fence: TokenFence) -> bool:
    """Whether the store holds no tenant at all under the fence's prefix (a scan that stops at
    the first tenant): the sign of an operator command run without the app's ``--prefix``."""
    found = fence.tenants()
    try:
        async for _ in found:
            return False
        return True
    finally:
        close = getattr(found, "aclose", None)
        if close is not None:
            await close()


def empty_prefix_hint(prefix: str, *, held: bool = False) -> str:
    """What to say when ``prefix`` holds no tenants."""
    verb = "held" if held else "holds"
    return (
        f"prefix {prefix!r} {verb} no tenants at all on this Redis: if the app uses another "
        "prefix, pass the app's --prefix (as in TokenFence(prefix=...))"
    )


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages."""
    return re.sub(r"(?<=://)([^/@]*?):([^/@]*)@", r"\1:***@", url)


def check_redis_url(redis_url: str | None) -> str:
    """The URL, or exit: 2 when there is none, 3 when it is not a Redis URL."""
    if not redis_url:
        fail(ExitCode.USAGE, _NO_REDIS)
    if not redis_url.startswith(_URL_SCHEMES):
        fail(ExitCode.BAD_URL, f"not a Redis URL: {redact(redis_url)!r} (expected redis://, "
                               "rediss:// or unix://)")  # fmt: skip
    from redis.connection import parse_url

    try:
        parse_url(redis_url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        fail(ExitCode.BAD_URL, f"invalid Redis URL {redact(redis_url)!r}: {exc}")
    return redis_url


def load_config(config: Path | None) -> tuple[Plan, ...]:
    """The plans of ``config`` (the built-in plans when None), or exit 7."""
    if config is None:
        return BUILTIN_PLANS
    try:
        return load_plans(config)
    except ConfigError as exc:
        fail(ExitCode.BAD_CONFIG, exc.message)


def default_plan(plans: Sequence[Plan]) -> str:
    """The default plan of ``plans`` by the library's rule (``default_plan_for``), or exit 7."""
    try:
        return default_plan_for(plans)
    except ConfigError as exc:
        fail(ExitCode.BAD_CONFIG, exc.message)


def open_fence(
    redis_url: str | None, prefix: str = "tf", config: Path | None = None, *, timeout_s: float = 2
) -> TokenFence:
    """A fence on the Redis at ``redis_url`` with the configured plans, or exit (2, 3, 7).

    The default plan is the one ``TokenFence(plans=load_plans(config))`` has: the file's
    ``default_plan``, else ``free``.
    """
    url = check_redis_url(redis_url)
    plans = load_config(config)
    default = default_plan(plans)
    return TokenFence(
        redis_url=url, plans=plans, default_plan=default, prefix=prefix, timeout_s=timeout_s
    )


def run_with_fence(
    redis_url: str | None,
    prefix: str,
    config: Path | None,
    action: Callable[[TokenFence], Awaitable[T]],
) -> T:
    """``await action(fence)`` on a fence from ``open_fence``, exiting with a code on failure."""
    fence = open_fence(redis_url, prefix, config)

    async def run() -> T:
        try:
            return await action(fence)
        finally:
            await fence.aclose()

    try:
        return asyncio.run(run())
    except StoreUnavailable as exc:
        fail(ExitCode.STORE_UNAVAILABLE,
             f"cannot reach Redis at {redact(str(redis_url))}: {exc.message}")  # fmt: skip
    except TokenFenceError as exc:
        fail(_exit_code(exc), exc.message)


def _exit_code(exc: TokenFenceError) -> ExitCode:
    if isinstance(exc, UnknownPlan):
        return ExitCode.UNKNOWN_PLAN
    if isinstance(exc, InvalidId):
        return ExitCode.INVALID_ID
    if isinstance(exc, StoreUnavailable):
        return ExitCode.STORE_UNAVAILABLE
    if isinstance(exc, ConfigError):
        return ExitCode.BAD_CONFIG
    return ExitCode.FAILED


@app.callback()
def _quiet_logs(ctx: typer.Context) -> None:
    """Only errors from the library's structlog events, on stderr, while a command runs."""
    saved = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    ctx.call_on_close(lambda: structlog.configure(**saved))


# -- money and time for people ---------------------------------------------------------------


def usd(amount: Decimal | None, places: int = 2) -> str:
    """``$1,234.56``; ``-`` for None."""
    if amount is None:
        return "-"
    rounded = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return f"${rounded:,.{places}f}"


def _precise(amount: Decimal) -> str:
    """Cents, or more places for an amount below a dollar that cents would hide."""
    if amount == 0 or abs(amount) >= 1:
        return usd(amount)
    return usd(amount, 6).rstrip("0").rstrip(".") if abs(amount) < Decimal("0.01") else usd(amount)


# -- demo and simulate -----------------------------------------------------------------------


@app.command()
def demo(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port (0: any free one)")] = 8000,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            show_default=False,
            help="use this Redis instead of the embedded store (keys deleted at exit)",
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="run the scenario, then stop instead of serving")
    ] = False,
) -> None:
    """Serve a demo app with four tenants; one runs out of budget and gets 402, others don't."""
    if redis_url is not None:
        check_redis_url(redis_url)
    try:
        from tokenfence_asgi.cli.demo import DemoError, run_demo
    except ImportError as exc:
        fail(ExitCode.MISSING_EXTRA,
             f"tokenfence demo needs FastAPI, uvicorn and LiteLLM ({exc.name} is missing): "
             "pip install 'tokenfence-asgi[demo]'")  # fmt: skip
    try:
        ok = asyncio.run(run_demo(host=host, port=port, redis_url=redis_url, once=once))
    except DemoError as exc:
        fail(ExitCode.USAGE, str(exc))
    except StoreUnavailable as exc:
        fail(ExitCode.STORE_UNAVAILABLE,
             f"cannot reach Redis at {redact(str(redis_url))}: {exc.message}")  # fmt: skip
    if not ok:
        fail(ExitCode.FAILED, "the demo's scenario did not end as it should (see above)")


@app.command()
def simulate(
    tenants: Annotated[int, typer.Option(min=1, max=10_000, help="number of tenants")] = 50,
    days: Annotated[int, typer.Option(min=1, max=366, help="simulated days")] = 30,
    seed: Annotated[int, typer.Option(help="random seed: the same seed, the same result")] = 1,
    config: ConfigOption = None,
    power_plan: Annotated[
        str | None,
        typer.Option(show_default=False, help="the power user's plan [default: pro]"),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            show_default=False,
            help="run on this Redis instead of the embedded store",
        ),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option(
            callback=_check_prefix,
            show_default=False,
            help="key prefix on Redis [default: a new tfsim-... prefix]",
        ),
    ] = None,
    keep: Annotated[
        bool,
        typer.Option("--keep", help="keep the data in Redis (for a report) and print its prefix"),
    ] = False,
) -> None:
    """Noisy neighbours: N tenants for D days, one power user "analysing everything"."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from tokenfence_asgi.ops.simulate import (
        POWER_CALLS_PER_HOUR,
        SimulationResult,
        run_simulation,
        simulation_plans,
    )

    if redis_url is not None:
        check_redis_url(redis_url)
    plans = simulation_plans() if config is None else load_config(config)
    out = _out()
    store = "the embedded store" if redis_url is None else redact(redis_url)
    described = ("the built-in plans, with half of an unused day rolling over"
                 if config is None else f"the plans of {config}")  # fmt: skip
    out.print(f"Simulating {tenants} tenants for {days} days on {store}, seed {seed}; "
              f"plans: {described}.", markup=False)  # fmt: skip
    with Progress(
        TextColumn("simulated days"), BarColumn(), MofNCompleteColumn(),
        console=Console(stderr=True), transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task("days", total=days)

        async def run() -> SimulationResult:
            result = await run_simulation(
                tenants=tenants, days=days, seed=seed, plans=plans, power_plan=power_plan,
                redis_url=redis_url, prefix=prefix, keep=keep,
                on_day=lambda n: progress.update(task, completed=n),
            )  # fmt: skip
            if result.fence is not None:  # --keep keeps the data, not this process's client
                await result.fence.aclose()
            return result

        try:
            result = asyncio.run(run())
        except StoreUnavailable as exc:
            fail(ExitCode.STORE_UNAVAILABLE,
                 f"cannot reach Redis at {redact(str(redis_url))}: {exc.message}")  # fmt: skip
        except TokenFenceError as exc:
            fail(_exit_code(exc), exc.message)

    table = Table(
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 0),  # one column of space between columns: 80 characters wide
    )
    headers = ("plan", "tenants", "requests", "served", "refused", "down-\ngraded",
               "rollover\nused", "spend", "without\nfence")  # fmt: skip
    for header in headers:
        table.add_column(header, justify="left" if header == "plan" else "right", no_wrap=True)
    rows = [(row.plan, row) for row in result.plans]
    rows.append(("power user", result.power_user))
    for index, (label, row) in enumerate([*rows, ("total", result.total)]):
        table.add_row(
            label, f"{row.tenants:,}", f"{row.requests:,}", f"{row.served:,}",
            f"{row.refused:,}", f"{row.downgraded:,}", usd(row.rollover_used, 0),
            usd(row.spend, 0), usd(row.unfenced, 0),
            end_section=index >= len(rows) - 2,
        )  # fmt: skip
    out.print(table)
    power = result.power_user
    out.print(
        f'The power user, {result.power_user_id} ({power.plan}), set an agent on "analysing '
        f'everything" from {result.spree_start:%a %Y-%m-%d %H:%M} UTC for '
        f"{result.spree_hours} hours "
        f"({POWER_CALLS_PER_HOUR} gpt-4o calls of 100k tokens an hour): it was charged "
        f"{usd(power.spend)} instead of {usd(power.unfenced)}."
    )
    lost = result.others_lost
    lost_text = f"{lost:,} request{'s' if lost != 1 else ''}"
    if lost:
        lost_text += " (refused by their own plans' limits)"
    out.print(
        f"[bold]Without tokenfence the bill would have been {usd(result.unfenced_bill)}; "
        f"with it {usd(result.fenced_bill)}, and other tenants lost {lost_text}.[/]"
    )
    out.print(f"Ran in {result.elapsed_s:.1f} s.", style="dim")
    if keep:
        if redis_url is None:
            out.print("--keep: the embedded store lives in this process only, so nothing is kept;"
                      " pass --redis-url to keep the data.")  # fmt: skip
        else:
            last_day = result.end - timedelta(seconds=1)
            out.print(
                f"Kept the data in {redact(redis_url)} under prefix {result.prefix!r} "
                f"(simulated {result.start:%Y-%m-%d} to {last_day:%Y-%m-%d}); delete it with "
                f"redis-cli --scan --pattern '{result.prefix}:*' | xargs redis-cli del",
                soft_wrap=True,
            )


# -- operator commands -----------------------------------------------------------------------


def _money(amount: Decimal | None) -> str | None:
    return None if amount is None else f"{amount:.6f}"


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
    money = _money
    data = {
        "window": w.window, "kind": w.kind, "scope": w.scope, "used": money(w.used),
        "held": money(w.held), "limit": money(w.limit), "remaining": money(w.remaining),
        "carried": money(w.carried), "requests": w.requests, "max_requests": w.max_requests,
        "resets_at": w.resets_at.isoformat().replace("+00:00", "Z"),
        "features": {k: money(v) for k, v in w.features.items()},
    }  # fmt: skip
    if w.features:
        data["feature_limits"] = {k: money(v) for k, v in _feature_limits(plan, w).items()}
    return data


def _status_dict(s: TenantStatus, plan: Plan) -> dict[str, Any]:
    return {
        "tenant": s.tenant_id, "plan": s.plan, "killed": s.killed,
        "killed_features": list(s.killed_features), "held": f"{s.held:.6f}",
        "open_holds": s.open_holds, "pool": s.pool, "pool_plan": s.pool_plan,
        "feature_mode": plan.feature_mode if plan.features else None,
        "windows": [_window_dict(w, plan) for w in (*s.windows, *s.pool_windows)],
    }  # fmt: skip


def _print_features(out: Console, s: TenantStatus, plan: Plan) -> None:
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
                    escape(name), w.window, _precise(used), usd(limit), f"{weight:.0%}", unused
                )
    if table.row_count:
        rule = (
            "no feature spends past its cap"
            if cap
            else "past its share, a feature spends only what no other's unused share keeps"
        )
        out.print(f"  feature {'caps' if cap else 'shares'} ({rule}):", markup=False)
        out.print(table)


def _print_status(out: Console, s: TenantStatus, configured: set[str]) -> None:
    state = "[bold red]KILLED[/] (no AI calls)" if s.killed else "[green]enabled[/]"
    out.print(f"[bold]{escape(s.tenant_id)}[/]  plan [bold]{escape(s.plan)}[/]  AI calls {state}")
    if s.plan not in configured:
        out.print(f"  plan {s.plan!r} is not in the configured plans: limits shown are the "
                  "default plan's (pass the app's --config)", style="yellow",
                  markup=False)  # fmt: skip
    if s.killed_features:
        out.print(f"  features switched off: {escape(', '.join(s.killed_features))}")
    if s.pool:
        out.print(f"  pool {escape(s.pool)} (plan {escape(str(s.pool_plan))})")
    out.print(f"  held now: {_precise(s.held)} in {s.open_holds} open hold(s)")
    table = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("window", "used", "limit", "remaining", "requests", "carried", "resets (UTC)"):
        left = column in ("window", "resets (UTC)")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    for w in (*s.windows, *s.pool_windows):
        name = w.window + ("" if w.kind == "calendar" else " sliding")
        name += " (pool)" if w.scope == "pool" else ""
        requests = f"{w.requests:,}" + (f" / {w.max_requests:,}" if w.max_requests else "")
        table.add_row(name, _precise(w.used), usd(w.limit), usd(w.remaining), requests,
                      _precise(w.carried), f"{w.resets_at:%Y-%m-%d %H:%M}")  # fmt: skip
    out.print(table)


@app.command()
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
    out = _out()
    _print_status(out, result, {p.name for p in load_config(config)})
    _print_features(out, result, plan)


@app.command("set-plan")
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
    _out().print(f"tenant {tenant!r} is now on plan {plan!r}" + (" (a new tenant)" if new else ""))


async def _known_tenant(
    fence: TokenFence, tenant: str, prefix: str, *, create: bool | None = None
) -> bool:
    """Whether ``tenant`` is new; exit 9 when the store has no state for it, unless ``create``
    (None: the command cannot create one). The admin API's rule: an unknown tenant is a 404."""
    if await fence.has_tenant(tenant):
        return False
    empty = await prefix_is_empty(fence)
    if create:
        if empty:
            warn(empty_prefix_hint(prefix, held=True))
        return True
    message = f"no tenant {tenant!r} under prefix {prefix!r}: it has no state and no plan assigned"
    if create is not None:
        message += " (pass --create for a new tenant)"
    fail(ExitCode.UNKNOWN_TENANT, message + (f"; {empty_prefix_hint(prefix)}" if empty else ""))


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


TenantArgument = Annotated[
    str | None, typer.Argument(show_default=False, help="tenant id (or --all)")
]
FeatureOption = Annotated[
    str | None, typer.Option("--feature", show_default=False, help="only this feature")
]
AllOption = Annotated[bool, typer.Option("--all", help="every tenant (the global switch)")]


def _switched(tenant: str | None, feature: str | None) -> str:
    who = "every tenant" if tenant is None else f"tenant {tenant!r}"
    return f"feature {feature!r} of {who}" if feature else who


@app.command()
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
    _out().print(f"AI calls are now refused for {_switched(target, feature)}{lag}")


@app.command()
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
    _out().print(f"AI calls are allowed again for {_switched(target, feature)}")


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


def _plan_dict(plan: Plan) -> dict[str, Any]:
    return {
        "name": plan.name,
        "limits": [
            {"window": lim.window, "kind": lim.kind, "rollover": lim.rollover,
             "max_cost": None if lim.max_cost is None else f"{lim.max_cost:.6f}",
             "max_requests": lim.max_requests}
            for lim in plan.limits
        ],
        "models": None if plan.models is None else list(plan.models),
        "downgrade": None if plan.downgrade is None else dict(plan.downgrade),
        "max_input_chars": plan.max_input_chars, "max_input_tokens": plan.max_input_tokens,
        "features": None if plan.features is None else dict(plan.features),
        "feature_mode": plan.feature_mode, "upgrade_url": plan.upgrade_url,
        "enforce": plan.enforce,
        "price_per_month": None if plan.price_per_month is None else f"{plan.price_per_month:.2f}",
    }  # fmt: skip


@app.command()
def plans(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """The effective plans: from --config, else the built-in ones."""
    configured = load_config(config)
    default = default_plan(configured)  # exits 7, as the other commands, when there is none
    if as_json:
        print(json.dumps([_plan_dict(p) for p in configured], indent=2))
        return
    out = _out()
    source = "built-in plans" if config is None else f"plans from {config}"
    out.print(f"{len(configured)} {source}; tenants without a plan are on {default!r}.",
              markup=False)  # fmt: skip
    for plan in configured:
        notes = [note for flag, note in ((plan.name == default, "default"),
                                         (not plan.enforce, "shadow mode: never refuses"))
                 if flag]  # fmt: skip
        out.print(f"\n[bold]{escape(plan.name)}[/]" + (f" ({', '.join(notes)})" if notes else ""))
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column(overflow="fold")
        for key, value in _plan_rows(plan):
            grid.add_row(key, escape(value))
        out.print(Padding(grid, (0, 0, 0, 2), expand=False))


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
        rows.append(
            ("features", f"{shares} ({'caps' if plan.feature_mode == 'cap' else 'shares'})")
        )
    if plan.price_per_month is not None:
        rows.append(("price", f"{usd(plan.price_per_month)} a month"))
    if plan.upgrade_url:
        rows.append(("upgrade", plan.upgrade_url))
    if plan.policy is not None:
        rows.append(("tool policy", "yes"))
    return rows


# -- commands from other modules -------------------------------------------------------------


def _register_command_modules() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name or (exc.name and not exc.name.startswith("tokenfence_asgi")):
                continue  # absent, or needs an extra that is not installed: no commands
            raise
        module.register(app)


_register_command_modules()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tokenfence`` command; returns the process exit code."""
    try:
        app(args=None if argv is None else list(argv), prog_name="tokenfence")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
