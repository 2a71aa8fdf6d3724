"""The ``tokenfence`` command (the ``cli`` extra: Typer and Rich).

Without Typer or Rich, ``main`` prints which extra to install and returns ``MISSING_EXTRA``.
"""

import sys
from collections.abc import Sequence
from typing import Any

from tokenfence_asgi.cli.exit_codes import ExitCode
from tokenfence_asgi.errors import MissingExtra

try:
    import rich  # noqa: F401  (the cli extra)
    import typer  # noqa: F401
except ImportError as exc:
    _missing = MissingExtra(
        "Typer and Rich", "cli", needed_for="the tokenfence command", module=exc.name
    )

    def main(argv: Sequence[str] | None = None) -> int:
        """Say which extra the ``tokenfence`` command needs; returns ``MISSING_EXTRA``."""
        print(f"error: {_missing.message}", file=sys.stderr)
        return int(ExitCode.MISSING_EXTRA)

    def __getattr__(name: str) -> Any:
        if name in ("COMMAND_MODULES", "app"):
            raise _missing
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

else:
    from tokenfence_asgi.cli.main import COMMAND_MODULES, app, main

__all__ = ["COMMAND_MODULES", "ExitCode", "app", "main"]
