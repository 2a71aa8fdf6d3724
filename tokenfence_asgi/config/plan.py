"""Budget rules: ``Limit``, ``Plan`` and the built-in plans.

``Limit`` and ``Plan`` are frozen dataclasses validated when built, so a plan the engine sees is
always consistent; every error is a ``ConfigError`` naming the field and the bad value.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any, Literal, TypeGuard
from urllib.parse import urlsplit

from tokenfence_asgi._text import first_control
from tokenfence_asgi.errors import ConfigError, InvalidAmount
from tokenfence_asgi.money import MAX_LIMIT_NANOS, MoneyInput, _show, from_nanos, to_nanos
from tokenfence_asgi.policy import Policy

__all__ = [
    "BUILTIN_PLANS",
    "DEFAULT_FEATURE_WEIGHTS",
    "ENTERPRISE",
    "FEATURE_MODES",
    "FREE",
    "PRO",
    "STARTER",
    "WINDOWS",
    "WINDOW_SECONDS",
    "Limit",
    "Plan",
]

WINDOWS: tuple[str, ...] = ("1m", "1h", "1d", "7d", "1mo")
"""The budget windows a ``Limit`` may use, shortest first."""

WINDOW_SECONDS: Mapping[str, int] = MappingProxyType(
    {"1m": 60, "1h": 3600, "1d": 86400, "7d": 604800, "1mo": 2678400}
)
"""Nominal length of each window in seconds ("1mo" is 31 days; calendar months are exact)."""

FEATURE_MODES: tuple[str, ...] = ("share", "cap")
"""How feature weights apply: guaranteed shares (work-conserving) or hard caps per feature."""

DEFAULT_FEATURE_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        "chat": 0.40,
        "document_analysis": 0.30,
        "summarization": 0.15,
        "classification": 0.10,
        "search": 0.05,
    }
)
"""Suggested ``Plan(features=...)`` weights; the built-in plans do not set features."""

_KINDS = ("calendar", "sliding")
_PLAN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAX_URL = 2048
_MAX_TOKENS = 10_000_000  # per call; anything above is a typo


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_sequence(value: object) -> TypeGuard[Sequence[object]]:
    """A list or tuple, not text: ``models="gpt-4o"`` must not become a list of letters."""
    return isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)


def _bad(where: str, expected: str, value: object) -> ConfigError:
    return ConfigError(f"{where}: expected {expected}, got {_show(value)}")


@dataclass(frozen=True, slots=True, init=False)
class Limit:
    """One budget window: at most ``max_cost`` dollars and/or ``max_requests`` calls per window.

    ``window`` is one of ``WINDOWS``; ``kind`` is ``"calendar"`` (aligned to UTC midnight, week,
    month start) or ``"sliding"``. ``max_cost`` accepts any ``MoneyInput`` and is stored as an
    exact ``Decimal`` (and in ``max_cost_nanos`` as nano-dollars). ``rollover`` (calendar cost
    limits only) carries unused budget of the previous period over, capped at that fraction of
    the limit. Raises ``ConfigError`` naming the field and the bad value.
    """

    window: str
    max_cost: Decimal | None
    max_requests: int | None
    kind: Literal["calendar", "sliding"]
    rollover: float
    max_cost_nanos: int | None = field(init=False, compare=False, repr=False)

    def __init__(
        self,
        window: str,
        max_cost: MoneyInput | None = None,
        max_requests: int | None = None,
        kind: Literal["calendar", "sliding"] = "calendar",
        rollover: float = 0.0,
    ) -> None:
        if not isinstance(window, str) or window not in WINDOWS:
            raise _bad("Limit.window", f"one of {', '.join(map(repr, WINDOWS))}", window)
        if max_cost is None and max_requests is None:
            raise ConfigError(f"Limit: window {window!r} needs max_cost, max_requests or both")
        cost_nanos = None
        if max_cost is not None:
            try:
                cost_nanos = to_nanos(max_cost, field="max_cost", max_nanos=MAX_LIMIT_NANOS)
            except InvalidAmount as exc:
                raise ConfigError(f"Limit.{exc.message}") from exc
            if cost_nanos == 0:
                raise _bad("Limit.max_cost", "an amount above 0", max_cost)
        if max_requests is not None and not (
            type(max_requests) is int and 1 <= max_requests <= 10**9
        ):
            raise _bad("Limit.max_requests", "an integer from 1 to 1000000000", max_requests)
        if not isinstance(kind, str) or kind not in _KINDS:
            raise _bad("Limit.kind", "'calendar' or 'sliding'", kind)
        if not (_is_number(rollover) and 0 <= rollover <= 1):  # also rejects NaN and infinities
            raise _bad("Limit.rollover", "a number from 0 to 1", rollover)
        if rollover and kind != "calendar":
            raise ConfigError(f"Limit.rollover: only calendar limits roll over, got {kind=}")
        if rollover and cost_nanos is None:
            raise ConfigError("Limit.rollover: only max_cost rolls over, and max_cost is not set")
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "max_cost", None if cost_nanos is None else from_nanos(cost_nanos))
        object.__setattr__(self, "max_requests", max_requests)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "rollover", float(rollover))
        object.__setattr__(self, "max_cost_nanos", cost_nanos)


@dataclass(frozen=True, slots=True, init=False)
class Plan:
    """What a tenant is subscribed to: limits, allowed models, downgrades, feature shares.

    ``name`` is 1-64 letters, digits, ``_ . -``. ``models`` is a list of ``fnmatch`` globs (None:
    every model). ``downgrade`` maps a model to a cheaper one, followed as a chain when a model is
    not allowed or does not fit the budget (cycles are rejected). ``max_input_chars`` and
    ``max_input_tokens`` refuse longer prompts (tokens as the model's tokenizer counts them).
    ``features`` maps feature ids to weights (0 < w <= 1, summing to at most 1),
    applied as guaranteed shares (``feature_mode="share"``) or caps (``"cap"``). ``upgrade_url``
    is shown to refused users: a path on the app's host (``/settings/billing``) or an http(s)
    URL. ``policy`` is the plan's tool-call ``Policy`` (composed with the
    fence's own). ``price_per_month`` is what a tenant pays for the plan, in dollars, for margin
    reports (None: not priced). ``enforce=False`` is shadow mode: every rule is decided and
    recorded, would-be refusals are logged, counted and alerted, but calls go through.
    ``default_output_tokens`` is the output allowance of an LLM call that sets none (it is
    written into the call, so the hold stays a true bound; None: the fence's default).
    ``fit="shrink"`` lets a call whose worst case does not fit run with a smaller output limit
    that does, down to ``min_output_tokens``, instead of being refused (``"refuse"``).
    Sequences are stored as tuples, mappings as read-only copies.
    Raises ``ConfigError`` naming the field and the bad value.
    """

    name: str
    limits: tuple[Limit, ...]
    models: tuple[str, ...] | None
    downgrade: Mapping[str, str] | None = field(hash=False)
    max_input_chars: int | None
    features: Mapping[str, float] | None = field(hash=False)
    feature_mode: Literal["share", "cap"]
    upgrade_url: str | None
    enforce: bool
    policy: Policy | None
    max_input_tokens: int | None
    price_per_month: Decimal | None
    default_output_tokens: int | None
    fit: Literal["refuse", "shrink"]
    min_output_tokens: int

    def __init__(
        self,
        name: str,
        limits: Sequence[Limit] = (),
        models: Sequence[str] | None = None,
        downgrade: Mapping[str, str] | None = None,
        max_input_chars: int | None = None,
        features: Mapping[str, float] | None = None,
        feature_mode: Literal["share", "cap"] = "share",
        upgrade_url: str | None = None,
        enforce: bool = True,
        policy: Policy | None = None,
        max_input_tokens: int | None = None,
        price_per_month: MoneyInput | None = None,
        default_output_tokens: int | None = None,
        fit: Literal["refuse", "shrink"] = "refuse",
        min_output_tokens: int = 256,
    ) -> None:
        if not isinstance(enforce, bool):
            raise _bad("Plan.enforce", "true or false", enforce)
        if policy is not None and not isinstance(policy, Policy):
            raise _bad("Plan.policy", "a Policy or None", policy)
        if not isinstance(name, str) or not _PLAN_NAME.fullmatch(name):
            raise _bad("Plan.name", "1-64 of [A-Za-z0-9_.-], first a letter or digit", name)
        if max_input_chars is not None and not (
            type(max_input_chars) is int and max_input_chars >= 1
        ):
            raise _bad("Plan.max_input_chars", "an integer >= 1 or None", max_input_chars)
        if max_input_tokens is not None and not (
            type(max_input_tokens) is int and max_input_tokens >= 1
        ):
            raise _bad("Plan.max_input_tokens", "an integer >= 1 or None", max_input_tokens)
        price = None
        if price_per_month is not None:
            try:
                nanos = to_nanos(
                    price_per_month, field="price_per_month", max_nanos=MAX_LIMIT_NANOS
                )
            except InvalidAmount as exc:
                raise ConfigError(f"Plan.{exc.message}") from exc
            price = from_nanos(nanos)
        for name_, tokens in (
            ("default_output_tokens", default_output_tokens),
            ("min_output_tokens", min_output_tokens),
        ):
            if tokens is not None and not (type(tokens) is int and 1 <= tokens <= _MAX_TOKENS):
                raise _bad(f"Plan.{name_}", f"an integer in [1, {_MAX_TOKENS}]", tokens)
        if not isinstance(fit, str) or fit not in ("refuse", "shrink"):
            raise _bad("Plan.fit", "'refuse' or 'shrink'", fit)
        if not isinstance(feature_mode, str) or feature_mode not in FEATURE_MODES:
            raise _bad("Plan.feature_mode", "'share' or 'cap'", feature_mode)
        if upgrade_url is not None and not _is_upgrade_url(upgrade_url):
            expected = (
                f"a path ('/...') or an http(s):// URL of <= {_MAX_URL} chars, without spaces,"
                " control characters or backslashes"
            )
            raise _bad("Plan.upgrade_url", expected, upgrade_url)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "limits", _check_limits(limits))
        object.__setattr__(self, "models", _check_models(models))
        object.__setattr__(self, "downgrade", _check_downgrade(downgrade))
        object.__setattr__(self, "max_input_chars", max_input_chars)
        object.__setattr__(self, "features", _check_features(features))
        object.__setattr__(self, "feature_mode", feature_mode)
        object.__setattr__(self, "upgrade_url", upgrade_url)
        object.__setattr__(self, "enforce", enforce)
        object.__setattr__(self, "policy", policy)
        object.__setattr__(self, "max_input_tokens", max_input_tokens)
        object.__setattr__(self, "price_per_month", price)
        object.__setattr__(self, "default_output_tokens", default_output_tokens)
        object.__setattr__(self, "fit", fit)
        object.__setattr__(self, "min_output_tokens", min_output_tokens)

    def __reduce__(self) -> tuple[type[Plan], tuple[Any, ...]]:
        # Read-only mapping proxies cannot be pickled; rebuild from plain dicts instead.
        downgrade = None if self.downgrade is None else dict(self.downgrade)
        features = None if self.features is None else dict(self.features)
        args = (self.name, self.limits, self.models, downgrade, self.max_input_chars, features)
        rest: tuple[Any, ...] = (self.feature_mode, self.upgrade_url, self.enforce, self.policy)
        rest += (self.max_input_tokens, self.price_per_month, self.default_output_tokens)
        return (Plan, (*args, *rest, self.fit, self.min_output_tokens))

    def model_allowed(self, model: str) -> bool:
        """Whether the plan allows ``model`` (case-sensitive glob match; ``models=None``: all)."""
        return self.models is None or any(fnmatchcase(model, glob) for glob in self.models)

    def downgrade_chain(self, model: str) -> tuple[str, ...]:
        """``model`` followed by its successive downgrades: ``("gpt-4o", "gpt-4o-mini")``."""
        chain = [model]
        if self.downgrade is not None:
            while chain[-1] in self.downgrade:  # terminates: cycles are rejected when built
                chain.append(self.downgrade[chain[-1]])
        return tuple(chain)

    def allows(self, model: str) -> bool:
        """``model_allowed`` for ``model`` or, for ``provider/name``, for ``name`` alone."""
        bare, prefix = _split_provider(model)
        return self.model_allowed(model) or (prefix is not None and self.model_allowed(bare))

    def chain_for(self, model: str) -> tuple[str, ...]:
        """``downgrade_chain`` of ``model``; a ``provider/`` prefix the downgrade map does not
        name is kept on every step (``openai/gpt-4o`` -> ``openai/gpt-4o-mini``)."""
        if self.downgrade is None or model in self.downgrade:
            return self.downgrade_chain(model)
        bare, prefix = _split_provider(model)
        if prefix is None or bare not in self.downgrade:
            return (model,)
        return tuple(prefix + step for step in self.downgrade_chain(bare))


def _is_upgrade_url(url: object) -> bool:
    """A path on the app's own host (``/settings/billing``) or an absolute http(s) URL.

    Refused: relative and scheme-relative (``//host``) references, other schemes
    (``javascript:``, ``data:``), and spaces, control or format characters and backslashes,
    which browsers and header parsers read in ways that can change the target.
    """
    if not (isinstance(url, str) and 1 <= len(url) <= _MAX_URL) or "\\" in url:
        return False
    if any(unicodedata.category(char)[0] in "CZ" for char in url):
        return False
    if url.startswith("/"):
        return not url.startswith("//")
    scheme, separator, _ = url.partition("://")
    if not separator or scheme.lower() not in ("http", "https"):
        return False
    try:
        return bool(urlsplit(url).hostname)
    except ValueError:  # an unbalanced IPv6 bracket
        return False


def _split_provider(model: str) -> tuple[str, str | None]:
    """``model`` and, for ``provider/name``, the ``provider/`` prefix it carries."""
    prefix, _, bare = model.partition("/")
    return (bare, f"{prefix}/") if bare else (model, None)


def _check_limits(limits: object) -> tuple[Limit, ...]:
    if not _is_sequence(limits):
        raise _bad("Plan.limits", "a sequence of Limit", limits)
    checked: dict[tuple[str, str], Limit] = {}
    for index, limit in enumerate(limits):
        if not isinstance(limit, Limit):
            raise _bad(f"Plan.limits[{index}]", "a Limit", limit)
        if (limit.window, limit.kind) in checked:
            raise ConfigError(f"Plan.limits: two {limit.kind} limits for window {limit.window!r}")
        checked[limit.window, limit.kind] = limit
    return tuple(checked.values())


def _check_models(models: object) -> tuple[str, ...] | None:
    if models is None:
        return None
    if not _is_sequence(models):
        raise _bad("Plan.models", "a list of model globs or None", models)
    for index, glob in enumerate(models):
        if not isinstance(glob, str) or not glob:
            raise _bad(f"Plan.models[{index}]", "a non-empty glob", glob)
    return tuple(str(glob) for glob in models)


def _check_downgrade(downgrade: object) -> Mapping[str, str] | None:
    if downgrade is None:
        return None
    if not isinstance(downgrade, Mapping):
        raise _bad("Plan.downgrade", "a mapping of model to cheaper model", downgrade)
    steps: dict[str, str] = {}
    for model, cheaper in downgrade.items():
        if not (isinstance(model, str) and model and isinstance(cheaper, str) and cheaper):
            raise _bad("Plan.downgrade", "non-empty model names", (model, cheaper))
        if model == cheaper:
            raise ConfigError(f"Plan.downgrade: {model!r} downgrades to itself")
        steps[model] = cheaper
    ends: set[str] = set()  # models whose chain is known to end: each model is walked once
    for model in steps:
        path: dict[str, None] = {}  # an ordered set
        while model in steps and model not in ends:
            if model in path:
                cycle = [*list(path)[list(path).index(model) :], model]
                raise ConfigError(f"Plan.downgrade: cycle {' -> '.join(map(repr, cycle))}")
            path[model] = None
            model = steps[model]
        ends.update(path)
    return MappingProxyType(steps)


def _check_features(features: object) -> Mapping[str, float] | None:
    if features is None:
        return None
    if not isinstance(features, Mapping):
        raise _bad("Plan.features", "a mapping of feature id to weight", features)
    weights: dict[str, float] = {}
    for feature, weight in features.items():
        if not (
            isinstance(feature, str) and 1 <= len(feature) <= 200 and first_control(feature) is None
        ):
            raise _bad("Plan.features", "feature ids of 1-200 chars, no control chars", feature)
        if not (_is_number(weight) and 0 < weight <= 1):  # also rejects NaN and infinities
            raise _bad(f"Plan.features[{feature!r}]", "a weight with 0 < weight <= 1", weight)
        weights[feature] = float(weight)
    total = math.fsum(weights.values())
    if total > 1 + 1e-9:
        raise ConfigError(f"Plan.features: weights add up to {total:g}, more than 1")
    return MappingProxyType(weights)


FREE = Plan(
    "free",
    limits=(Limit("1d", max_cost="0.50", max_requests=50), Limit("1mo", max_cost="15")),
    models=("gpt-4o-mini",),
    downgrade={"gpt-4o": "gpt-4o-mini"},
    max_input_chars=2000,
)
"""Built-in plan: $0.50 and 50 requests a day, $15 a month, gpt-4o-mini only."""

STARTER = Plan(
    "starter",
    limits=(Limit("1d", max_cost="5", max_requests=500), Limit("1mo", max_cost="150")),
    models=("gpt-4o", "gpt-4o-mini"),
    downgrade={"gpt-4o": "gpt-4o-mini"},
    max_input_chars=5000,
)
"""Built-in plan: $5 and 500 requests a day, $150 a month, gpt-4o and gpt-4o-mini."""

PRO = Plan(
    "pro",
    limits=(Limit("1d", max_cost="25", max_requests=2000), Limit("1mo", max_cost="750")),
    models=("gpt-4o*", "claude-*sonnet*"),
    max_input_chars=15000,
)
"""Built-in plan: $25 and 2,000 requests a day, $750 a month, gpt-4o* and claude-*sonnet*."""

ENTERPRISE = Plan(
    "enterprise",
    limits=(Limit("1d", max_cost="100", max_requests=10000), Limit("1mo", max_cost="3000")),
    max_input_chars=50000,
)
"""Built-in plan: $100 and 10,000 requests a day, $3,000 a month, every model."""

BUILTIN_PLANS: tuple[Plan, ...] = (FREE, STARTER, PRO, ENTERPRISE)
"""The default plans, cheapest first."""
