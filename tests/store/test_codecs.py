"""Each script's codec names the same KEYS and ARGV slots, in the same order, as the header of
its ``.lua`` file, and fills them with the values its caller meant."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from tokenfence_asgi.store import codecs
from tokenfence_asgi.store.keys import TenantKeys
from tokenfence_asgi.store.scripts import SCRIPT_NAMES

SLOT = re.compile(r"^-- (KEYS|ARGV)\[(\d+)\] ([a-z_]+(?:\?|\.\.\.)?):")
USED = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")
KEYS = TenantKeys("tag:", "base:", "state", "holds", "pool_state")


def header(name: str) -> tuple[list[str], list[str], str]:
    """The KEYS and ARGV slot names a script's header declares, and its code."""
    text = resources.files("tokenfence_asgi.store").joinpath("lua", f"{name}.lua").read_text()
    slots: dict[str, list[str]] = {"KEYS": [], "ARGV": []}
    for line in text.splitlines():
        m = SLOT.match(line)
        if m:
            kind, index, slot = m.group(1), int(m.group(2)), m.group(3)
            assert index == len(slots[kind]) + 1, f"{name}.lua: {kind}[{index}] out of order"
            slots[kind].append(slot)
    code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    return slots["KEYS"], slots["ARGV"], code


def test_every_script_has_a_codec() -> None:
    assert set(codecs.CODECS) == set(SCRIPT_NAMES)


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_codec_slots_match_the_script_header(name: str) -> None:
    keys, argv, code = header(name)
    codec = codecs.CODECS[name]
    assert (list(codec.keys), list(codec.argv)) == (keys, argv)
    # The code reads no slot by number past the declared ones (a tail has any number).
    for kind, index in USED.findall(code):
        declared = keys if kind == "KEYS" else argv
        if not declared[-1].endswith("..."):
            assert int(index) <= len(declared), f"{name}.lua reads undeclared {kind}[{index}]"


def test_a_slot_missing_or_unknown_is_refused() -> None:
    codec = codecs.Codec("x", ("state",), ("a", "b", "rest..."))
    assert codec.args(["r1", "r2"], a="1", b="2") == ["1", "2", "r1", "r2"]
    with pytest.raises(TypeError, match="missing"):
        codec.args(a="1")
    with pytest.raises(TypeError, match="not in the script"):
        codec.args(a="1", b="2", c="3")


def _slots(name: str, keys: list[str], args: list[str]) -> tuple[dict[str, str], list[str]]:
    codec = codecs.CODECS[name]
    names = [k.rstrip("?") for k in codec.keys][: len(keys)]
    fixed = [a for a in codec.argv if not a.endswith("...")]
    assert len(args) >= len(fixed)
    by_key = dict(zip(names, keys, strict=True))
    return {**by_key, **dict(zip(fixed, args, strict=False))}, args[len(fixed) :]


def test_reserve_call_fills_each_slot() -> None:
    keys, args = codecs.reserve_call(
        KEYS,
        now="NOW",
        plan="PLAN",
        tenant="T",
        reservation="R",
        feature="F",
        location="POOL",
        pool_plan="POOLPLAN",
        enforce=False,
        amounts=["5", "3"],
    )
    slots, tail = _slots("reserve", keys, args)
    assert slots == {
        "state": "state",
        "record": "base:r:R",
        "holds": "holds",
        "pool_state": "pool_state",
        "now_ms": "NOW",
        "plan": "PLAN",
        "tenant": "T",
        "reservation": "R",
        "feature": "F",
        "pool": "POOL",
        "pool_plan": "POOLPLAN",
        "enforce": "0",
    }
    assert tail == ["2", "5", "3"]


def test_commit_call_fills_each_slot() -> None:
    keys, args = codecs.commit_call(
        KEYS,
        now="NOW",
        tenant="T",
        reservation="R",
        cost_nanos=7,
        feature="F",
        input_tokens=11,
        output_tokens=13,
        location="POOL",
        follow_stubs="FOLLOW",
        plan="PLAN",
        pool_plan="POOLPLAN",
        model_requested="M",
        model_used="U",
        request_id="Q",
    )
    slots, tail = _slots("commit", keys, args)
    assert slots == {
        "state": "state",
        "record": "base:r:R",
        "holds": "holds",
        "pool_state": "pool_state",
        "now_ms": "NOW",
        "tenant": "T",
        "reservation": "R",
        "cost": "7",
        "feature": "F",
        "input_tokens": "11",
        "output_tokens": "13",
        "pool": "POOL",
        "follow_stubs": "FOLLOW",
        "plan": "PLAN",
        "pool_plan": "POOLPLAN",
        "model": "M",
        "model_used": "U",
        "request_id": "Q",
    }
    assert tail == []


def test_release_and_status_calls_fill_each_slot() -> None:
    keys, args = codecs.release_call(
        KEYS,
        now="NOW",
        tenant="T",
        reservation="R",
        record_ttl="TTL",
        reclaim="RECLAIM",
        location="POOL",
        follow_stubs="FOLLOW",
        default_plan="DEFAULT",
        usage_days="DAYS",
    )
    slots, tail = _slots("release", keys, args)
    assert slots == {
        "state": "state",
        "record": "base:r:R",
        "holds": "holds",
        "pool_state": "pool_state",
        "now_ms": "NOW",
        "tenant": "T",
        "reservation": "R",
        "record_ttl_s": "TTL",
        "reclaim": "RECLAIM",
        "pool": "POOL",
        "follow_stubs": "FOLLOW",
        "default_plan": "DEFAULT",
        "usage_days": "DAYS",
    }
    assert tail == []
    keys, args = codecs.status_call(
        KEYS,
        now="NOW",
        default_plan="DEFAULT",
        reclaim="RECLAIM",
        record_ttl="TTL",
        location="POOL",
        plan="PLAN",
        pool_plan="POOLPLAN",
        specs=["S1"],
    )
    slots, tail = _slots("status", keys, args)
    assert slots == {
        "state": "state",
        "holds": "holds",
        "pool_state": "pool_state",
        "now_ms": "NOW",
        "default_plan": "DEFAULT",
        "reclaim": "RECLAIM",
        "record_ttl_s": "TTL",
        "pool": "POOL",
        "plan": "PLAN",
        "pool_plan": "POOLPLAN",
    }
    assert tail == ["S1"]


def test_typed_replies() -> None:
    ok = codecs.reserve_reply(["ok", "1", "tenant|1d|requests|50|5|10", "2", "300", "99", "new"])
    assert (ok.kind, ok.alerts, ok.index, ok.amount_nanos, ok.expires_ms, ok.existing) == (
        "ok",
        ["tenant|1d|requests|50|5|10"],
        1,
        300,
        99,
        False,
    )
    assert ok.refusal is None
    shadow = codecs.reserve_reply(["ok", "0", "1", "5", "9", "existing", "requests", "tenant"])
    assert shadow.existing
    assert shadow.refusal == ["requests", "tenant"]
    refused = codecs.reserve_reply(["budget", "0", "tenant", "1d", "1", "2", "3"])
    assert refused.refusal == ["budget", "tenant", "1d", "1", "2", "3"]
    assert codecs.reserve_reply(["killed", "0", "feature"]).scope == "feature"
    charged = codecs.commit_reply(["committed", "0", "70", "late", "90"])
    assert (charged.duplicate, charged.charged_nanos, charged.late, charged.released_nanos) == (
        False,
        70,
        True,
        90,
    )
    again = codecs.commit_reply(["duplicate", "1", "a|b|c|50|1|2", "c", "70"])
    assert (again.duplicate, again.charged_nanos, again.alerts) == (True, 70, ["a|b|c|50|1|2"])
    assert codecs.release_reply(["released", "0", "12"]).released
    assert codecs.release_reply(["noop", "0", "c"]).state == "c"
    moved = codecs.correction(["moved", "0", "p.x", "record"])
    assert moved is not None
    assert (moved.kind, moved.value, moved.for_record) == (
        "moved",
        "p.x",
        True,
    )
    assert codecs.correction(["ok", "0"]) is None
