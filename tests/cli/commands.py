"""Running the ``tokenfence`` command in-process, for the tests of its commands."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from tokenfence_asgi.cli import app

SCRIPT = Path(sys.executable).with_name("tokenfence")
"""The installed console script, next to the interpreter."""

CLOSED_REDIS = "redis://127.0.0.1:1/0"
"""A Redis URL nothing answers at (for commands that fail before connecting)."""

PLANS_TOML = """\
[plans.team]
limits = [{ window = "1d", max_cost = "10", max_requests = 100, rollover = 0.5 },
          { window = "1mo", max_cost = "200" }]
models = ["gpt-4o*"]
downgrade = { "gpt-4o" = "gpt-4o-mini" }
features = { chat = 0.6, search = 0.2 }
price_per_month = "49"

[plans.free]
limits = [{ window = "1d", max_cost = "0.25" }]
"""

_CLEAN_ENV = {"TOKENFENCE_REDIS_URL": "", "TOKENFENCE_PREFIX": "", "TOKENFENCE_CONFIG": ""}


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    """Invoke the command in-process; stdout and stderr are kept apart."""
    env = {**_CLEAN_ENV, "COLUMNS": "200", **(env or {})}
    return CliRunner().invoke(app, list(args), env={k: v or None for k, v in env.items()})


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
