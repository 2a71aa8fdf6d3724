"""``tokenfence report`` and ``tokenfence export``: spend reports and the PostgreSQL export.

``register(app)`` adds both commands to a Typer app (the ``tokenfence`` command lists this
module in ``COMMAND_MODULES``); ``python -m tokenfence_asgi.cli.ledger`` runs them on their own.
"""

# No ``from __future__ import annotations``: Typer reads the commands' annotations at runtime.

import asyncio
import contextlib
import json
import signal
import sys
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console

from tokenfence_asgi.cli.options import (
    ConfigOption,
    ExitCode,
    PrefixOption,
    RedisUrlOption,
    empty_prefix_hint,
    fail,
    load_config,
    open_fence,
    prefix_is_empty,
    quiet_logs,
    redact,
    run_with_fence,
    store_unreachable,
    warn,
)
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import MissingExtra, StoreUnavailable, TokenFenceError
from tokenfence_asgi.ops.report import build_report, render_table, report_csv, report_json
from tokenfence_asgi.results import DailyUsage

__all__ = ["register"]


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def _day(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        message = f"expected a date YYYY-MM-DD, got {value!r}"
        raise typer.BadParameter(message, param_hint=name) from None


def _prices(items: list[str], plans: dict[str, Decimal | None]) -> dict[str, Decimal]:
    """Plan prices: the configured ``price_per_month``, overridden by ``--price PLAN=DOLLARS``."""
    prices = {name: price for name, price in plans.items() if price is not None}
    for item in items:
        name, sep, amount = item.partition("=")
        try:
            price = Decimal(amount.strip().lstrip("$").replace(",", ""))
        except InvalidOperation:
            price = Decimal("NaN")
        if not sep or not name.strip() or not price.is_finite() or price < 0:
            raise typer.BadParameter(
                f"expected PLAN=DOLLARS, e.g. pro=49, got {item!r}", param_hint="--price"
            )
        prices[name.strip()] = price
    return prices


def report(
    redis_url: RedisUrlOption = None,
    prefix: PrefixOption = "tf",
    config: ConfigOption = None,
    start: Annotated[
        str | None,
        typer.Option(show_default=False, help="first day, YYYY-MM-DD [default: 1st of the month]"),
    ] = None,
    end: Annotated[
        str | None, typer.Option(show_default=False, help="last day, YYYY-MM-DD [default: today]")
    ] = None,
    top: Annotated[int, typer.Option(min=0, max=10_000, help="how many top spenders")] = 10,
    price: Annotated[
        list[str] | None,
        typer.Option(
            "--price",
            show_default=False,
            help="a plan's price per month, PLAN=DOLLARS (repeat; overrides the plan file)",
        ),
    ] = None,
    output: Annotated[Format, typer.Option("--format", help="output format")] = Format.table,
) -> None:
    """Spend per tenant and per plan: top spenders, p50/p90/p99 spend, refusals, margin."""
    today = datetime.now(UTC).date()
    first = _day(start, "--start")
    last = _day(end, "--end") or today
    if first is None:
        first = last.replace(day=1)
    if last < first:
        raise typer.BadParameter(f"--end {last} is before --start {first}", param_hint="--end")
    plans = {p.name: p.price_per_month for p in load_config(config)}
    prices = _prices(price or [], plans)

    async def read(fence: TokenFence) -> list[DailyUsage]:
        usage = [day async for day in fence.daily_usage(first, last)]
        if not usage and await prefix_is_empty(fence):
            warn(empty_prefix_hint(prefix))
        return usage

    usage = run_with_fence(redis_url, prefix, config, read)
    result = build_report(usage, first, last, prices=prices, top=top)
    if output == Format.json:
        print(json.dumps(report_json(result), indent=2))
    elif output == Format.csv:
        sys.stdout.write(report_csv(result))
    else:
        console = Console(highlight=False)
        if not console.is_terminal:  # a file or a pipe: wide enough for every column
            console = Console(highlight=False, width=160)
        render_table(result, console)


def export(
    postgres: Annotated[
        str,
        typer.Option(
            "--postgres",
            envvar="TOKENFENCE_POSTGRES_DSN",
            show_default=False,
            help="PostgreSQL DSN, e.g. postgresql://user@host/db [env TOKENFENCE_POSTGRES_DSN]",
        ),
    ],
    redis_url: RedisUrlOption = None,
    prefix: PrefixOption = "tf",
    config: ConfigOption = None,
    batch: Annotated[int, typer.Option(min=1, max=100_000, help="rows per transaction")] = 1000,
    follow: Annotated[
        bool, typer.Option("--follow", help="keep exporting new records until interrupted")
    ] = False,
    poll: Annotated[float, typer.Option(min=0.01, help="seconds between polls when idle")] = 1.0,
    rescan: Annotated[
        float, typer.Option(min=0.1, help="seconds between looks for new ledger streams")
    ] = 30.0,
) -> None:
    """Copy the usage ledger and daily usage into PostgreSQL (ai_usage_log, ai_usage_daily).

    Idempotent and resumable: rows are keyed by record id, and each batch commits with its
    streams' checkpoints, so a re-run after a crash continues where the last batch ended.
    """
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        missing = MissingExtra("asyncpg", "postgres", needed_for="tokenfence export")
        fail(ExitCode.MISSING_EXTRA, missing.message)
    from tokenfence_asgi.ops.export import Exporter

    fence = open_fence(redis_url, prefix, config)
    out = Console(highlight=False, stderr=follow)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        try:
            async with Exporter(fence, postgres, batch=batch) as exporter:
                if follow:
                    out.print(f"following the ledger under prefix {prefix!r}; Ctrl-C stops")
                    stats = await exporter.follow(poll_s=poll, rescan_s=rescan, stop=stop)
                else:
                    stats = await exporter.export_all()
        finally:
            await fence.aclose()
        out.print(
            f"exported {stats.inserted:,} new record(s) of {stats.read:,} read from "
            f"{stats.streams:,} ledger stream(s) in {stats.batches:,} batch(es); "
            f"{stats.days:,} tenant-day(s) written"
        )
        if stats.trimmed:
            out.print(
                f"[yellow]warning:[/] {len(stats.trimmed)} stream(s) were trimmed past the last "
                "export: some records were lost to retention (raise ledger_retention or export "
                "more often)"
            )

    try:
        asyncio.run(run())
    except StoreUnavailable as exc:
        store_unreachable(redis_url, exc)
    except TokenFenceError as exc:
        fail(ExitCode.FAILED, exc.message)
    except (OSError, TimeoutError) as exc:
        fail(ExitCode.FAILED, f"cannot reach PostgreSQL at {redact(postgres)}: {exc}")
    except Exception as exc:
        if type(exc).__module__.startswith("asyncpg"):
            fail(ExitCode.FAILED, f"PostgreSQL at {redact(postgres)}: {exc}")
        raise


def register(app: typer.Typer) -> None:
    """Add ``report`` and ``export`` to ``app``."""
    app.command("report")(report)
    app.command("export")(export)


def main() -> None:  # pragma: no cover - the same commands are tested through register()
    """``python -m tokenfence_asgi.cli.ledger``: ``report`` and ``export`` on their own."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
    app.callback()(quiet_logs)
    register(app)
    app(prog_name="python -m tokenfence_asgi.cli.ledger")


if __name__ == "__main__":  # pragma: no cover
    main()
