"""The ``tokenfence`` command (the ``cli`` extra: Typer and Rich).

Without Typer or Rich, ``main`` prints which extra to install and returns ``MISSING_EXTRA``.
"""

import importlib
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

    def __getattr__(name: str) -> Any:
        # Imported on first use, so that ``python -m tokenfence_asgi.cli.ledger`` (or
        # ``.serve``) runs its module once, not after this package imported it already.
        if name in ("COMMAND_MODULES", "app", "main"):
            command = importlib.import_module("tokenfence_asgi.cli.main")
            # Importing the submodule ``main`` set this package's ``main`` to it: the
            # function is what the name stands for.
            names = {n: getattr(command, n) for n in ("COMMAND_MODULES", "app", "main")}
            globals().update(names)
            return names[name]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["COMMAND_MODULES", "ExitCode", "app", "main"]
