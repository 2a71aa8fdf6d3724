"""Tool-call policy: globbing, precedence, composition, TOML loading."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import Backend
from tokenfence_asgi.config import Limit, Plan, load_plans
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import ApprovalRequired, ConfigError, InvalidId, PolicyDenied
from tokenfence_asgi.policy import Decision, Policy, policy_from_mapping
from tokenfence_asgi.web.problem import http_status

segment = st.text(alphabet="abcdxyz_-.", min_size=1, max_size=6)
names = st.lists(segment, min_size=1, max_size=5).map(":".join)
patterns = st.lists(
    st.one_of(segment, st.just("*"), segment.map(lambda s: s + "*")), min_size=1, max_size=4
).map(":".join)


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("tool:database:delete:*", "tool:database:delete:users", True),
        ("tool:database:delete:*", "tool:database:delete", False),
        ("tool:database:*", "tool:database:delete:users", False),
        ("tool:database:**", "tool:database:delete:users", True),
        ("tool:database:**", "tool:database", True),
        ("tool:*:read", "tool:files:read", True),
        ("tool:send_*", "tool:send_email", True),
        ("tool:send_*", "tool:sendmail", False),
        ("**", "anything:at:all", True),
        ("tool:a.b", "tool:aXb", False),  # dots are literal
    ],
)
def test_globbing(pattern: str, name: str, matches: bool) -> None:
    decision = Policy(default="allow").deny(pattern).decide(name)
    assert (decision == Decision.DENY) == matches


def test_precedence_is_fixed_whatever_the_order() -> None:
    p = Policy().allow("tool:**").require_approval("tool:pay:*").deny("tool:pay:crypto")
    q = Policy().deny("tool:pay:crypto").require_approval("tool:pay:*").allow("tool:**")
    for policy in (p, q):
        assert policy.decide("tool:pay:crypto") == Decision.DENY
        assert policy.decide("tool:pay:card") == Decision.REQUIRE_APPROVAL
        assert policy.decide("tool:search") == Decision.ALLOW
    assert p == q


@given(names, st.lists(patterns, max_size=3), patterns)
def test_deny_wins_over_any_matching_allow(name: str, allows: list[str], deny: str) -> None:
    """If a deny pattern matches, the decision is deny, whatever allow rules also match."""
    policy = Policy().allow(*allows, "**").require_approval(*allows).deny(deny)
    denied = Policy(default="allow").deny(deny).decide(name) == Decision.DENY
    assert (policy.decide(name) == Decision.DENY) == denied


def _glob_matches(pattern: str, name: str) -> bool:
    """A plain reference of the glob rules, segment by segment, without regular expressions."""
    from fnmatch import fnmatchcase

    want, have = pattern.split(":"), name.split(":")
    if want[-1] == "**":
        want = want[:-1]
        if len(have) < max(1, len(want)):
            return False
        have = have[: len(want)]
    elif len(want) != len(have):
        return False
    return all(fnmatchcase(h, w.replace("[", "[[]")) for w, h in zip(want, have, strict=True))


@given(
    names,
    st.lists(
        st.tuples(
            st.sampled_from(list(Decision)),
            st.one_of(patterns, patterns.map(lambda p: p + ":**"), st.just("**")),
        ),
        max_size=8,
    ),
    st.sampled_from(["allow", "deny"]),
)
def test_decide_equals_the_reference(
    name: str, rules: list[tuple[Decision, str]], default: str
) -> None:
    """The compiled policy decides like the rules read one by one, by precedence."""
    policy = Policy(default=default)
    for decision, pattern in rules:
        getattr(policy, decision.value)(pattern)
    expected = Decision(default)
    for decision in (Decision.DENY, Decision.REQUIRE_APPROVAL, Decision.ALLOW):
        if any(d == decision and _glob_matches(p, name) for d, p in rules):
            expected = decision
            break
    assert policy.decide(name) == expected
    assert policy.decide(name) == expected  # cached


def test_defaults_and_composition() -> None:
    fence = Policy(default="allow").deny("tool:shell:*")
    plan = Policy(default="deny").allow("tool:search", "tool:shell:ls")
    merged = fence.merge(plan)
    assert merged.default == Decision.DENY  # the stricter default
    assert merged.decide("tool:search") == Decision.ALLOW
    assert merged.decide("tool:shell:ls") == Decision.DENY  # a deny anywhere wins
    assert merged.decide("tool:other") == Decision.DENY
    assert fence.merge(None) is fence
    assert Policy().decide("tool:anything") == Decision.ALLOW


@pytest.mark.parametrize("bad", ["", "tool::x", "tool: x", 5, "a" * 600])
def test_malformed_names_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="action name"):
        Policy().decide(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "tool:**:x", "tool:a b", "tool:{x}", "tool:a**"])
def test_malformed_patterns_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="pattern"):
        Policy().allow(bad)


def test_from_mapping() -> None:
    policy = policy_from_mapping(
        {"default": "deny", "allow": ["tool:search"], "require_approval": ["tool:email:*"]}
    )
    assert policy.decide("tool:email:send") == Decision.REQUIRE_APPROVAL
    assert policy.decide("tool:x") == Decision.DENY
    with pytest.raises(ConfigError, match=r"plans\.free\.policy: unknown keys 'alow'"):
        policy_from_mapping({"alow": []}, where="plans.free.policy")
    with pytest.raises(ConfigError, match=r"plans\.free\.policy: .*list of strings"):
        policy_from_mapping({"deny": "tool:x"}, where="plans.free.policy")
    with pytest.raises(ConfigError, match="default"):
        policy_from_mapping({"default": "maybe"})


def test_plans_carry_policies_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "plans.toml"
    path.write_text(
        '[plans.free]\n[plans.free.policy]\ndefault = "deny"\nallow = ["tool:search"]\n'
        'deny = ["tool:db:delete:*"]\n'
    )
    (plan,) = load_plans(path)
    assert isinstance(plan, Plan)
    assert plan.policy is not None
    assert plan.policy.decide("tool:search") == Decision.ALLOW
    assert plan.policy.decide("tool:db:delete:users") == Decision.DENY
    path.write_text('[plans.free.policy]\nallow = ["tool::x"]\n')
    with pytest.raises(ConfigError, match=r"plans\.free\.policy: .*pattern"):
        load_plans(path)
    with pytest.raises(ConfigError, match=r"Plan\.policy"):
        Plan("x", policy="deny everything")  # type: ignore[arg-type]


# -- enforcement through the fence (real Redis and the embedded store) -------------------------


GUARDED = Plan(
    "guarded",
    [Limit("1d", max_cost="1")],
    policy=Policy(default="deny")
    .allow("tool:search", "tool:email:*")
    .require_approval("tool:email:send"),
)


async def test_check_tool_allows_denies_and_asks(make_fence: Callable[..., TokenFence]) -> None:
    fence = make_fence(
        plans=[GUARDED], default_plan="guarded", policy=Policy().deny("tool:email:bulk")
    )
    await fence.check_tool("tool:search", tenant_id="acme")
    await fence.check_tool("tool:email:draft", tenant_id="acme")
    with pytest.raises(PolicyDenied) as denied:
        await fence.check_tool("tool:db:delete:users", tenant_id="acme")  # plan default deny
    assert (http_status(denied.value), denied.value.to_dict()["error"]) == (403, "ai_policy_denied")
    with pytest.raises(PolicyDenied):
        await fence.check_tool("tool:email:bulk", tenant_id="acme")  # the fence's own deny
    with pytest.raises(ApprovalRequired) as asked:
        await fence.check_tool("tool:email:send", tenant_id="acme")
    approval = asked.value.approval_id
    assert asked.value.to_dict()["approval_id"] == approval
    with pytest.raises(ApprovalRequired) as again:  # still pending: same id
        await fence.check_tool("tool:email:send", tenant_id="acme", approval_id=approval)
    assert again.value.approval_id == approval
    assert await fence.approve(approval) is True
    assert await fence.approve(approval) is False  # already decided
    await fence.check_tool("tool:email:send", tenant_id="acme", approval_id=approval)
    with pytest.raises(ApprovalRequired) as used:  # single use: a new approval is needed
        await fence.check_tool("tool:email:send", tenant_id="acme", approval_id=approval)
    assert used.value.approval_id != approval
    assert await fence.deny(used.value.approval_id) is True
    with pytest.raises(PolicyDenied):
        await fence.check_tool(
            "tool:email:send", tenant_id="acme", approval_id=used.value.approval_id
        )


async def test_approvals_are_bound_to_tenant_and_action(
    make_fence: Callable[..., TokenFence],
) -> None:
    fence = make_fence(plans=[GUARDED], default_plan="guarded")
    with pytest.raises(ApprovalRequired) as asked:
        await fence.check_tool("tool:email:send", tenant_id="acme")
    approval = asked.value.approval_id
    await fence.approve(approval)
    with pytest.raises(InvalidId, match="another tenant"):
        await fence.check_tool("tool:email:send", tenant_id="globex", approval_id=approval)
    with pytest.raises(InvalidId, match="not an approval id"):
        await fence.approve("nonsense")


async def test_approvals_expire(make_fence: Callable[..., TokenFence], backend: Backend) -> None:
    fence = make_fence(plans=[GUARDED], default_plan="guarded", approval_ttl=1)
    with pytest.raises(ApprovalRequired) as asked:
        await fence.check_tool("tool:email:send", tenant_id="acme")
    raw = backend.client()
    keys = [k async for k in raw.scan_iter(match=f"{backend.prefix}:*:ap:*")]
    assert len(keys) == 1
    assert 0 < await raw.ttl(keys[0]) <= 1
    await raw.delete(keys[0])  # what expiry does, without waiting for it
    await raw.aclose()
    assert await fence.approve(asked.value.approval_id) is False
