"""The ``tokenfence`` command: one Typer app, with the commands of ``COMMAND_MODULES``.

Each module in ``COMMAND_MODULES`` adds its commands with a ``register(app: typer.Typer)``
function; what the commands share (options, exit codes, messages) is in
``tokenfence_asgi.cli.options``, which they import instead of this module.
"""

# No ``from __future__ import annotations``: Typer reads the commands' annotations at runtime.

import sys
from collections.abc import Sequence
from typing import Protocol

import typer

from tokenfence_asgi.cli import ledger, operator, plans, scenarios, serve
from tokenfence_asgi.cli.options import quiet_logs

__all__ = ["COMMAND_MODULES", "CommandModule", "app", "main"]


class CommandModule(Protocol):
    """A module that adds commands to ``tokenfence``."""

    def register(self, app: typer.Typer) -> None:
        """Add the module's commands to ``app``."""


COMMAND_MODULES: tuple[CommandModule, ...] = (  # one line per module, in the order of --help
    scenarios,  # demo, simulate
    operator,  # status, set-plan, kill, revive
    plans,  # plans
    ledger,  # report, export
    serve,  # serve
)
"""The modules whose ``register(app)`` adds their commands to ``tokenfence``."""

app = typer.Typer(
    name="tokenfence",
    help="Multi-tenant AI cost control: the demo, the noisy-neighbour simulation, and "
    "operator commands against a shared Redis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # never print locals: they may hold a Redis password
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.callback()(quiet_logs)
for _module in COMMAND_MODULES:
    _module.register(app)


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
