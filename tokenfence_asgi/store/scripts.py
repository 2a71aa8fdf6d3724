"""Find the Lua scripts, prepend the shared helpers they use, decode their replies.

The scripts are package data, ``tokenfence_asgi/store/lua/*.lua``, read from the package only.
Each runs with the helpers of ``_lib.lua`` it names (and the ones those name), in the file's
order: every top-level ``local`` of a script is created again on each call, so a script carries
none it does not use. Reserve and commit also get a prologue compiled from the fence's plans
(``store/compiled.py``). Registration uses redis-py's ``Script`` objects, which run EVALSHA and
on NOSCRIPT (after a restart, a failover or SCRIPT FLUSH) load the script and retry once, on
every primary of a cluster.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any

__all__ = ["SCRIPT_NAMES", "decode", "helpers", "script_source"]

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
_DECLARATION = re.compile(r"^local (?:function )?([A-Za-z_][\w, ]*?)\s*(?:=|\()")
_NAME = re.compile(r"\b[A-Za-z_]\w*\b")


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


@functools.cache
def helpers() -> tuple[tuple[frozenset[str], str], ...]:
    """The top-level declarations of ``_lib.lua`` as (names declared, text with its comment),
    in order; the file's opening comment is not part of any."""
    chunks: list[tuple[frozenset[str], str]] = []
    lines = _read(_LIB).splitlines()
    comment: list[str] = []
    current: list[str] | None = None
    names: frozenset[str] = frozenset()
    for line in lines:
        match = _DECLARATION.match(line)
        if match:
            if current is not None:
                chunks.append((names, "\n".join(current).rstrip() + "\n"))
            names = frozenset(n.strip() for n in match.group(1).split(","))
            current = [*comment, line]
            comment = []
        elif line.startswith("--") and (current is None or not current[-1].strip()):
            comment.append(line)
        elif current is not None:
            if comment:
                current += comment
                comment = []
            current.append(line)
        elif not line.strip():
            comment = []  # the file's opening comment ends at its blank line
    if current is not None:
        chunks.append((names, "\n".join(current).rstrip() + "\n"))
    return tuple(chunks)


def _names(code: str) -> set[str]:
    """The identifiers in ``code`` outside its comments."""
    return set(_NAME.findall("\n".join(line.split("--", 1)[0] for line in code.splitlines())))


def _needed(code: str) -> str:
    """The helpers ``code`` uses, directly or through each other, in ``_lib.lua``'s order."""
    chunks = helpers()
    wanted: set[str] = set()
    pending = _names(code)
    while pending:
        name = pending.pop()
        for names, text in chunks:
            if name in names and not names <= wanted:
                wanted |= names
                pending |= _names(text) - wanted
    return "\n".join(text for names, text in chunks if names & wanted)


@functools.lru_cache(maxsize=64)
def script_source(name: str, prologue: str = "") -> str:
    """The full source of script ``name``: the helpers it uses, ``prologue``, the script."""
    if name not in SCRIPT_NAMES:
        raise KeyError(f"no Lua script named {name!r}")
    body = _read(name)
    return f"{_needed(prologue + body)}\n{prologue}\n-- ---- {name}.lua ----\n{body}"


def decode(reply: Any) -> list[str]:
    """A flat script reply (bytes, str or ints) as a list of ``str``."""
    if not isinstance(reply, list):
        raise TypeError(f"unexpected script reply {reply!r}")
    return [item.decode() if isinstance(item, bytes) else str(item) for item in reply]
