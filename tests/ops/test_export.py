"""The PostgreSQL export, against real Redis and the real PostgreSQL on loopback.

PostgreSQL comes from ``TOKENFENCE_TEST_POSTGRES_DSN`` (default: the local server with trust
auth); every test works in a throwaway database (``tf_test_<random>``) dropped afterwards.
Without a reachable PostgreSQL the tests are skipped, except under CI (``CI`` set), where
they fail.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis
import typer
from typer.testing import CliRunner

from tests.conftest import FakeClock
from tokenfence_asgi.cli.ledger import register
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import BudgetExceeded
from tokenfence_asgi.money import from_nanos
from tokenfence_asgi.ops.export import Exporter, cost_usd
from tokenfence_asgi.results import Reservation

asyncpg = pytest.importorskip("asyncpg")

D = Decimal
PG_DSN = os.environ.get(
    "TOKENFENCE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
ROOT = Path(__file__).resolve().parents[2]
BIG = Plan("big", [Limit("1d", max_cost="100000"), Limit("1mo", max_cost="1000000")])
SMALL = Plan("small", [Limit("1d", max_cost="0.10")])
PLANS = [BIG, SMALL]
DAY = date(2026, 3, 15)


def _database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


@pytest.fixture
async def pg() -> AsyncIterator[str]:
    """The DSN of a new, empty database, dropped after the test."""
    try:
        admin = await asyncpg.connect(PG_DSN, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL unreachable at {PG_DSN}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_DSN}: {exc}")
    name = f"tf_test_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _database(PG_DSN, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


class Space:
    """Fences on the test Redis under a fresh prefix (keys deleted afterwards)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"tfx{uuid.uuid4().hex[:10]}"
        self.clock = FakeClock()
        self.fences: list[TokenFence] = []

    def fence(self, **options: Any) -> TokenFence:
        options.setdefault("plans", PLANS)
        options.setdefault("default_plan", "big")
        options.setdefault("clock", self.clock)
        fence = TokenFence(redis_url=self.url, prefix=self.prefix, **options)
        self.fences.append(fence)
        return fence

    async def cleanup(self) -> None:
        for fence in self.fences:
            await fence.aclose()
        client = aioredis.Redis.from_url(self.url)
        async for key in client.scan_iter(match=f"{self.prefix}:*", count=1000):
            await client.delete(key)
        await client.aclose()


@pytest.fixture
async def space(redis_url: str) -> AsyncIterator[Space]:
    s = Space(redis_url)
    try:
        yield s
    finally:
        await s.cleanup()


async def fetch(dsn: str, query: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def daily_in_redis(fence: TokenFence) -> dict[tuple[str, date], tuple[int, int]]:
    return {
        (u.tenant_id, u.day): (u.cost_nanos, u.requests)
        async for u in fence.daily_usage(date(2000, 1, 1), date(2100, 1, 1))
    }


async def daily_in_pg(dsn: str) -> dict[tuple[str, date], tuple[int, int]]:
    rows = await fetch(dsn, "SELECT tenant_id, day, cost_nanos, requests FROM ai_usage_daily")
    return {(r["tenant_id"], r["day"]): (r["cost_nanos"], r["requests"]) for r in rows}


def test_cost_usd_rounding() -> None:
    assert cost_usd(1_500) == D("0.000002")  # half up
    assert cost_usd(1_499) == D("0.000001")
    assert cost_usd(13_000_000) == D("0.013000")
    assert cost_usd(9_999_999_999_000) == D("9999.999999")
    assert cost_usd(9_999_999_999_500) is None  # rounds to $10,000: too large for DECIMAL(10,6)


async def test_export_rows_days_late_and_releases(space: Space, pg: str) -> None:
    fence = space.fence()
    r = await fence.reserve("acme", "0.02", feature="chat", model="gpt-4o")
    await fence.commit(
        r, "0.0000015", input_tokens=100, output_tokens=20, model="gpt-4o-mini", request_id="req-1"
    )
    await fence.release(await fence.reserve("acme", "1"))
    late = await fence.reserve("acme", "1", feature="search")
    space.clock.advance(3600)  # past the 600 s lease
    await fence.commit(late, "0.5")
    await fence.commit(late, "0.5")  # a repeat: no second row
    ghost = Reservation("ghost-1", "acme", None, None, D(0), 0, "big")
    await fence.commit(ghost, "0.25")
    await fence.set_pool("globex", "team", plan="big")
    await fence.commit(await fence.reserve("globex", "20000"), "12345.678901234")
    await fence.set_plan("tiny", "small")
    with pytest.raises(BudgetExceeded):
        await fence.reserve("tiny", "1")

    async with Exporter(fence, pg, batch=2) as exporter:
        stats = await exporter.export_all()
    assert (stats.read, stats.inserted, stats.streams) == (4, 4, 2)
    assert stats.batches >= 2
    rows = {r["id"]: dict(r) for r in await fetch(pg, "SELECT * FROM ai_usage_log")}
    first = rows[r.id]
    assert first == {
        "id": r.id,
        "tenant_id": "acme",
        "feature": "chat",
        "model": "gpt-4o-mini",
        "input_tokens": 100,
        "output_tokens": 20,
        "cost_usd": D("0.000002"),
        "cost_nanos": 1500,
        "model_requested": "gpt-4o",
        "pool": None,
        "request_id": "req-1",
        "late": False,
        "created_at": datetime(2026, 3, 15, 12, tzinfo=UTC),
        "stream": f"{space.prefix}:{{t.acme}}:l",
        "stream_id": first["stream_id"],
    }
    assert rows[late.id]["late"]
    assert rows[late.id]["feature"] == "search"
    assert rows["ghost-1"]["late"]
    big = next(row for row in rows.values() if row["tenant_id"] == "globex")
    assert (big["cost_usd"], big["cost_nanos"], big["pool"]) == (None, 12345678901234, "team")

    daily = await fetch(pg, "SELECT * FROM ai_usage_daily")
    days = {(d["tenant_id"], d["day"]): dict(d) for d in daily}
    acme = days["acme", DAY]
    assert (acme["cost_nanos"], acme["requests"], acme["releases"], acme["refusals"]) == (
        750_001_500,
        3,
        1,
        0,
    )
    assert (acme["cost"], acme["plan"], acme["limit_usd"]) == (D("0.7500015"), "big", D(100000))
    assert (days["tiny", DAY]["refusals"], days["tiny", DAY]["plan"]) == (1, "small")
    assert days["globex", DAY]["pool"] == "team"
    assert await daily_in_pg(pg) == await daily_in_redis(fence)

    indexes = await fetch(pg, "SELECT indexdef FROM pg_indexes WHERE tablename = 'ai_usage_log'")
    assert any("(tenant_id, created_at)" in i["indexdef"] for i in indexes)

    async with Exporter(fence, pg) as again:  # nothing new: nothing written
        stats = await again.export_all()
    assert (stats.read, stats.inserted, stats.batches, stats.days) == (0, 0, 0, 0)
    await fence.commit(await fence.reserve("acme", "1"), "0.1")
    async with Exporter(fence, pg) as again:
        stats = await again.export_all()
    assert (stats.read, stats.inserted, stats.days) == (1, 1, 1)
    assert len(await fetch(pg, "SELECT id FROM ai_usage_log")) == 5


async def _random_calls(
    fence: TokenFence, clock: FakeClock, calls: int, seed: int
) -> dict[str, Any]:
    """``calls`` reserves on 60 tenants (some in pools) from 50 concurrent workers over a few
    days: commits, releases, repeats, late commits, unknown ids. Returns the expected truth."""
    rng = random.Random(seed)
    tenants = [f"t{k:02d}" for k in range(60)]
    for k, tenant in enumerate(tenants[:12]):
        await fence.set_pool(tenant, f"pool{k % 3}", plan="big")
    charged: dict[str, tuple[str, int, date]] = {}  # reservation id -> (tenant, nanos, day)
    deferred: list[tuple[Reservation, int]] = []
    lock = asyncio.Lock()

    async def worker(w: int, count: int) -> None:
        wrng = random.Random(f"{seed}:{w}")
        for _ in range(count):
            tenant = wrng.choice(tenants)
            estimate = wrng.randint(1, 50_000_000)
            r = await fence.reserve(
                tenant,
                from_nanos(estimate),
                feature=wrng.choice([None, "chat", "search"]),
                model=wrng.choice(["gpt-4o", "gpt-4o-mini"]),
            )
            roll = wrng.random()
            cost = wrng.randint(0, 2 * estimate)
            if roll < 0.10:
                await fence.release(r)
                continue
            if roll < 0.18:
                async with lock:
                    deferred.append((r, cost))  # committed after the lease ran out
                continue
            day = datetime.fromtimestamp(clock.now, UTC).date()
            await fence.commit(
                r,
                from_nanos(cost),
                input_tokens=wrng.randint(0, 5000),
                output_tokens=wrng.randint(0, 900),
                request_id=f"q{w}",
            )
            charged[r.id] = (tenant, cost, day)
            if roll < 0.23:
                assert (await fence.commit(r, from_nanos(cost))).duplicate

    rounds, workers = 4, 50
    per = calls // (rounds * workers)
    for _ in range(rounds):
        await asyncio.gather(*(worker(w, per) for w in range(workers)))
        clock.advance(9 * 3600)  # past every lease: deferred commits are late; days go by
        day = datetime.fromtimestamp(clock.now, UTC).date()
        for r, cost in deferred:
            assert (await fence.commit(r, from_nanos(cost))).late
            charged[r.id] = (r.tenant_id, cost, day)
        deferred.clear()
    for k in range(20):  # commits for ids the store never saw
        ghost = Reservation(f"ghost-{k}", rng.choice(tenants), None, None, D(0), 0, "big")
        nanos = rng.randint(1, 10**8)
        await fence.commit(ghost, from_nanos(nanos))
        charged[ghost.id] = (ghost.tenant_id, nanos, datetime.fromtimestamp(clock.now, UTC).date())
    return {"charged": charged, "tenants": tenants, "reserves": rounds * workers * per}


def _export_process(
    dsn: str, url: str, prefix: str, batch: int, log: Path
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        command = [sys.executable, "-m", "tokenfence_asgi.cli.ledger", "export"]
        where = ["--postgres", dsn, "--redis-url", url, "--prefix", prefix, "--batch", str(batch)]
        return subprocess.Popen([*command, *where], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


async def _count(dsn: str) -> int:
    try:
        return int((await fetch(dsn, "SELECT count(*) AS n FROM ai_usage_log"))[0]["n"])
    except asyncpg.UndefinedTableError:
        return 0


@pytest.mark.slow
async def test_10000_calls_exporter_killed_midway_then_exactly_once(
    space: Space, pg: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    fence = space.fence(hold_ttl=3600)
    truth = await _random_calls(fence, space.clock, 10_000, seed=9)
    charged: dict[str, tuple[str, int, date]] = truth["charged"]
    total = len(charged)
    assert truth["reserves"] == 10_000
    assert total > 8000

    # Kill -9 an exporter in the middle of its batches...
    log = tmp_path / "exporter.log"
    proc = _export_process(pg, space.url, space.prefix, batch=10, log=log)
    try:
        deadline = time.monotonic() + 60
        watch = await asyncpg.connect(pg)  # one connection: polls every few milliseconds
        try:
            while True:
                try:
                    n = await watch.fetchval("SELECT count(*) FROM ai_usage_log")
                except asyncpg.UndefinedTableError:
                    n = 0
                if n >= 500:
                    break
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the exporter wrote nothing"
                await asyncio.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            await watch.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    partial = await _count(pg)
    assert 500 <= partial < total, (n, partial, total)
    checkpoints = await fetch(pg, "SELECT count(*) AS n FROM tokenfence_export_checkpoint")
    assert checkpoints[0]["n"] > 0

    # ... and run it again: every record exactly once.
    async with Exporter(fence, pg, batch=500) as exporter:
        stats = await exporter.export_all()
    assert stats.inserted == total - partial
    assert stats.read == total - partial  # resumed after the checkpoints, nothing re-read
    rows = await fetch(pg, "SELECT id, tenant_id, cost_nanos, created_at FROM ai_usage_log")
    assert len(rows) == total
    assert {r["id"]: (r["tenant_id"], r["cost_nanos"], r["created_at"].date()) for r in rows} == (
        charged
    )

    # Totals to the nano-dollar: PostgreSQL's log and daily table == Redis's counters.
    expected: dict[tuple[str, date], int] = {}
    for tenant, nanos, day in charged.values():
        expected[tenant, day] = expected.get((tenant, day), 0) + nanos
    log_totals: dict[tuple[str, date], int] = {}
    for r in rows:
        key = (r["tenant_id"], r["created_at"].date())
        log_totals[key] = log_totals.get(key, 0) + r["cost_nanos"]
    redis_days = await daily_in_redis(fence)
    pg_days = await daily_in_pg(pg)
    assert log_totals == expected
    assert {k: v[0] for k, v in redis_days.items() if v != (0, 0)} == expected
    assert pg_days == redis_days
    grand = sum(expected.values())
    assert sum(v[0] for v in pg_days.values()) == grand
    windows = 0
    for tenant in truth["tenants"]:
        status = await fence.status(tenant)
        windows += int(status.windows[1].used * 10**9)  # the 1mo window: all of March
    assert windows == grand
    assert time.monotonic() - started < 60


async def test_cancelled_in_the_middle_of_a_batch(space: Space, pg: str) -> None:
    fence = space.fence()
    ids = []
    for k in range(30):
        r = await fence.reserve(f"t{k % 3}", "1")
        await fence.commit(r, "0.01")
        ids.append(r.id)
    inside = asyncio.Event()

    class Stuck(Exporter):
        batches = 0

        async def in_batch(self) -> None:
            Stuck.batches += 1
            if Stuck.batches == 2:  # the second batch's rows are written, not committed
                inside.set()
                await asyncio.sleep(3600)

    exporter = Stuck(fence, pg, batch=10)
    await exporter.connect()
    task = asyncio.create_task(exporter.export_all())
    await asyncio.wait_for(inside.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await exporter.close()
    assert await _count(pg) == 10  # the first batch only
    async with Exporter(fence, pg, batch=7) as again:
        stats = await again.export_all()
    assert stats.inserted == stats.read == 20
    rows = await fetch(pg, "SELECT id FROM ai_usage_log")
    assert sorted(r["id"] for r in rows) == sorted(ids)


async def test_two_exporters_at_once(space: Space, pg: str) -> None:
    fence = space.fence()
    for k in range(200):
        await fence.commit(await fence.reserve(f"t{k % 7}", "1"), "0.01")
    async with Exporter(fence, pg, batch=13) as a, Exporter(fence, pg, batch=17) as b:
        sa, sb = await asyncio.gather(a.export_all(), b.export_all())
    assert sa.inserted + sb.inserted == 200
    assert await _count(pg) == 200
    assert await daily_in_pg(pg) == await daily_in_redis(fence)


async def test_follow_picks_up_new_records_and_streams(space: Space, pg: str) -> None:
    fence = space.fence()
    await fence.commit(await fence.reserve("a", "1"), "0.01")
    stop = asyncio.Event()
    async with Exporter(fence, pg) as exporter:
        task = asyncio.create_task(
            exporter.follow(poll_s=0.02, rescan_s=0.05, days_s=0.05, stop=stop)
        )

        async def until(n: int) -> None:
            deadline = time.monotonic() + 10
            while await _count(pg) < n:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)

        await until(1)
        await fence.commit(await fence.reserve("a", "1"), "0.02")
        await until(2)
        await fence.commit(await fence.reserve("new-tenant", "1"), "0.03")  # a new stream
        await until(3)
        stop.set()
        stats = await asyncio.wait_for(task, 10)
    assert stats.inserted == 3
    assert await daily_in_pg(pg) == await daily_in_redis(fence)


async def test_records_trimmed_before_export_are_reported(space: Space, pg: str) -> None:
    fence = space.fence(ledger_maxlen=10, ledger_retention=None)
    await fence.commit(await fence.reserve("a", "1"), "0.01")
    async with Exporter(fence, pg) as exporter:
        assert (await exporter.export_all()).trimmed == []
    for _ in range(350):
        await fence.commit(await fence.reserve("a", "1"), "0.01")
    async with Exporter(fence, pg) as exporter:
        stats = await exporter.export_all()
    assert stats.trimmed == [f"{space.prefix}:{{t.a}}:l"]
    assert stats.inserted < 350
    assert stats.lost == 350 - stats.inserted
    async with Exporter(fence, pg) as exporter:  # reported once
        stats = await exporter.export_all()
    assert (stats.trimmed, stats.lost, stats.inserted) == ([], 0, 0)
    # the daily counters are not trimmed: the daily table stays exact
    assert await daily_in_pg(pg) == await daily_in_redis(fence)


# -- the command -------------------------------------------------------------------------------


@pytest.fixture
def cli() -> Callable[..., Any]:
    app = typer.Typer()
    register(app)

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(app, list(args), catch_exceptions=False)

    return invoke


async def test_export_command(cli: Callable[..., Any], space: Space, pg: str) -> None:
    fence = space.fence()
    for k in range(5):
        await fence.commit(await fence.reserve(f"t{k}", "1"), "0.01")
    args = ("export", "--postgres", pg, "--redis-url", space.url, "--prefix", space.prefix)
    result = await asyncio.to_thread(cli, *args)
    assert result.exit_code == 0, result.stderr
    assert "exported 5 new record(s) of 5 read from 5 ledger stream(s)" in result.stdout
    result = await asyncio.to_thread(cli, *args)
    assert "exported 0 new record(s) of 0 read" in result.stdout
    assert await _count(pg) == 5


def test_export_command_errors(
    cli: Callable[..., Any], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOKENFENCE_REDIS_URL", raising=False)
    monkeypatch.delenv("TOKENFENCE_POSTGRES_DSN", raising=False)
    result = cli("export", "--redis-url", redis_url)
    assert result.exit_code == 2
    assert "--postgres" in result.stderr
    bad = "postgresql://postgres:secret@127.0.0.1:1/postgres"
    result = cli("export", "--postgres", bad, "--redis-url", redis_url, "--prefix", "tfnone")
    assert result.exit_code == 1
    assert "cannot reach PostgreSQL" in result.stderr
    assert "secret" not in result.stderr
    result = cli("export", "--postgres", PG_DSN)
    assert result.exit_code == 2
    assert "--redis-url" in result.stderr
