"""EVALSHA packed by hiredis is byte for byte what redis-py packs; the embedded store compiles
each script once and answers every script as fakeredis does."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError, NoScriptError

from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.store import _embedded
from tokenfence_asgi.store._connection import FastPackConnection
from tokenfence_asgi.store._embedded import (
    CompilingRuntime,
    EmbeddedConnection,
    EmbeddedServer,
    embedded_client,
)
from tokenfence_asgi.store.client import Store

arg = st.one_of(
    st.text(max_size=50), st.binary(max_size=50), st.integers(-(2**62), 2**62), st.floats()
)


@given(st.sampled_from(["EVALSHA", "EVAL", "PING", "HGET"]), st.lists(arg, max_size=60))
def test_same_bytes_as_redis_py(command: str, args: list[object]) -> None:
    fast = b"".join(FastPackConnection().pack_command(command, *args))
    plain = b"".join(Connection().pack_command(command, *args))
    assert fast == plain


@pytest.mark.parametrize("bad", [None, True, 1.5j])
def test_bad_arguments_are_refused_like_redis_py(bad: object) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("EVALSHA", "sha", bad)
    with pytest.raises(DataError):
        FastPackConnection().pack_command("EVALSHA", "sha", bad)


def test_a_store_from_a_tcp_url_packs_with_hiredis() -> None:
    from tokenfence_asgi.store.client import Store

    tcp = Store.connect(redis_url="redis://127.0.0.1:6379/0")
    assert tcp.client.connection_pool.connection_class is FastPackConnection
    unix = Store.connect(redis_url="unix:///tmp/tokenfence-test.sock")
    assert unix.client.connection_pool.connection_class is not FastPackConnection


# -- the embedded store ---------------------------------------------------------------------------

SCRIPTS = [
    "return 1",
    "return 3.9",
    "return -3.9",
    "return {1, nil, 3}",
    "return {1, {2, 'x'}, false}",
    "return false",
    "return true",
    "return nil",
    "return redis.status_reply('FINE')",
    "return redis.error_reply('MY ERR')",
    "return {KEYS[1], ARGV[1], #KEYS, #ARGV}",
    "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])",
    "return redis.call('INCRBY', KEYS[2], 100000000)",
    "return redis.call('HGET', KEYS[1], 'f')",  # WRONGTYPE: KEYS[1] is a string
    "return redis.pcall('HGET', KEYS[1], 'f')",
    "return redis.call('NOSUCHCOMMAND')",
    "return redis.call('EVAL', 'return 1', 0)",
    "return #redis.call('TIME')",
    "return cjson.encode({a = 1})",
    "return string.format('%d', 2^53)",
    "local n = 0; for i = 1, 3 do n = n + i end; return n",
    "error('boom')",
    "return +",  # does not compile
    "leaked = 1; return 1",  # a global written, noticed after the script
    "leaked = 1; return redis.call('GET', KEYS[1])",  # ... and at the next redis.call
    "_G.x = 1; return 2",
    "rawset(_G, 7, 1); return 3",
    "next = nil; return 4",
    "return 5",
]


def _outcome(client: Any, script: str, keys: list[str], args: list[str]) -> Any:
    try:
        return ("reply", client.eval(script, len(keys), *keys, *args))
    except Exception as exc:
        return ("error", type(exc).__name__, str(exc))


def test_embedded_scripts_answer_as_fakeredis_does() -> None:
    # Each script three times (compiled, then from the cache), on a store each, in the same
    # order: replies, errors and their texts, and the state left behind are fakeredis's own.
    plain = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    embedded = fakeredis.FakeRedis(server=EmbeddedServer())
    for script in SCRIPTS:
        for i in range(3):
            keys, args = ["k", "n"], [f"v{i}", "x"]
            assert _outcome(embedded, script, keys, args) == _outcome(plain, script, keys, args)
    assert embedded.get("k") == plain.get("k") == b"v2"
    assert embedded.get("n") == plain.get("n") == b"300000000"


@given(st.lists(st.binary(max_size=20), max_size=5), st.lists(st.binary(max_size=20), max_size=5))
def test_embedded_keys_and_argv_are_each_calls_own(keys: list[bytes], args: list[bytes]) -> None:
    script = "return {#KEYS, #ARGV, KEYS[1] or 'none', ARGV[#ARGV] or 'none'}"
    plain = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    embedded = fakeredis.FakeRedis(server=_SHARED)  # one runtime across examples, as in use
    assert embedded.eval(script, len(keys), *keys, *args) == plain.eval(
        script, len(keys), *keys, *args
    )


_SHARED = EmbeddedServer()


async def test_the_embedded_store_compiles_each_script_once() -> None:
    server = EmbeddedServer()
    plan = Plan("p", [Limit("1d", "5")])
    fence = TokenFence(redis=embedded_client(server), plans=[plan], default_plan="p")
    try:
        for _ in range(5):
            await fence.commit(await fence.reserve("acme", "0.01"), "0.01")
    finally:
        await fence.aclose()
    runtime = server._lua_runtime
    assert isinstance(runtime, CompilingRuntime)
    assert (runtime.compiles, runtime.cached) == (2, 2)  # reserve and commit


def test_the_default_store_is_the_compiling_one() -> None:
    store = Store.connect()
    pool = store.client.connection_pool
    assert isinstance(pool.connection_kwargs["server"], EmbeddedServer)
    assert pool.connection_class is EmbeddedConnection


async def test_noscript_after_script_flush_and_the_store_reloads() -> None:
    server = EmbeddedServer()
    client = embedded_client(server)
    sha = await client.script_load("return ARGV[1]")
    assert await client.evalsha(sha, 0, "a") == b"a"
    await client.script_flush()
    assert await client.script_exists(sha) == [False]
    with pytest.raises(NoScriptError):
        await client.evalsha(sha, 0, "a")
    fence = TokenFence(redis=client, plans=[Plan("p", [Limit("1d", "5")])], default_plan="p")
    try:
        await fence.reserve("acme", "0.01")
        await client.script_flush()
        r = await fence.reserve("acme", "0.01")  # redis-py loads it again on NOSCRIPT
        await fence.commit(r, "0.01")
        assert (await fence.status("acme")).windows[0].used == r.amount
    finally:
        await fence.aclose()


def test_the_compiled_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_embedded, "MAX_COMPILED", 8)
    server = EmbeddedServer()
    client = fakeredis.FakeRedis(server=server)
    for i in range(20):
        assert client.eval(f"return {i}", 0) == i
    assert (server._lua_runtime.compiles, server._lua_runtime.cached) == (20, 20 - 16)


def test_other_fakeredis_servers_are_untouched() -> None:
    plain = fakeredis.FakeServer()
    assert fakeredis.FakeRedis(server=plain).eval("return 1", 0) == 1
    assert not isinstance(plain._lua_runtime, CompilingRuntime)
