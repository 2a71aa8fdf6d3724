"""Find the Lua scripts, prepend the shared helpers, register them once, decode their replies.

The scripts are package data, ``tokenfence_asgi/store/lua/*.lua``, read from the package only.
Registration uses redis-py's ``Script`` objects, which run EVALSHA and on NOSCRIPT (after a
restart, a failover or SCRIPT FLUSH) load the script and retry once, on every primary of a
cluster.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

__all__ = ["SCRIPT_NAMES", "decode", "script_source"]

SCRIPT_NAMES = (
    "reserve",
    "commit",
    "release",
    "status",
    "admin",
    "move",
    "approval",
    "usage",
)
_LIB = "_lib"


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


@functools.cache
def script_source(name: str) -> str:
    """The full source of script ``name``: the shared helpers followed by the script."""
    if name not in SCRIPT_NAMES:
        raise KeyError(f"no Lua script named {name!r}")
    return f"{_read(_LIB)}\n-- ---- {name}.lua ----\n{_read(name)}"


def decode(reply: Any) -> list[str]:
    """A flat script reply (bytes, str or ints) as a list of ``str``."""
    if not isinstance(reply, list):
        raise TypeError(f"unexpected script reply {reply!r}")
    return [item.decode() if isinstance(item, bytes) else str(item) for item in reply]
