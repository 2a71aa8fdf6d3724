"""The embedded store: an in-process fakeredis server that compiles each Lua script once.

fakeredis (``fakeredis[lua]``, 2.34 and later) keeps one Lua runtime per server and runs every
EVAL / EVALSHA with ``runtime.execute(source)``, which parses and compiles the whole script
again: about a millisecond for one of ours, most of an embedded call. ``EmbeddedServer`` hands
fakeredis a view of that runtime (``CompilingRuntime``) whose ``execute`` keeps each compiled
chunk, keyed by its source (so by its SHA1), and calls it again. Running a compiled chunk is
what ``execute`` does after compiling it, so the rules stay fakeredis's own, unchanged: the same
Lua source, KEYS and ARGV, the same ``redis.call``, errors and replies, ``SCRIPT LOAD`` /
``EXISTS`` / ``FLUSH`` and NOSCRIPT (the script cache is still fakeredis's, per server). A source
that does not compile is passed to ``execute`` as it is, so its error is fakeredis's too.

Two more costs of fakeredis's per call, with the same outcome:

- Before every ``redis.call`` and after every script, fakeredis checks that the script set no
  global variable by copying the names of all ~40 globals to Python. The view answers with a
  small Lua function first, and hands fakeredis the real globals (its own check, its own error,
  its own clean-up) only when a name it does not expect is there.
- After every script fakeredis runs a full Lua garbage collection; the view runs one after every
  ``FULL_GC_EVERY``-th script (Lua's incremental collector runs meanwhile, as always).

Only servers made from this class are affected; other fakeredis users in the process are not.
With a fakeredis that does not keep its runtime on the server (before 2.34) nothing changes:
every script is compiled per call, as there.
"""

from __future__ import annotations

from typing import Any

import fakeredis

try:
    from fakeredis import FakeAsyncRedisConnection as _FakeConnection
except ImportError:  # before fakeredis 2.35, which renamed it (the old name became a function)
    from fakeredis.aioredis import FakeConnection as _FakeConnection  # type: ignore[assignment]

from tokenfence_asgi.store._connection import FastPackMixin

__all__ = [
    "FULL_GC_EVERY",
    "MAX_COMPILED",
    "CompilingRuntime",
    "EmbeddedConnection",
    "EmbeddedServer",
    "embedded_client",
]

MAX_COMPILED = 1024
"""Compiled chunks kept per server; when full the cache starts again (``EVAL`` of ever new
sources must not grow it without bound)."""

FULL_GC_EVERY = 64
"""Scripts per full Lua garbage collection (fakeredis: 1). It frees the KEYS and ARGV tables
of the scripts before; at 1 it costs ~40 us a script, a tenth of one of ours."""

_FULL_GC = "collectgarbage()"  # what fakeredis runs after each script
_NO_GLOBALS: dict[Any, Any] = {}

# Made once per runtime, before any script runs, so `next` and the globals table are the
# pristine ones whatever a script later does to the names `next` or `_G`.
_GLOBALS_CHECK = """
local next, globals = next, _G
local expected = {}
return expected, function()
  for name in next, globals do
    if expected[name] == nil then return true end
  end
  return false
end
"""


class CompilingRuntime:
    """A fakeredis server's Lua runtime, as fakeredis uses it, compiling each chunk once.

    ``compiles`` counts the chunks compiled (for tests): one per distinct source while the
    cache holds it; ``cached`` is how many the cache holds.
    """

    __slots__ = (
        "_chunks",
        "_expected",
        "_expected_from",
        "_has_unexpected",
        "_lua",
        "_scripts_run",
        "_server",
        "compiles",
        "table_from",
    )

    def __init__(self, lua: Any, server: EmbeddedServer) -> None:
        self._lua = lua
        self._server = server
        self._chunks: dict[bytes | str, Any] = {}
        self.compiles = 0
        self._scripts_run = 0
        self.table_from = lua.table_from  # per redis.call reply: no __getattr__ on the way
        self._expected, self._has_unexpected = lua.execute(_GLOBALS_CHECK)
        self._expected_from: tuple[int, int] | None = None

    def execute(self, code: bytes | str, *args: Any) -> Any:
        """What ``LuaRuntime.execute`` returns, from a chunk compiled once per source."""
        if code == _FULL_GC:
            self._scripts_run += 1
            if self._scripts_run % FULL_GC_EVERY:
                return None
        chunk = self._chunks.get(code)
        if chunk is None:
            try:
                chunk = self._lua.compile(code)
            except Exception:  # a syntax error: fakeredis's own path raises its own error
                return self._lua.execute(code, *args)
            if len(self._chunks) >= MAX_COMPILED:
                self._chunks.clear()
            self._chunks[code] = chunk
            self.compiles += 1
        return chunk(*args)

    @property
    def cached(self) -> int:
        """Compiled chunks held now."""
        return len(self._chunks)

    def globals(self) -> Any:
        """The globals table, or an empty one when it holds only the names fakeredis expects
        (then its check finds nothing, as it would have)."""
        table = self._lua.globals()
        expected: set[Any] | None = getattr(self._server, "_lua_expected_globals", None)
        if expected is None:  # fakeredis is still setting the runtime up
            return table
        if self._expected_from != (id(expected), len(expected)):
            names = self._expected
            for name in list(names.keys()):
                names[name] = None
            for name in expected:
                names[name] = True
            self._expected_from = (id(expected), len(expected))
        return table if self._has_unexpected() else _NO_GLOBALS

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lua, name)


class EmbeddedConnection(FastPackMixin, _FakeConnection):  # type: ignore[misc]  # its bases disagree
    """A fakeredis connection that packs EVALSHA / EVAL with hiredis, as ``FastPackConnection``
    does for Redis: redis-py's own packing in Python costs as much as a small script here."""


class EmbeddedServer(fakeredis.FakeServer):
    """A ``FakeServer`` whose scripts are compiled once (see the module)."""

    @property
    def _lua_runtime(self) -> CompilingRuntime:
        try:
            runtime: CompilingRuntime = self.__dict__["_compiling_runtime"]
        except KeyError:
            raise AttributeError("_lua_runtime") from None  # fakeredis makes it on first use
        return runtime

    @_lua_runtime.setter
    def _lua_runtime(self, lua: Any) -> None:
        self.__dict__["_compiling_runtime"] = CompilingRuntime(lua, self)


def embedded_client(server: EmbeddedServer | None = None) -> fakeredis.FakeAsyncRedis:
    """An async client of ``server`` (a new one when ``None``) without a pool limit:
    in-process "connections" cost nothing, so a burst has none to trip over."""
    return fakeredis.FakeAsyncRedis(
        server=EmbeddedServer() if server is None else server,
        max_connections=2**31,
        connection_class=EmbeddedConnection,
    )
