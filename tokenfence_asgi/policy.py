"""Tool-call policy: allow, deny or require approval for actions named like ``tool:db:delete``.

Action names are colon-separated segments. A pattern matches a name segment by segment: ``*``
matches within one segment (``tool:db:*`` matches ``tool:db:delete``, not ``tool:db:x:y``) and a
trailing ``**`` matches any number of further segments, zero included (``tool:**`` matches every
tool). Precedence is fixed: **deny > require_approval > allow**, whatever the order rules were
added in; a name no rule matches gets the policy's ``default``. Patterns are compiled once when
added into one alternation per decision, and decisions are cached per name, so ``decide`` builds
no regex per call and tries at most three.

Policies compose predictably: ``fence_policy.merge(plan_policy)`` keeps every rule of both (so a
deny anywhere wins) and the stricter default (``deny`` if either is ``deny``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tokenfence_asgi.errors import ConfigError

__all__ = ["Decision", "Policy", "policy_from_mapping"]

_SEGMENT = re.compile(r"[A-Za-z0-9_.*\-]+")
_NAME_SEGMENT = re.compile(r"[^:\s]+")
_MAX_NAME = 512
_CACHE_SIZE = 4096


class Decision(StrEnum):
    """What a policy says about an action."""

    ALLOW = "allow"
    REQUIRE_APPROVAL = "require_approval"
    DENY = "deny"


_RANK = {Decision.ALLOW: 0, Decision.REQUIRE_APPROVAL: 1, Decision.DENY: 2}


def _compile(pattern: str) -> re.Pattern[str]:
    if not isinstance(pattern, str) or not pattern or len(pattern) > _MAX_NAME:
        raise ConfigError(f"policy pattern must be a non-empty string, got {pattern!r}")
    segments = pattern.split(":")
    parts: list[str] = []
    for n, segment in enumerate(segments):
        if segment == "**":
            if n != len(segments) - 1:
                raise ConfigError(f"policy pattern {pattern!r}: '**' must be the last segment")
            # zero or more further segments
            parts.append("(?::[^:]+)*" if parts else "[^:]+(?::[^:]+)*")
            return re.compile("".join(parts))
        if not _SEGMENT.fullmatch(segment) or "**" in segment:
            raise ConfigError(
                f"policy pattern {pattern!r}: segment {segment!r} must be letters, digits,"
                " '_', '.', '-' and '*' wildcards"
            )
        body = "[^:]*".join(re.escape(piece) for piece in segment.split("*"))
        parts.append(body if n == 0 else ":" + body)
    return re.compile("".join(parts))


@dataclass(frozen=True, slots=True)
class _Rule:
    decision: Decision
    pattern: str
    regex: re.Pattern[str]


class Policy:
    """An ordered-by-precedence set of allow / deny / require_approval rules.

    ``default`` (``"allow"`` or ``"deny"``) applies to names no rule matches. The builder
    methods return the policy, so rules chain: ``Policy().deny("tool:db:delete:*").allow("**")``.
    """

    __slots__ = ("_cache", "_matchers", "_rules", "default")

    def __init__(self, *, default: str = "allow") -> None:
        if default not in ("allow", "deny"):
            raise ConfigError(f"policy default must be 'allow' or 'deny', got {default!r}")
        self.default = Decision(default)
        self._rules: tuple[_Rule, ...] = ()
        self._matchers: tuple[tuple[re.Pattern[str], Decision], ...] = ()
        self._cache: dict[str, Decision] = {}

    def _add(self, decision: Decision, patterns: Iterable[str]) -> Policy:
        if isinstance(patterns, str):
            patterns = (patterns,)
        rules = [_Rule(decision, p, _compile(p)) for p in patterns]
        self._set_rules((*self._rules, *rules))
        return self

    def _set_rules(self, rules: Iterable[_Rule]) -> None:
        self._rules = tuple(sorted(rules, key=lambda r: -_RANK[r.decision]))
        matchers = []
        for decision in sorted(Decision, key=lambda d: -_RANK[d]):
            bodies = [r.regex.pattern for r in self._rules if r.decision == decision]
            if bodies:
                matchers.append((re.compile("|".join(f"(?:{b})" for b in bodies)), decision))
        self._matchers = tuple(matchers)
        self._cache = {}

    def allow(self, *patterns: str) -> Policy:
        """Allow actions matching any of ``patterns`` (unless denied or needing approval)."""
        return self._add(Decision.ALLOW, patterns)

    def deny(self, *patterns: str) -> Policy:
        """Deny actions matching any of ``patterns``; a deny always wins."""
        return self._add(Decision.DENY, patterns)

    def require_approval(self, *patterns: str) -> Policy:
        """Hold actions matching ``patterns`` until an operator approves them."""
        return self._add(Decision.REQUIRE_APPROVAL, patterns)

    def decide(self, name: str) -> Decision:
        """The decision for action ``name``; raises ``ValueError`` for a malformed name."""
        try:
            return self._cache[name]  # only well-formed names are ever cached
        except (KeyError, TypeError):
            pass
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= _MAX_NAME
            or not all(_NAME_SEGMENT.fullmatch(s) for s in name.split(":"))
        ):
            raise ValueError(f"an action name is colon-separated non-blank segments, got {name!r}")
        decision = self.default
        for matcher, candidate in self._matchers:  # highest precedence first
            if matcher.fullmatch(name):
                decision = candidate
                break
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()  # bounded; names repeat, so it refills with the live ones
        self._cache[name] = decision
        return decision

    def merge(self, other: Policy | None) -> Policy:
        """A policy with the rules of both and the stricter default."""
        if other is None:
            return self
        merged = Policy(
            default="deny" if Decision.DENY in (self.default, other.default) else "allow"
        )
        merged._set_rules((*self._rules, *other._rules))
        return merged

    def rules(self) -> list[tuple[str, str]]:
        """The rules as ``(decision, pattern)`` pairs, highest precedence first."""
        return [(r.decision.value, r.pattern) for r in self._rules]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Policy):
            return NotImplemented
        return self.default == other.default and sorted(self.rules()) == sorted(other.rules())

    def __hash__(self) -> int:
        return hash((self.default, tuple(sorted(self.rules()))))

    def __repr__(self) -> str:
        return f"Policy(default={self.default.value!r}, rules={self.rules()!r})"


_KEYS = ("default", "allow", "deny", "require_approval")


def policy_from_mapping(data: Mapping[str, Any], *, where: str = "policy") -> Policy:
    """A policy from a mapping (a TOML table): ``default``, and lists ``allow``, ``deny``,
    ``require_approval``. Raises ``ConfigError`` naming ``where`` and the field."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(map(repr, unknown))}")
    default = data.get("default", "allow")
    try:
        policy = Policy(default=default)
        for key in ("allow", "deny", "require_approval"):
            patterns = data.get(key, [])
            if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
                raise ConfigError(f"expected a list of strings, got {patterns!r}")
            getattr(policy, key)(*patterns)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None
    return policy
