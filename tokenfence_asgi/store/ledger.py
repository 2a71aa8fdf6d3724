"""Reading the usage ledger and the daily usage counters the scripts write (see docs/ledger.md).

Layout, all inside a tenant's hash tag (or its pool's), so each is written by the same script
as the charge it records, in one cluster slot:

- ``<prefix>:{t.<tenant>}:l`` / ``<prefix>:{p.<pool>}:l``: a Redis Stream per tag, one entry per
  commit that charged (the tag's usage ledger), trimmed by age and length.
- ``<tag>t.<tenant>:d``: a hash of the tenant's daily counters, one field per UTC day.

No script can also write a registry of these keys (it would live in another slot), so readers
find them with ``SCAN`` on every primary of a cluster (``scan_keys``): the cost of a scan is
paid by reports and the exporter, never by a call.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from redis.asyncio import RedisCluster

from tokenfence_asgi.errors import StoreUnavailable
from tokenfence_asgi.money import from_nanos
from tokenfence_asgi.results import DailyUsage, UsageRecord
from tokenfence_asgi.store.client import STORE_ERRORS
from tokenfence_asgi.store.keys import OWN, decode_id

__all__ = [
    "EPOCH",
    "LedgerKeys",
    "day_number",
    "parse_day",
    "parse_days",
    "parse_entry",
    "read_stream",
    "read_streams",
    "scan_keys",
    "tag_pool",
    "trimmed_counts",
]

EPOCH = date(1970, 1, 1)
_DAY = re.compile(r"^(\d+),(\d+),(\d+),(\d+),(\d+),(\d+),(-?\d*),(.*)$")
SCAN_COUNT = 1000


def day_number(day: date) -> int:
    """Days since 1970-01-01 (the field name of a day in the daily usage hash)."""
    if isinstance(day, datetime):
        day = day.astimezone(UTC).date() if day.tzinfo else day.date()
    if not isinstance(day, date):
        raise TypeError(f"expected a date, got {type(day).__name__}")
    return (day - EPOCH).days


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _location_pool(location: str) -> str | None:
    return None if location == OWN else decode_id(location)


@dataclass(frozen=True, slots=True)
class LedgerKeys:
    """Patterns and parsers of the ledger's keys under one prefix."""

    prefix: str

    @property
    def state_pattern(self) -> str:
        return f"{self.prefix}:{{t.*}}:t.*:s"

    @property
    def days_pattern(self) -> str:
        return f"{self.prefix}:{{*}}:t.*:d"

    @property
    def stream_pattern(self) -> str:
        return f"{self.prefix}:{{*}}:l"

    def _re(self, tail: str) -> re.Pattern[str]:
        return re.compile(rf"^{re.escape(self.prefix)}:\{{([tp])\.([^{{}}:]+)\}}:{tail}$")

    def tenant_of_state(self, key: str) -> str | None:
        """The tenant (decoded) whose own-tag state hash ``key`` is, else None."""
        m = self._re(r"t\.([^{}:]+):s").match(key)
        if m is None or m.group(1) != "t" or m.group(2) != m.group(3):
            return None
        return decode_id(m.group(2))

    def days_key(self, key: str) -> tuple[str, str] | None:
        """``(location, tenant encoded)`` of a daily usage hash, else None."""
        m = self._re(r"t\.([^{}:]+):d").match(key)
        if m is None:
            return None
        if m.group(1) == "t":
            if m.group(2) != m.group(3):
                return None
            return OWN, m.group(3)
        return m.group(2), m.group(3)

    def stream_location(self, key: str) -> str | None:
        """The location (``OWN`` or an encoded pool) of a ledger stream key, else None."""
        m = self._re("l").match(key)
        if m is None:
            return None
        return OWN if m.group(1) == "t" else m.group(2)


async def scan_keys(client: Any, match: str, kind: str) -> AsyncIterator[str]:
    """Keys matching ``match`` of type ``kind``, on every primary of a cluster.

    Raises ``StoreUnavailable`` when the store cannot be reached.
    """
    try:
        if isinstance(client, RedisCluster):
            keys = client.scan_iter(
                match=match, count=SCAN_COUNT, _type=kind, target_nodes=RedisCluster.PRIMARIES
            )
        else:
            keys = client.scan_iter(match=match, count=SCAN_COUNT, _type=kind)
        async for key in keys:
            yield _text(key)
    except STORE_ERRORS as exc:
        raise StoreUnavailable(f"budget store unavailable: {exc}") from exc


def parse_day(field: str, value: str, tenant: str, pool: str | None) -> DailyUsage | None:
    """One field of a daily usage hash, or None if it is not one."""
    m = _DAY.match(value)
    if m is None or not field.isdigit():
        return None
    cost, commits, refusals, releases, tin, tout = (int(m.group(k)) for k in range(1, 7))
    limit = m.group(7)
    return DailyUsage(
        day=EPOCH + timedelta(days=int(field)),
        tenant_id=tenant,
        plan=m.group(8),
        cost=from_nanos(cost),
        cost_nanos=cost,
        requests=commits,
        refusals=refusals,
        limit=None if limit in ("", "-1") else from_nanos(int(limit)),
        releases=releases,
        input_tokens=tin,
        output_tokens=tout,
        pool=pool,
    )


def parse_days(
    flat: Iterable[Any], tenant: str, pool: str | None, first: int, last: int
) -> list[DailyUsage]:
    """The days ``first..last`` (day numbers, inclusive) of a daily usage hash, sorted."""
    items = [_text(x) for x in flat]
    out = []
    for k in range(0, len(items) - 1, 2):
        field, value = items[k], items[k + 1]
        if field.isdigit() and first <= int(field) <= last:
            usage = parse_day(field, value, tenant, pool)
            if usage is not None:
                out.append(usage)
    out.sort(key=lambda u: u.day)
    return out


def parse_entry(stream: str, location: str, entry_id: Any, raw: dict[Any, Any]) -> UsageRecord:
    """One ledger stream entry as a ``UsageRecord``."""
    f = {_text(k): _text(v) for k, v in raw.items()}
    requested = f.get("m") or None
    nanos = int(f.get("c", "0"))
    return UsageRecord(
        id=decode_id(f["id"]),
        tenant_id=decode_id(f["t"]),
        feature=decode_id(f["f"]) if f.get("f") else None,
        pool=_location_pool(location),
        model_requested=requested,
        model=f.get("u") or requested,
        input_tokens=int(f.get("i", "0")),
        output_tokens=int(f.get("o", "0")),
        cost=from_nanos(nanos),
        cost_nanos=nanos,
        timestamp=datetime.fromtimestamp(int(f["ts"]) / 1000, UTC),
        request_id=f.get("q") or None,
        late=f.get("l") == "1",
        stream=stream,
        entry_id=_text(entry_id),
    )


async def read_stream(
    client: Any, stream: str, location: str, after: str, count: int
) -> list[UsageRecord]:
    """Up to ``count`` entries of ``stream`` after entry id ``after`` ("0" for the first)."""
    start = "-" if after in ("", "0", "0-0") else f"({after}"
    try:
        entries = await client.xrange(stream, min=start, max="+", count=count)
    except STORE_ERRORS as exc:
        raise StoreUnavailable(f"budget store unavailable: {exc}") from exc
    return [parse_entry(stream, location, entry_id, fields) for entry_id, fields in entries]


async def read_streams(
    client: Any, cursors: list[tuple[str, str, str]], count: int
) -> list[list[UsageRecord]]:
    """``read_stream`` for many ``(stream, location, after)`` at once (one pipeline)."""
    if not cursors:
        return []
    pipe = client.pipeline(transaction=False)
    for stream, _, after in cursors:
        start = "-" if after in ("", "0", "0-0") else f"({after}"
        pipe.xrange(stream, min=start, max="+", count=count)
    try:
        replies = await pipe.execute()
    except STORE_ERRORS as exc:
        raise StoreUnavailable(f"budget store unavailable: {exc}") from exc
    return [
        [parse_entry(stream, location, entry_id, fields) for entry_id, fields in entries]
        for (stream, location, _), entries in zip(cursors, replies, strict=True)
    ]


async def trimmed_counts(client: Any, streams: Sequence[str]) -> dict[str, int]:
    """How many entries each stream has had trimmed: ``entries-added - length`` (Redis >= 7.0).

    Streams gone since they were listed, and every stream on an older Redis, are left out.
    One pipeline per 200 streams.
    """
    out: dict[str, int] = {}
    for k in range(0, len(streams), 200):
        chunk = streams[k : k + 200]
        pipe = client.pipeline(transaction=False)
        for stream in chunk:
            pipe.xinfo_stream(stream)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(f"budget store unavailable: {exc}") from exc
        for stream, reply in zip(chunk, replies, strict=True):
            if not isinstance(reply, dict):
                continue  # gone since the scan
            info = {_text(x): v for x, v in reply.items()}
            if "entries-added" in info:  # Redis before 7.0 does not count
                out[stream] = int(info["entries-added"]) - int(info["length"])
    return out


def tag_pool(location: str) -> str | None:
    """The pool (decoded) of a location, None for a tenant's own tag."""
    return _location_pool(location)
