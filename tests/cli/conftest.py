"""Fixtures of the command tests: an operator command on the test Redis, a plan file."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.commands import PLANS_TOML, run
from tokenfence_asgi.ops.simulate import delete_prefix


@pytest.fixture
def operator(redis_url: str, prefix: str) -> Iterator[Any]:
    """Runs an operator command on the test Redis under the test's prefix; cleans up."""

    def invoke(*args: str) -> Any:
        return run(*args, "--redis-url", redis_url, "--prefix", prefix)

    yield invoke
    asyncio.run(delete_prefix(redis_url, prefix))


@pytest.fixture
def plans_file(tmp_path: Path) -> Path:
    path = tmp_path / "plans.toml"
    path.write_text(PLANS_TOML)
    return path
