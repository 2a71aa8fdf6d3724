"""``tokenfence serve``: the HTTP reserve / commit API (``tokenfence_asgi.web.api``) in uvicorn.

``register(app)`` adds the command to a Typer app (the ``tokenfence`` command lists this module
in ``COMMAND_MODULES``); ``python -m tokenfence_asgi.cli.serve serve ...`` runs it on its own.
Its options reach the worker processes in the environment (``_serve_app`` is the factory each
worker builds its app with), so every worker serves the same plans under the same signing key.
Needs the ``server`` extra (uvicorn, pydantic).
"""

# No ``from __future__ import annotations``: Typer reads the commands' annotations at runtime.

import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from tokenfence_asgi.cli.exit_codes import ExitCode
from tokenfence_asgi.config import BUILTIN_PLANS, default_plan_for, load_plans
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import ConfigError, UnknownPlan
from tokenfence_asgi.store.keys import KeySpace

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["register", "serve"]

_CONFIG_ENV = "TOKENFENCE_SERVE_CONFIG"
_EXTRA = "pip install 'tokenfence-asgi[server]'"


def _serve_app() -> "Starlette":
    """The app of ``tokenfence serve`` (a uvicorn factory): its options come in the environment,
    so that every worker process builds the same app."""
    from tokenfence_asgi.web.api import service_app

    cfg = json.loads(os.environ[_CONFIG_ENV])
    plans = load_plans(cfg["config"]) if cfg["config"] else None
    fence = TokenFence(
        redis_url=cfg["redis_url"],
        plans=plans,
        default_plan=cfg["default_plan"],
        prefix=cfg["prefix"],
    )
    return service_app(
        fence,
        token=cfg["token"],
        signing_key=cfg["signing_key"],
        owns_fence=True,
        preload_prices=True,
    )


def _run(**options: Any) -> None:
    """Run uvicorn (a seam for tests)."""
    try:
        import uvicorn
    except ModuleNotFoundError:
        _fail(f"uvicorn is not installed: {_EXTRA}", ExitCode.MISSING_EXTRA)
    uvicorn.run("tokenfence_asgi.cli.serve:_serve_app", factory=True, **options)


def _fail(message: str, code: int = ExitCode.USAGE) -> NoReturn:
    """Print the message on stderr and exit with ``code`` (the ``tokenfence`` ``ExitCode``)."""
    typer.echo(f"tokenfence serve: {message}", err=True)
    raise typer.Exit(code)


def serve(
    token: Annotated[
        str | None,
        typer.Option(
            envvar="TOKENFENCE_SERVICE_TOKEN",
            show_default=False,
            help="Service token clients send as 'Authorization: Bearer <token>' "
            "(required; prefer the environment variable).",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8787,
    workers: Annotated[
        int, typer.Option(help="Worker processes (more than 1 needs --redis-url).")
    ] = 1,
    redis_url: Annotated[
        str | None,
        typer.Option(
            envvar="TOKENFENCE_REDIS_URL",
            show_default=False,
            help="Redis holding the budgets (default: the embedded, in-process store).",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Plans file (TOML); default: the built-in plans.", show_default=False),
    ] = None,
    default_plan: Annotated[
        str | None,
        typer.Option(
            help="Plan of tenants without one (default: the plan file's default_plan, "
            "else 'free').",
            show_default=False,
        ),
    ] = None,
    prefix: Annotated[str, typer.Option(help="Key prefix in Redis.")] = "tf",
    signing_key: Annotated[
        str | None,
        typer.Option(
            envvar="TOKENFENCE_SIGNING_KEY",
            show_default=False,
            help="Key (16+ bytes) signing reservation tokens; give every instance the "
            "same one (default: random, shared by this command's workers).",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    """Serve the HTTP reserve / commit API (POST /reserve, /commit, /release; GET /status)."""
    try:
        from tokenfence_asgi.web.api.app import valid_service_token
        from tokenfence_asgi.web.api.tokens import signing_key_bytes
    except ModuleNotFoundError as exc:
        _fail(f"{exc.name} is not installed: {_EXTRA}", ExitCode.MISSING_EXTRA)
    if not token:
        _fail("a service token is required: --token or TOKENFENCE_SERVICE_TOKEN")
    if not valid_service_token(token):
        _fail("the service token must be 16-4096 printable ASCII characters without spaces")
    if workers < 1:
        _fail(f"--workers must be at least 1, got {workers}")
    if workers > 1 and not redis_url:
        _fail(
            f"--workers {workers} needs --redis-url: the embedded store lives inside one "
            "process, so each worker would enforce budgets of its own"
        )
    if not 0 <= port <= 65535:
        _fail(f"--port must be in [0, 65535], got {port}")
    try:
        KeySpace(prefix)
        if signing_key is not None:
            signing_key_bytes(signing_key, "--signing-key")
    except ConfigError as exc:
        _fail(exc.message)
    try:
        plans = BUILTIN_PLANS if config is None else load_plans(config)
    except ConfigError as exc:
        _fail(exc.message, ExitCode.BAD_CONFIG)
    names = [p.name for p in plans]
    if default_plan is not None and default_plan not in names:
        unknown = UnknownPlan(default_plan, names, field="--default-plan")
        _fail(unknown.message, ExitCode.UNKNOWN_PLAN)
    try:
        plan = default_plan_for(plans, default_plan)  # the library's rule, and the CLI's
    except ConfigError as exc:  # no --default-plan, no default_plan in the file, no 'free'
        _fail(f"{exc.message}; or give --default-plan", ExitCode.BAD_CONFIG)
    os.environ[_CONFIG_ENV] = json.dumps(
        {
            "token": token,
            "redis_url": redis_url,
            "config": None if config is None else os.fspath(config.resolve()),
            "default_plan": plan,
            "prefix": prefix,
            "signing_key": signing_key or secrets.token_urlsafe(32),
        }
    )
    _run(
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        lifespan="on",
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to a Typer app."""
    app.command("serve")(serve)


def _main() -> None:  # pragma: no cover - exercised as a subprocess
    cli = typer.Typer(add_completion=False, no_args_is_help=True)

    @cli.callback()
    def root() -> None:
        """tokenfence: the HTTP reserve / commit API."""

    register(cli)
    cli(prog_name="tokenfence")


if __name__ == "__main__":  # pragma: no cover
    _main()
