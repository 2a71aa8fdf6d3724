"""Spend reports: the numbers (pure), and ``tokenfence report`` on real Redis."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import redis
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.conftest import START, FakeClock
from tokenfence_asgi.cli.ledger import register
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import BudgetExceeded
from tokenfence_asgi.money import from_nanos
from tokenfence_asgi.ops.report import (
    MONTH_DAYS,
    build_report,
    percentile,
    report_csv,
    report_json,
)
from tokenfence_asgi.results import DailyUsage

D = Decimal
MARCH = date(2026, 3, 1)


def usage(tenant: str, day: date, nanos: int, plan: str = "pro", **kw: int) -> DailyUsage:
    return DailyUsage(
        day=day,
        tenant_id=tenant,
        plan=plan,
        cost=from_nanos(nanos),
        cost_nanos=nanos,
        requests=kw.get("requests", 1),
        refusals=kw.get("refusals", 0),
        limit=None,
    )


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 90) == 0
    assert percentile([5], 50) == 5
    values = list(range(1, 101))  # 1..100
    assert (percentile(values, 50), percentile(values, 90), percentile(values, 99)) == (50, 90, 99)
    assert percentile([3, 1, 2], 50) == 2
    assert percentile([1, 2, 3, 4], 50) == 2
    assert percentile([1, 2, 3, 4], 99) == 4


@given(st.lists(st.integers(0, 10**12), min_size=1, max_size=200), st.integers(1, 100))
def test_rule_percentile_bounds(values: list[int], q: int) -> None:
    """The nearest-rank percentile is one of the values, with at least q% at or below it and
    fewer than q% strictly below it."""
    p = percentile(values, q)
    assert p in values
    assert sum(v <= p for v in values) * 100 >= q * len(values)
    assert sum(v < p for v in values) * 100 < q * len(values)


def test_report_numbers() -> None:
    days = [MARCH + timedelta(days=k) for k in range(31)]
    rows = [usage("heavy", d, 3 * 10**9, refusals=1) for d in days]  # $3 a day
    rows += [usage(f"light{k}", days[0], (k + 1) * 10**8) for k in range(9)]  # $0.10..$0.90
    rows.append(usage("cheap", days[3], 10**7, plan="free"))
    rows.append(usage("cheap", days[4], 0, plan="free", refusals=2, requests=0))
    rows.append(usage("outside", MARCH - timedelta(days=1), 10**12))
    report = build_report(rows, MARCH, date(2026, 3, 31), prices={"pro": D(49)}, top=3)
    assert (report.days, report.tenants, report.tenant_days) == (31, 11, 31 + 9 + 2)
    assert report.cost_nanos == 93 * 10**9 + sum((k + 1) * 10**8 for k in range(9)) + 10**7
    assert report.refusals == 31 + 2
    assert [s.tenant_id for s in report.top] == ["heavy", "light8", "light7"]
    assert report.top_decile_nanos == 93 * 10**9 + 9 * 10**8  # 2 of 11 tenants
    free, pro = report.plans
    assert (free.plan, free.tenants, free.tenant_days, free.refusals) == ("free", 1, 2, 2)
    assert free.price_per_month is None
    assert free.margin is None
    assert free.margin_at(90) is None
    assert (pro.tenants, pro.tenant_days, pro.requests) == (10, 40, 40)
    assert pro.day_p50 == 3 * 10**9  # 31 of the 40 tenant-days are heavy's
    assert pro.tenant_p50 == 5 * 10**8
    assert pro.tenant_p90 == 9 * 10**8
    assert pro.tenant_p99 == 93 * 10**9
    period_price = (D(49) * 31 / MONTH_DAYS).quantize(D("0.000000001"))
    assert pro.price_for_period == period_price
    assert pro.margin_at(90) == period_price - D("0.9")
    assert pro.margin_at(99) == period_price - D(93)
    assert pro.revenue == period_price * 10
    assert pro.margin == period_price * 10 - pro.cost
    assert pro.unprofitable == 1
    assert report.top[0].margin == period_price - D(93)


def test_report_json_and_csv_are_exact() -> None:
    rows = [usage("a", MARCH, 1), usage("b", MARCH, 123_456_789_012)]
    report = build_report(rows, MARCH, MARCH, prices={"pro": D("0.01")})
    data = report_json(report)
    assert data["cost"] == "123.456789013"
    assert data["top"][0] == {
        "rank": 1,
        "tenant_id": "b",
        "plan": "pro",
        "cost": "123.456789012",
        "requests": 1,
        "refusals": 0,
        "days": 1,
        "price": "0.000328542",
        "margin": "-123.45646047",
    }
    assert data["plans"][0]["tenant_p50"] == "0.000000001"
    table = list(csv.DictReader(io.StringIO(report_csv(report))))
    assert [(r["section"], r["tenant_id"], r["plan"]) for r in table] == [
        ("plan", "", "pro"),
        ("top", "b", "pro"),
        ("top", "a", "pro"),
    ]
    assert table[0]["cost"] == "123.456789013"


def test_empty_period() -> None:
    report = build_report([], MARCH, MARCH)
    assert (report.tenants, report.cost_nanos, report.top, report.plans) == (0, 0, (), ())
    assert report.top_decile_share is None
    with pytest.raises(ValueError, match="before start"):
        build_report([], MARCH, MARCH - timedelta(days=1))


# -- the command, on real Redis --------------------------------------------------------------

PRO = Plan("pro", [Limit("1d", max_cost="5")], price_per_month="49")
FREE = Plan("free", [Limit("1d", max_cost="0.05")])


@pytest.fixture
def cli_app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "plans.toml"
    path.write_text(
        '[plans.free]\nlimits = [{window = "1d", max_cost = "0.05"}]\n'
        '[plans.pro]\nprice_per_month = "49"\nlimits = [{window = "1d", max_cost = "5"}]\n'
    )
    return str(path)


@pytest.fixture
async def seeded(redis_url: str) -> AsyncIterator[str]:
    """A prefix with a few tenants' spend on 2026-03-15 and 16."""
    prefix = f"tfrep{uuid.uuid4().hex[:8]}"
    clock = FakeClock()
    fence = TokenFence(
        redis_url=redis_url, plans=[FREE, PRO], default_plan="free", prefix=prefix, clock=clock
    )
    try:
        for tenant, plan in (("big", "pro"), ("mid", "pro"), ("small", "free")):
            await fence.set_plan(tenant, plan)
        for _ in range(2):
            for tenant, cost in (("big", "3"), ("mid", "1"), ("small", "0.04")):
                await fence.commit(await fence.reserve(tenant, cost), cost)
            with pytest.raises(BudgetExceeded):
                await fence.reserve("small", "0.04")
            clock.advance(86400)
        yield prefix
    finally:
        await fence.aclose()
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
        client.close()


def invoke(app: typer.Typer, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_report_table(cli_app: typer.Typer, seeded: str, redis_url: str, config: str) -> None:
    assert START  # the seeded days: 2026-03-15 and 16
    at = ["--redis-url", redis_url, "--prefix", seeded, "--config", config]
    march = ["--start", "2026-03-01", "--end", "2026-03-31"]
    code, out, err = invoke(cli_app, "report", *at, *march, "--price", "free=0")
    assert code == 0, err
    assert "Spend 2026-03-01 to 2026-03-31 (31 days): 3 tenants, 6 tenant-days, $8.08" in out
    assert "2 refusals" in out
    lines = out.splitlines()
    row = next(line for line in lines if line.strip().startswith("pro "))
    assert "$8.00" in row
    assert "$49.00" in row
    assert " 1 " in next(line for line in lines if line.strip().startswith("1 "))
    assert "big" in next(line for line in lines if line.strip().startswith("1 "))


def test_report_json_and_prices(
    cli_app: typer.Typer, seeded: str, redis_url: str, config: str
) -> None:
    at = ["--redis-url", redis_url, "--prefix", seeded, "--config", config]
    day = ["--start", "2026-03-15", "--end", "2026-03-15"]
    options = ["--format", "json", "--price", "pro=$100", "--top", "2"]
    code, out, err = invoke(cli_app, "report", *at, *day, *options)
    assert code == 0, err
    data = json.loads(out)
    assert (data["days"], data["cost"], data["refusals"]) == (1, "4.04", 1)
    assert [t["tenant_id"] for t in data["top"]] == ["big", "mid"]
    pro = next(p for p in data["plans"] if p["plan"] == "pro")
    assert pro["price_per_month"] == "100"  # --price wins over the file's 49
    assert D(pro["margin_p90"]) == (D(100) / MONTH_DAYS).quantize(D("0.000000001")) - 3
    free = next(p for p in data["plans"] if p["plan"] == "free")
    assert free["margin"] is None


def test_report_csv(cli_app: typer.Typer, seeded: str, redis_url: str) -> None:
    at = ["--redis-url", redis_url, "--prefix", seeded]
    day = ["--start", "2026-03-16", "--end", "2026-03-16"]
    code, out, err = invoke(cli_app, "report", *at, *day, "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["section"], r["plan"], r["cost"]) for r in rows if r["section"] == "plan"] == [
        ("plan", "free", "0.04"),
        ("plan", "pro", "4"),
    ]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--price", "pro"], 2, "PLAN=DOLLARS"),
        (["--price", "pro=-1"], 2, "PLAN=DOLLARS"),
        (["--price", "pro=abc"], 2, "PLAN=DOLLARS"),
        (["--start", "2026-13-01"], 2, "YYYY-MM-DD"),
        (["--start", "2026-03-02", "--end", "2026-03-01"], 2, "before"),
        (["--format", "xml"], 2, "xml"),
        (["--prefix", "bad prefix"], 2, "prefix"),
    ],
)
def test_report_bad_input(
    cli_app: typer.Typer, redis_url: str, args: list[str], code: int, message: str
) -> None:
    got, out, err = invoke(cli_app, "report", "--redis-url", redis_url, *args)
    assert got == code
    assert message in out + err


def test_report_needs_redis(cli_app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENFENCE_REDIS_URL", raising=False)
    code, _, err = invoke(cli_app, "report")
    assert code == 2
    assert "--redis-url" in err
    code, _, err = invoke(cli_app, "report", "--redis-url", "http://nope")
    assert code == 3
    code, _, err = invoke(cli_app, "report", "--redis-url", "redis://127.0.0.1:1/0")
    assert code == 5
    assert "cannot reach Redis" in err
