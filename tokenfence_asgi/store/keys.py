"""Id validation and encoding, and the hash-tagged key names of one tenant.

Tenant, feature and reservation ids come from untrusted input (headers, metadata). They are
validated (1-200 characters, no control or format characters) and percent-encoded with every
character outside ``[A-Za-z0-9_.~-]`` escaped, ``%`` included. The encoding is injective, so two
ids never share a key (``"a:b"`` vs ``"a"`` + ``"b"``), and it never emits ``{``, ``}`` or ``:``,
so no id escapes its hash tag or forges another key's suffix. Encoded ids are bounded (at most
12 bytes per character), so keys are too.

All keys of one tenant share one hash tag, so every script touches one Redis Cluster slot: its
own ``{t.<tenant>}``, or ``{p.<pool>}`` for every member of a pool (so pool limits are checked
in the same script). The global kill switches live under ``{global}``, read separately.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from tokenfence_asgi._text import first_control
from tokenfence_asgi.errors import ConfigError, InvalidId

__all__ = [
    "MAX_ID_LENGTH",
    "OWN",
    "KeySpace",
    "TenantKeys",
    "decode_id",
    "encode_id",
    "validate_id",
]

MAX_ID_LENGTH = 200
_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,32}")


def validate_id(value: object, *, what: str = "tenant_id") -> str:
    """Return ``value`` if it is an acceptable id, else raise ``InvalidId`` naming ``what``.

    Acceptable: a ``str`` of 1-200 characters with no control, format, surrogate, private-use
    or unassigned characters (Unicode category ``C*``).
    """
    if not isinstance(value, str):
        raise InvalidId(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidId(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidId(f"{what} is {len(value)} characters long; the maximum is {MAX_ID_LENGTH}")
    if (char := first_control(value)) is not None:
        raise InvalidId(f"{what} contains the control character {char!r}")
    return value


def encode_id(value: str) -> str:
    """The key-safe, injective encoding of a validated id."""
    return quote(value, safe="")


def decode_id(encoded: str) -> str:
    """Invert ``encode_id``."""
    return unquote(encoded)


OWN = "-"
"""The location of a tenant that is in no pool: its own hash tag."""


@dataclass(frozen=True, slots=True)
class TenantKeys:
    """The keys of one tenant at one location (its own tag, or its pool's)."""

    tag: str
    base: str
    state: str
    holds: str
    pool_state: str | None

    def record(self, reservation_id_encoded: str) -> str:
        """The key of one reservation record."""
        return f"{self.base}r:{reservation_id_encoded}"

    def with_pool(self, keys: list[str]) -> list[str]:
        """``keys`` plus the pool's state key when the tenant is in a pool."""
        return keys if self.pool_state is None else [*keys, self.pool_state]


class KeySpace:
    """Builds key names under a prefix (default ``"tf"``)."""

    __slots__ = ("global_switches", "prefix")

    def __init__(self, prefix: str = "tf") -> None:
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ConfigError(f"prefix must match [A-Za-z0-9_.-]{{1,32}}, got {prefix!r}")
        self.prefix = prefix
        self.global_switches = f"{prefix}:{{global}}:k"

    def tenant(self, tenant_encoded: str, location: str = OWN) -> TenantKeys:
        """The keys of a tenant (encoded id) living at ``location`` (``OWN`` or an encoded pool)."""
        if location == OWN:
            tag = f"{self.prefix}:{{t.{tenant_encoded}}}:"
            pool_state = None
        else:
            tag = f"{self.prefix}:{{p.{location}}}:"
            pool_state = tag + "pool:s"
        base = f"{tag}t.{tenant_encoded}:"
        return TenantKeys(tag, base, base + "s", tag + "h", pool_state)

    def pool_state(self, pool_encoded: str) -> str:
        """The state key of a pool (encoded id)."""
        return f"{self.prefix}:{{p.{pool_encoded}}}:pool:s"
