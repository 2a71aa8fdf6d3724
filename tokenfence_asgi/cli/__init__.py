"""The ``tokenfence`` command."""

from tokenfence_asgi.cli.main import COMMAND_MODULES, app, main

__all__ = ["COMMAND_MODULES", "app", "main"]
