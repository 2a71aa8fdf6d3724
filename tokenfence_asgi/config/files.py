"""Plans read from TOML or a mapping: ``load_plans``, ``plans_from_mapping``, ``PlanSet``.

Every error is a ``ConfigError`` naming the file, the key path (as TOML spells it) and the bad
value; the file's ``default_plan`` is checked against its plans.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any

from tokenfence_asgi.config.plan import Limit, Plan, _bad, _is_sequence
from tokenfence_asgi.errors import ConfigError, UnknownPlan
from tokenfence_asgi.money import _show
from tokenfence_asgi.policy import policy_from_mapping

__all__ = ["PlanSet", "default_plan_for", "load_plans", "plans_from_mapping"]

_PLAN_KEYS = tuple(f.name for f in fields(Plan) if f.name != "name")  # the name is the table key
_LIMIT_KEYS = tuple(f.name for f in fields(Limit) if f.init)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _path(parent: str, key: object) -> str:
    """``parent.key`` as TOML would spell it (quoted when the key is not bare)."""
    if isinstance(key, str) and _BARE_KEY.fullmatch(key):
        return f"{parent}.{key}"
    return f"{parent}.{_show(key)}"


def _table(value: object, where: str, allowed: tuple[str, ...]) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table, got {_show(value)}")
    unknown = ", ".join(_show(key) for key in value if key not in allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown}; expected one of {', '.join(allowed)}")
    return value


def _read_limit(value: object, where: str) -> Limit:
    table = _table(value, where, _LIMIT_KEYS)
    if "window" not in table:
        raise ConfigError(f"{where}: missing key 'window'")
    try:
        return Limit(**table)  # keys checked above
    except ConfigError as exc:
        # "Limit.max_cost: ..." -> "plans.free.limits[0].max_cost: ..."
        raise ConfigError(where + exc.message.removeprefix("Limit")) from exc.__cause__


def _read_plan(name: Any, value: object, where: str) -> Plan:
    table = _table(value, where, _PLAN_KEYS)
    raw_limits = table.get("limits", [])
    if not _is_sequence(raw_limits):
        raise ConfigError(f"{where}.limits: expected an array of tables, got {_show(raw_limits)}")
    limits = [_read_limit(item, f"{where}.limits[{i}]") for i, item in enumerate(raw_limits)]
    extra: dict[str, Any] = {"limits": limits}
    if "policy" in table:
        extra["policy"] = policy_from_mapping(table["policy"], where=f"{where}.policy")
    try:
        return Plan(name, **{**table, **extra})  # keys checked above; Plan checks name
    except ConfigError as exc:
        raise ConfigError(where + exc.message.removeprefix("Plan")) from exc.__cause__


class PlanSet(tuple[Plan, ...]):
    """Plans read from a file, in the file's order: a tuple of ``Plan`` (and equal to one).

    ``default_plan`` is the file's ``default_plan`` key, None when the file names none;
    ``source`` is the file, for messages. ``TokenFence(plans=...)`` takes the default from it
    (see ``default_plan_for``). Read-only.
    """

    default_plan: str | None
    source: str

    def __new__(
        cls, plans: Iterable[Plan] = (), default_plan: str | None = None, source: str = "<config>"
    ) -> PlanSet:
        self = super().__new__(cls, plans)
        object.__setattr__(self, "default_plan", default_plan)
        object.__setattr__(self, "source", source)
        return self

    def __getnewargs__(self) -> tuple[tuple[Plan, ...], str | None, str]:
        return tuple(self), self.default_plan, self.source

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"PlanSet is read-only: cannot set {name!r}")


def default_plan_for(plans: Sequence[Plan], default_plan: str | None = None) -> str:
    """The plan of tenants that have none assigned: the one rule of the library and the CLI.

    ``default_plan`` when given, else the plan file's ``default_plan`` (``plans`` from
    ``load_plans``), else ``"free"`` when configured. Raises ``UnknownPlan`` for a
    ``default_plan`` that is not among ``plans``, and ``ConfigError`` naming ``default_plan``
    (and the file) when none of the three applies.
    """
    names = [plan.name for plan in plans]
    if default_plan is not None:
        if default_plan not in names:
            raise UnknownPlan(default_plan, names, field="default_plan")
        return default_plan
    declared = getattr(plans, "default_plan", None)
    if declared is not None:
        return str(declared)  # checked against the file's plans when read
    if "free" in names:
        return "free"
    source = getattr(plans, "source", None)
    raise ConfigError(
        ("" if source is None else f"{source}: ")
        + f"default_plan: not set, and no plan is named 'free' (plans: {', '.join(names)}); "
        'add default_plan = "..." at the top of the plan file or pass '
        "TokenFence(default_plan=...)"
    )


def plans_from_mapping(data: Mapping[str, Any], *, source: str = "<config>") -> PlanSet:
    """Build plans from parsed TOML-shaped data: ``{"plans": {"free": {...}, ...}}``, with an
    optional top-level ``"default_plan"`` naming one of them.

    Plans keep the order of the table. Unknown keys at any level, wrong types and invalid values
    raise ``ConfigError`` with a message that starts with ``source`` and names the location, e.g.
    ``plans.toml: plans.free.limits[0].max_cost: negative amount '-1'``.
    """
    try:
        top = _table(data, "top level", ("plans", "default_plan"))
        if "plans" not in top:
            raise ConfigError("missing table 'plans'")
        plans = top["plans"]
        if not isinstance(plans, Mapping) or not plans:
            raise ConfigError(f"plans: expected a table of at least one plan, got {_show(plans)}")
        read = [_read_plan(name, plan, _path("plans", name)) for name, plan in plans.items()]
        default = top.get("default_plan")
        names = [plan.name for plan in read]
        if "default_plan" in top and default not in names:
            expected = f"the name of a plan in the file ({', '.join(names)})"
            raise _bad("default_plan", expected, default)
        return PlanSet(read, default, source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.message}") from exc.__cause__
    except RecursionError:  # showing a bad value that nests deeper than the interpreter's stack
        raise ConfigError(f"{source}: nested too deeply to read") from None


def load_plans(path: str | os.PathLike[str]) -> PlanSet:
    """Read plans from a TOML file (format: see ``plans_from_mapping`` and the README), with
    the file's ``default_plan`` when it names one.

    Raises ``ConfigError`` starting with the path for a missing or unreadable file, invalid TOML
    (with tomllib's line and column; also an integer too long for ``int()`` and values nested
    deeper than the parser's stack) and every invalid plan. No other exception escapes.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            text = file.read().decode()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read plan file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: not UTF-8 at byte {exc.start}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc
    except ValueError as exc:  # int() refusing a decimal integer longer than Python reads
        raise ConfigError(f"{source}: invalid TOML: {_long_integer(text) or exc}") from None
    except RecursionError:  # tomllib parses nested values recursively
        raise ConfigError(
            f"{source}: invalid TOML: arrays or inline tables nested too deeply"
        ) from None
    return plans_from_mapping(data, source=source)


def _long_integer(text: str) -> str | None:
    """Where the first decimal integer too long for ``int()`` is, or None."""
    limit = sys.get_int_max_str_digits()
    for match in re.finditer(r"[0-9][0-9_]*", text):
        if len(match.group().replace("_", "")) > limit:
            line = text.count("\n", 0, match.start()) + 1
            return f"an integer of more than {limit:,} digits at line {line}"
    return None
