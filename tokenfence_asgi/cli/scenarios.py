"""``tokenfence demo`` and ``tokenfence simulate``: the two stories, on the embedded store.

Both run on an in-process store unless given ``--redis-url`` (then under a prefix of their own,
deleted at the end). The demo app itself is ``tokenfence_asgi.cli.demo`` (the ``demo`` extra);
the simulation is ``tokenfence_asgi.ops.simulate``.
"""

# No ``from __future__ import annotations``: Typer reads the commands' annotations at runtime.

import asyncio
from datetime import timedelta
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from tokenfence_asgi.cli.options import (
    ConfigOption,
    ExitCode,
    check_prefix,
    check_redis_url,
    exit_code_of,
    fail,
    load_config,
    out,
    redact,
    store_unreachable,
    usd,
)
from tokenfence_asgi.errors import StoreUnavailable, TokenFenceError
from tokenfence_asgi.ops.simulate import (
    POWER_CALLS_PER_HOUR,
    SimulationResult,
    run_simulation,
    simulation_plans,
)

__all__ = ["demo", "register", "simulate"]


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
        fail(
            ExitCode.MISSING_EXTRA,
            f"tokenfence demo needs FastAPI, uvicorn and LiteLLM ({exc.name} is missing): "
            "pip install 'tokenfence-asgi[demo]'",
        )
    try:
        ok = asyncio.run(run_demo(host=host, port=port, redis_url=redis_url, once=once))
    except DemoError as exc:
        fail(ExitCode.USAGE, str(exc))
    except StoreUnavailable as exc:
        store_unreachable(redis_url, exc)
    if not ok:
        fail(ExitCode.FAILED, "the demo's scenario did not end as it should (see above)")


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
            callback=check_prefix,
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
    if redis_url is not None:
        check_redis_url(redis_url)
    plans = simulation_plans() if config is None else load_config(config)
    console = out()
    store = "the embedded store" if redis_url is None else redact(redis_url)
    if config is None:
        described = "the built-in plans, with half of an unused day rolling over"
    else:
        described = f"the plans of {config}"
    console.print(
        f"Simulating {tenants} tenants for {days} days on {store}, seed {seed}; "
        f"plans: {described}.",
        markup=False,
    )
    columns = (TextColumn("simulated days"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("days", total=days)

        async def run() -> SimulationResult:
            result = await run_simulation(
                tenants=tenants,
                days=days,
                seed=seed,
                plans=plans,
                power_plan=power_plan,
                redis_url=redis_url,
                prefix=prefix,
                keep=keep,
                on_day=lambda n: progress.update(task, completed=n),
            )
            if result.fence is not None:  # --keep keeps the data, not this process's client
                await result.fence.aclose()
            return result

        try:
            result = asyncio.run(run())
        except StoreUnavailable as exc:
            store_unreachable(redis_url, exc)
        except TokenFenceError as exc:
            fail(exit_code_of(exc), exc.message)

    console.print(_outcome_table(result))
    _print_story(console, result)
    if keep:
        _print_kept(console, result, redis_url)


def _outcome_table(result: SimulationResult) -> Table:
    table = Table(
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 0),  # one column of space between columns: 80 characters wide
    )
    headers = (
        "plan",
        "tenants",
        "requests",
        "served",
        "refused",
        "down-\ngraded",
        "rollover\nused",
        "spend",
        "without\nfence",
    )
    for header in headers:
        table.add_column(header, justify="left" if header == "plan" else "right", no_wrap=True)
    rows = [(row.plan, row) for row in result.plans]
    rows.append(("power user", result.power_user))
    for index, (label, row) in enumerate([*rows, ("total", result.total)]):
        counts = (row.tenants, row.requests, row.served, row.refused, row.downgraded)
        money = (row.rollover_used, row.spend, row.unfenced)
        table.add_row(
            label,
            *(f"{count:,}" for count in counts),
            *(usd(amount, 0) for amount in money),
            end_section=index >= len(rows) - 2,
        )
    return table


def _print_story(console: Console, result: SimulationResult) -> None:
    power = result.power_user
    console.print(
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
    console.print(
        f"[bold]Without tokenfence the bill would have been {usd(result.unfenced_bill)}; "
        f"with it {usd(result.fenced_bill)}, and other tenants lost {lost_text}.[/]"
    )
    console.print(f"Ran in {result.elapsed_s:.1f} s.", style="dim")


def _print_kept(console: Console, result: SimulationResult, redis_url: str | None) -> None:
    if redis_url is None:
        console.print(
            "--keep: the embedded store lives in this process only, so nothing is kept;"
            " pass --redis-url to keep the data."
        )
        return
    last_day = result.end - timedelta(seconds=1)
    console.print(
        f"Kept the data in {redact(redis_url)} under prefix {result.prefix!r} "
        f"(simulated {result.start:%Y-%m-%d} to {last_day:%Y-%m-%d}); delete it with "
        f"redis-cli --scan --pattern '{result.prefix}:*' | xargs redis-cli del",
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add ``demo`` and ``simulate`` to ``app``."""
    app.command("demo")(demo)
    app.command("simulate")(simulate)
