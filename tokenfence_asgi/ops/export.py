"""Export the usage ledger and the daily usage to PostgreSQL (asyncpg).

Tables (created when missing, see ``SCHEMA``):

- ``ai_usage_log``: one row per ledger record, keyed by ``(tenant_id, id)`` (``id`` is the
  reservation id). ``cost_usd`` is ``DECIMAL(10,6)`` (rounded half-up to the micro-dollar,
  NULL above $9,999.999999); ``cost_nanos`` is exact.
- ``ai_usage_daily``: the daily usage counters, keyed by ``(tenant_id, day)``, a copy of the
  counters in Redis (cost, requests, refusals, releases, tokens, plan and limit of the day).
- ``tokenfence_export_checkpoint``: the last exported entry id of each ledger stream.

Exactly once: each batch's rows and the checkpoints of the streams they came from are written
in one transaction, so a crash (or a kill) at any point either keeps a whole batch and its
checkpoints or neither; the next run resumes after the last checkpoint. Rows are also inserted
with ``ON CONFLICT DO NOTHING``, so two exporters running at once never duplicate a row.
Daily rows are upserted (idempotent): the days from the last synced day on are re-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

import structlog

from tokenfence_asgi.money import from_nanos
from tokenfence_asgi.results import DailyUsage, UsageRecord
from tokenfence_asgi.store.ledger import EPOCH, day_number

if TYPE_CHECKING:
    from tokenfence_asgi.engine.fence import TokenFence

__all__ = ["SCHEMA", "ExportStats", "Exporter"]

log = structlog.get_logger("tokenfence_asgi")

SCHEMA = """
CREATE TABLE IF NOT EXISTS ai_usage_log (
    id              TEXT NOT NULL,
    tenant_id       TEXT NOT NULL,
    feature         TEXT,
    model           TEXT,
    input_tokens    BIGINT NOT NULL,
    output_tokens   BIGINT NOT NULL,
    cost_usd        DECIMAL(10, 6),
    cost_nanos      BIGINT NOT NULL,
    model_requested TEXT,
    pool            TEXT,
    request_id      TEXT,
    late            BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      TIMESTAMPTZ NOT NULL,
    stream          TEXT,
    stream_id       TEXT,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX IF NOT EXISTS ai_usage_log_tenant_created_at ON ai_usage_log (tenant_id, created_at);
CREATE TABLE IF NOT EXISTS ai_usage_daily (
    tenant_id     TEXT NOT NULL,
    day           DATE NOT NULL,
    plan          TEXT,
    pool          TEXT,
    cost          DECIMAL(18, 9) NOT NULL,
    cost_nanos    BIGINT NOT NULL,
    requests      BIGINT NOT NULL,
    refusals      BIGINT NOT NULL,
    releases      BIGINT NOT NULL,
    input_tokens  BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    limit_usd     DECIMAL(18, 9),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, day)
);
CREATE TABLE IF NOT EXISTS tokenfence_export_checkpoint (
    stream     TEXT PRIMARY KEY,
    last_ms    BIGINT NOT NULL,
    last_seq   BIGINT NOT NULL,
    accounted  BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""

# One statement per batch: the columns as arrays.
_INSERT_LOG = """
INSERT INTO ai_usage_log (id, tenant_id, feature, model, input_tokens, output_tokens, cost_usd,
    cost_nanos, model_requested, pool, request_id, late, created_at, stream, stream_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
    $6::bigint[], $7::numeric[], $8::bigint[], $9::text[], $10::text[], $11::text[],
    $12::boolean[], $13::timestamptz[], $14::text[], $15::text[])
ON CONFLICT (tenant_id, id) DO NOTHING
"""

# A checkpoint only moves forward, even with two exporters at once.
_UPSERT_CHECKPOINT = """
INSERT INTO tokenfence_export_checkpoint AS c (stream, last_ms, last_seq, accounted)
VALUES ($1, $2, $3, $4)
ON CONFLICT (stream) DO UPDATE SET last_ms = EXCLUDED.last_ms, last_seq = EXCLUDED.last_seq,
    accounted = c.accounted + EXCLUDED.accounted, updated_at = now()
WHERE (EXCLUDED.last_ms, EXCLUDED.last_seq) > (c.last_ms, c.last_seq)
"""

# Entries of a stream trimmed before they were exported, once reported.
_ADD_LOST = """
INSERT INTO tokenfence_export_checkpoint AS c (stream, last_ms, last_seq, accounted)
VALUES ($1, 0, 0, $2)
ON CONFLICT (stream) DO UPDATE SET accounted = c.accounted + EXCLUDED.accounted
"""

_UPSERT_DAILY = """
INSERT INTO ai_usage_daily AS d (tenant_id, day, plan, pool, cost, cost_nanos, requests, refusals,
    releases, input_tokens, output_tokens, limit_usd)
SELECT * FROM unnest($1::text[], $2::date[], $3::text[], $4::text[], $5::numeric[],
    $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[],
    $12::numeric[])
ON CONFLICT (tenant_id, day) DO UPDATE SET plan = EXCLUDED.plan, pool = EXCLUDED.pool,
    cost = EXCLUDED.cost, cost_nanos = EXCLUDED.cost_nanos, requests = EXCLUDED.requests,
    refusals = EXCLUDED.refusals, releases = EXCLUDED.releases,
    input_tokens = EXCLUDED.input_tokens, output_tokens = EXCLUDED.output_tokens,
    limit_usd = EXCLUDED.limit_usd, updated_at = now()
WHERE (d.plan, d.pool, d.cost_nanos, d.requests, d.refusals, d.releases, d.input_tokens,
       d.output_tokens, d.limit_usd)
      IS DISTINCT FROM
      (EXCLUDED.plan, EXCLUDED.pool, EXCLUDED.cost_nanos, EXCLUDED.requests, EXCLUDED.refusals,
       EXCLUDED.releases, EXCLUDED.input_tokens, EXCLUDED.output_tokens, EXCLUDED.limit_usd)
"""

_DAYS_MARK = "#days:"  # a checkpoint row per prefix: the last day synced (last_ms = day number)
_MAX_COST_USD = Decimal("9999.999999")
_MICRO = Decimal("0.000001")
_LAST = date(9999, 12, 31)
_LOCK = 7_455_730_219  # pg_advisory_xact_lock key of the schema creation


def cost_usd(nanos: int) -> Decimal | None:
    """Nano-dollars as ``DECIMAL(10,6)`` dollars (half-up), None when too large for it."""
    usd = from_nanos(nanos).quantize(_MICRO, ROUND_HALF_UP)
    return None if usd > _MAX_COST_USD else usd


def _split_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as one list per column (for ``unnest``)."""
    return [[row[k] for row in rows] for k in range(width)]


def _count(status: str) -> int:
    """The row count of an ``INSERT 0 N`` command status."""
    return int(status.rsplit(" ", 1)[-1])


def _row(r: UsageRecord) -> tuple[Any, ...]:
    return (r.id, r.tenant_id, r.feature, r.model, r.input_tokens, r.output_tokens,
            cost_usd(r.cost_nanos), r.cost_nanos, r.model_requested, r.pool, r.request_id,
            r.late, r.timestamp, r.stream, r.entry_id)  # fmt: skip


def _day_row(u: DailyUsage) -> tuple[Any, ...]:
    return (u.tenant_id, u.day, u.plan, u.pool, u.cost, u.cost_nanos, u.requests, u.refusals,
            u.releases, u.input_tokens, u.output_tokens, u.limit)  # fmt: skip


@dataclass
class ExportStats:
    """What an export did."""

    read: int = 0  # ledger entries read
    inserted: int = 0  # rows new in ai_usage_log
    batches: int = 0  # transactions committed
    streams: int = 0  # ledger streams found
    days: int = 0  # ai_usage_daily rows inserted or changed
    trimmed: list[str] = field(default_factory=list)  # streams that lost entries to trimming
    lost: int = 0  # entries trimmed from the ledger before they were exported


class Exporter:
    """Copies one fence's ledger and daily usage into PostgreSQL; see the module docstring.

    ``batch`` bounds the rows of one transaction (a batch holds whole slices of streams, so
    one may hold up to twice as many). Use as ``async with Exporter(fence, dsn) as e:``.
    """

    def __init__(
        self, fence: TokenFence, dsn: str, *, batch: int = 1000, streams_per_read: int = 100
    ) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 100_000:
            raise ValueError(f"batch must be an int in [1, 100000], got {batch!r}")
        self.fence = fence
        self.dsn = dsn
        self.batch = batch
        self.streams_per_read = streams_per_read
        self.conn: Any = None
        self.cursors: dict[str, str] = {}
        self.streams: list[str] = []
        self.stats = ExportStats()
        self._prefix = fence.prefix

    async def __aenter__(self) -> Exporter:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect, create the tables when missing, read the checkpoints."""
        import asyncpg

        self.conn = await asyncpg.connect(self.dsn, timeout=10)
        async with self.conn.transaction():
            await self.conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
            await self.conn.execute(SCHEMA)
        rows = await self.conn.fetch(
            "SELECT stream, last_ms, last_seq FROM tokenfence_export_checkpoint "
            "WHERE starts_with(stream, $1)",
            f"{self._prefix}:",
        )
        self.cursors = {r["stream"]: f"{r['last_ms']}-{r['last_seq']}" for r in rows}

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    # -- the ledger --------------------------------------------------------------------------

    async def discover(self) -> list[str]:
        """Find every ledger stream (SCAN) and check none was trimmed past its checkpoint."""
        self.streams = sorted({s async for s in self.fence.ledger_streams()})
        self.stats.streams = len(self.streams)
        await self._check_trimmed()
        return self.streams

    async def _check_trimmed(self) -> None:
        """Report entries trimmed (by retention) before they were exported (Redis >= 7.0).

        A stream has had ``entries-added - length`` entries trimmed, oldest first; the
        checkpoint row counts the entries exported (and those already reported lost), so the
        difference is what was lost since. Best effort: a stream that expired as a whole and
        was created anew is not seen.
        """
        accounted = dict(
            await self.conn.fetch(
                "SELECT stream, accounted FROM tokenfence_export_checkpoint "
                "WHERE starts_with(stream, $1)",
                f"{self._prefix}:",
            )
        )
        for stream, trimmed in (await self.fence.ledger_trimmed(self.streams)).items():
            lost = trimmed - int(accounted.get(stream, 0))
            if lost > 0:
                log.error(
                    "ledger_trimmed_before_export",
                    stream=stream,
                    lost=lost,
                    detail="raise ledger_retention / ledger_maxlen or export more often",
                )
                await self.conn.execute(_ADD_LOST, stream, lost)
                self.stats.trimmed.append(stream)
                self.stats.lost += lost

    async def export_pass(self) -> int:
        """Read what every known stream has after its checkpoint (up to ``batch`` entries
        each) and write it in transactions of about ``batch`` rows; returns entries read."""
        read = 0
        pending: list[tuple[str, list[UsageRecord]]] = []
        size = 0
        for k in range(0, len(self.streams), self.streams_per_read):
            cursors = [
                (s, self.cursors.get(s, "0")) for s in self.streams[k : k + self.streams_per_read]
            ]
            for (stream, _), records in zip(
                cursors, await self.fence.read_ledgers(cursors, self.batch), strict=True
            ):
                if not records:
                    continue
                read += len(records)
                pending.append((stream, records))
                size += len(records)
                if size >= self.batch:
                    await self.write(pending)
                    pending, size = [], 0
        if pending:
            await self.write(pending)
        self.stats.read += read
        return read

    async def write(self, slices: Sequence[tuple[str, list[UsageRecord]]]) -> None:
        """One transaction: the rows of ``slices`` and their streams' new checkpoints."""
        rows = [_row(r) for _, records in slices for r in records]
        checkpoints = [
            (stream, *_split_id(records[-1].entry_id), len(records)) for stream, records in slices
        ]
        async with self.conn.transaction():
            status = await self.conn.execute(_INSERT_LOG, *_columns(rows, 15))
            await self.conn.executemany(_UPSERT_CHECKPOINT, checkpoints)
            await self.in_batch()
        for stream, records in slices:
            self.cursors[stream] = records[-1].entry_id
        self.stats.inserted += _count(status)
        self.stats.batches += 1

    async def in_batch(self) -> None:
        """Runs inside each batch's transaction before it commits (a hook for tests)."""

    # -- daily usage -------------------------------------------------------------------------

    async def sync_days(self) -> int:
        """Upsert the daily usage from the last day synced on (every day the first time)."""
        mark = _DAYS_MARK + self._prefix
        last = await self.conn.fetchval(
            "SELECT last_ms FROM tokenfence_export_checkpoint WHERE stream = $1", mark
        )
        since = EPOCH if last is None else EPOCH + timedelta(days=int(last) - 1)
        unique = {(u.tenant_id, u.day): u async for u in self.fence.daily_usage(since, _LAST)}
        rows = list(unique.values())
        changed = 0
        for k in range(0, len(rows), self.batch):
            chunk = [_day_row(u) for u in rows[k : k + self.batch]]
            changed += _count(await self.conn.execute(_UPSERT_DAILY, *_columns(chunk, 12)))
        if rows:
            newest = max(day_number(u.day) for u in rows)
            await self.conn.execute(_UPSERT_CHECKPOINT, mark, newest, 0, 0)
        self.stats.days += changed
        return changed

    # -- runs --------------------------------------------------------------------------------

    async def export_all(self) -> ExportStats:
        """Export everything there is now, then sync the daily usage."""
        await self.discover()
        while await self.export_pass():
            pass
        await self.sync_days()
        return self.stats

    async def follow(
        self,
        *,
        poll_s: float = 1.0,
        rescan_s: float = 30.0,
        days_s: float = 10.0,
        stop: asyncio.Event | None = None,
    ) -> ExportStats:
        """Keep exporting: poll the known streams every ``poll_s`` when idle, look for new
        streams every ``rescan_s`` and sync the daily usage every ``days_s``, until ``stop``."""
        stop = stop or asyncio.Event()
        await self.discover()
        scanned = synced = time.monotonic()
        await self.sync_days()
        while not stop.is_set():
            read = await self.export_pass()
            now = time.monotonic()
            if now - synced >= days_s:
                await self.sync_days()
                synced = now
            if now - scanned >= rescan_s:
                await self.discover()
                scanned = now
            if not read:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll_s)
        await self.sync_days()
        return self.stats
