"""Untrusted ids never escape their hash tag and never share a key."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenfence_asgi.errors import ConfigError, InvalidId
from tokenfence_asgi.store.keys import KeySpace, decode_id, encode_id, validate_id

ids = st.text(min_size=1, max_size=200).filter(
    lambda s: all(not __import__("unicodedata").category(c).startswith("C") for c in s)
)


@given(ids, ids)
def test_encoding_is_injective(a: str, b: str) -> None:
    """Two different ids never encode to the same key part."""
    assert (encode_id(a) == encode_id(b)) == (a == b)


@given(ids)
def test_encoded_ids_stay_inside_their_hash_tag(tenant: str) -> None:
    """The key's hash tag is exactly the tenant's tag, whatever the id contains."""
    key = KeySpace("tf").tenant(encode_id(validate_id(tenant))).state
    tag = key[key.index("{") + 1 : key.index("}")]
    assert tag == f"t.{encode_id(tenant)}"
    assert not set(encode_id(tenant)) & set("{}: \n")
    assert decode_id(encode_id(tenant)) == tenant
    assert len(key) <= 12 * 200 + 16


@given(st.text(max_size=300))
def test_validation_accepts_or_raises_invalid_id(value: str) -> None:
    """Any text is either a valid id or refused with InvalidId, never anything else."""
    with contextlib.suppress(InvalidId):
        assert validate_id(value) == value


def test_examples() -> None:
    assert encode_id("a:b") != encode_id("a") + ":" + encode_id("b")
    assert encode_id("x}y") == "x%7Dy"
    assert encode_id("%41") != encode_id("A")
    with pytest.raises(InvalidId, match="feature"):
        validate_id("", what="feature")
    with pytest.raises(ConfigError):
        KeySpace("bad{prefix}")
