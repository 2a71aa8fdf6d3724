"""EVALSHA packed by hiredis is byte for byte what redis-py packs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from tokenfence_asgi._connection import FastPackConnection

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
    from tokenfence_asgi.store import Store

    tcp = Store.connect(redis_url="redis://127.0.0.1:6379/0")
    assert tcp.client.connection_pool.connection_class is FastPackConnection
    unix = Store.connect(redis_url="unix:///tmp/tokenfence-test.sock")
    assert unix.client.connection_pool.connection_class is not FastPackConnection
