"""What the ``tokenfence`` commands share: their options, exit codes, messages and fence set-up.

Every command module imports from here (never from ``tokenfence_asgi.cli.main``, which imports
them). Failures exit with a distinct code (``ExitCode``) and one line on stderr (``fail``), with
any password in a URL masked (``redact``).
"""

# No ``from __future__ import annotations``: Typer reads the options' annotations at runtime.

import asyncio
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import structlog
import typer
from rich.console import Console
from rich.markup import escape

from tokenfence_asgi.cli.exit_codes import ExitCode
from tokenfence_asgi.config import BUILTIN_PLANS, Plan, default_plan_for, load_plans
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import (
    ConfigError,
    InvalidId,
    StoreUnavailable,
    TokenFenceError,
    UnknownPlan,
)
from tokenfence_asgi.money import format_usd_rounded

__all__ = [
    "ConfigOption",
    "CreateOption",
    "ExitCode",
    "JsonOption",
    "PrefixOption",
    "RedisUrlOption",
    "check_prefix",
    "check_redis_url",
    "default_plan",
    "empty_prefix_hint",
    "exit_code_of",
    "fail",
    "load_config",
    "open_fence",
    "out",
    "precise",
    "prefix_is_empty",
    "quiet_logs",
    "redact",
    "run_with_fence",
    "store_unreachable",
    "usd",
    "warn",
]

T = TypeVar("T")

_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_URL_SCHEMES = ("redis://", "rediss://", "unix://")
_NO_REDIS = (
    "this command acts on a shared Redis: pass --redis-url redis://HOST:6379/0 or set "
    "TOKENFENCE_REDIS_URL (the embedded store lives inside one process, so there is nothing "
    "to act on)"
)


def check_prefix(value: str | None) -> str | None:
    """The ``--prefix`` callback: 1-32 of ``[A-Za-z0-9_.-]``, as ``TokenFence(prefix=...)``."""
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
        callback=check_prefix,
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


# -- messages ---------------------------------------------------------------------------------


def out() -> Console:
    """The console a command prints its result on (stdout, no syntax highlighting)."""
    return Console(highlight=False)


def fail(code: ExitCode, message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(int(code))


def warn(message: str) -> None:
    """Print ``warning: message`` on stderr."""
    Console(stderr=True, highlight=False).print(f"[yellow]warning:[/] {escape(message)}")


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages."""
    return re.sub(r"(?<=://)([^/@]*?):([^/@]*)@", r"\1:***@", url)


def store_unreachable(redis_url: str | None, exc: StoreUnavailable) -> NoReturn:
    """Exit 5, naming the Redis (password masked) and what the client said."""
    fail(
        ExitCode.STORE_UNAVAILABLE,
        f"cannot reach Redis at {redact(str(redis_url))}: {exc.message}",
    )


def exit_code_of(exc: TokenFenceError) -> ExitCode:
    """The exit code for a fence error a command did not expect."""
    if isinstance(exc, UnknownPlan):
        return ExitCode.UNKNOWN_PLAN
    if isinstance(exc, InvalidId):
        return ExitCode.INVALID_ID
    if isinstance(exc, StoreUnavailable):
        return ExitCode.STORE_UNAVAILABLE
    if isinstance(exc, ConfigError):
        return ExitCode.BAD_CONFIG
    return ExitCode.FAILED


def quiet_logs(ctx: typer.Context) -> None:
    """Only errors from the library's structlog events, on stderr, while a command runs."""
    saved = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    ctx.call_on_close(lambda: structlog.configure(**saved))


# -- the store and the plans ------------------------------------------------------------------


def check_redis_url(redis_url: str | None) -> str:
    """The URL, or exit: 2 when there is none, 3 when it is not a Redis URL."""
    if not redis_url:
        fail(ExitCode.USAGE, _NO_REDIS)
    if not redis_url.startswith(_URL_SCHEMES):
        fail(
            ExitCode.BAD_URL,
            f"not a Redis URL: {redact(redis_url)!r} (expected redis://, rediss:// or unix://)",
        )
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
        store_unreachable(redis_url, exc)
    except TokenFenceError as exc:
        fail(exit_code_of(exc), exc.message)


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


# -- money for people -------------------------------------------------------------------------


def usd(amount: Decimal | None, places: int = 2) -> str:
    """``$1,234.56``; ``-`` for None."""
    if amount is None:
        return "-"
    return format_usd_rounded(amount, places)


def precise(amount: Decimal) -> str:
    """Cents, or more places for an amount below a dollar that cents would hide."""
    if amount == 0 or abs(amount) >= 1:
        return usd(amount)
    return usd(amount, 6).rstrip("0").rstrip(".") if abs(amount) < Decimal("0.01") else usd(amount)
