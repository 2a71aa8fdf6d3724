"""Redis connections that pack script calls in C.

redis-py's asyncio ``Connection.pack_command`` is pure Python: for a script call of ~40
arguments it costs more than the script itself runs in Redis. hiredis (a dependency through
``redis[hiredis]``) packs the same bytes in C, an order of magnitude faster. Only EVALSHA and
EVAL take this path (all their arguments are ``str`` or ``bytes`` here); every other command,
and anything hiredis cannot pack, goes through redis-py unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import Connection

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis is a dependency; plain redis-py still works
    _pack = None

__all__ = ["FastPackConnection", "FastPackMixin"]

_FAST = frozenset({"EVALSHA", "EVAL", b"EVALSHA", b"EVAL"})


class FastPackMixin:
    """Packs EVALSHA / EVAL with hiredis; put it before a redis-py ``Connection`` class."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if _pack is not None and args and args[0] in _FAST:
            try:
                return [_pack(args)]
            except TypeError:
                pass  # e.g. an argument type only redis-py's encoder knows how to refuse
        packed: list[bytes] = super().pack_command(*args)  # type: ignore[misc]
        return packed


class FastPackConnection(FastPackMixin, Connection):
    """``redis.asyncio.Connection`` packing EVALSHA / EVAL with hiredis."""
