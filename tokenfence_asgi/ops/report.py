"""Spend reports from the daily usage counters: top spenders, spend per plan, margin per plan.

``build_report`` is pure (daily usage in, a ``SpendReport`` out); ``collect`` reads the usage
of every tenant from a fence; ``render_table`` / ``report_json`` / ``report_csv`` format it.

Definitions (also in docs/ledger.md):

- A tenant-day is one tenant's usage on one UTC day with any activity (a commit, a refusal or
  a release); days without activity are not counted as zero-cost days.
- A tenant's plan is the plan of its last day in the period; each tenant-day counts under the
  plan of that day.
- Percentiles are nearest-rank: p90 is the smallest value at least 90% of the values are at or
  below, so it is always one of the values.
- Prices are per month; a period of D days is charged ``price x D / 30.4375`` (the mean month),
  so a 31-day month's report prorates the price by 31 / 30.4375.
- A tenant's margin is its prorated price minus its spend; "margin at p90" is the margin of a
  tenant whose spend is the plan's 90th percentile: does that user stay profitable?
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from tokenfence_asgi.errors import MissingExtra
from tokenfence_asgi.money import format_dollars, format_usd_rounded, from_nanos
from tokenfence_asgi.results import DailyUsage

__all__ = [
    "MONTH_DAYS",
    "PlanSpend",
    "SpendReport",
    "TenantSpend",
    "build_report",
    "collect",
    "percentile",
    "render_table",
    "report_csv",
    "report_json",
]

MONTH_DAYS = Decimal("30.4375")
"""The mean Gregorian month in days (365.25 / 12), for prorating monthly prices."""


def percentile(values: list[int], q: int) -> int:
    """Nearest-rank percentile ``q`` (1-100) of ``values`` (0 when empty)."""
    if not values:
        return 0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered) / 100))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class TenantSpend:
    """One tenant's spend over the report's period."""

    tenant_id: str
    plan: str
    cost_nanos: int
    requests: int
    refusals: int
    days: int
    price: Decimal | None = None  # its plan's price prorated to the period

    @property
    def cost(self) -> Decimal:
        return from_nanos(self.cost_nanos)

    @property
    def margin(self) -> Decimal | None:
        return None if self.price is None else self.price - self.cost


@dataclass(frozen=True, slots=True)
class PlanSpend:
    """The spend of one plan's tenants: totals, distributions and margin."""

    plan: str
    tenants: int
    tenant_days: int
    cost_nanos: int
    requests: int
    refusals: int
    day_p50: int  # nanos per tenant-day
    day_p90: int
    day_p99: int
    tenant_p50: int  # nanos per tenant over the period
    tenant_p90: int
    tenant_p99: int
    price_per_month: Decimal | None
    price_for_period: Decimal | None  # per tenant
    unprofitable: int | None  # tenants whose spend exceeded their prorated price

    @property
    def cost(self) -> Decimal:
        return from_nanos(self.cost_nanos)

    @property
    def revenue(self) -> Decimal | None:
        return None if self.price_for_period is None else self.price_for_period * self.tenants

    @property
    def margin(self) -> Decimal | None:
        return None if self.revenue is None else self.revenue - self.cost

    @property
    def margin_pct(self) -> Decimal | None:
        if self.revenue is None or self.margin is None or self.revenue == 0:
            return None
        return (self.margin * 100 / self.revenue).quantize(Decimal("0.1"), ROUND_HALF_UP)

    def margin_at(self, q: int) -> Decimal | None:
        """The margin of a tenant spending the plan's ``q``-th percentile (50, 90 or 99)."""
        spend = {50: self.tenant_p50, 90: self.tenant_p90, 99: self.tenant_p99}[q]
        return None if self.price_for_period is None else self.price_for_period - from_nanos(spend)


@dataclass(frozen=True, slots=True)
class SpendReport:
    """Everything ``tokenfence report`` shows."""

    start: date
    end: date
    days: int
    tenants: int
    tenant_days: int
    cost_nanos: int
    requests: int
    refusals: int
    top: tuple[TenantSpend, ...]
    plans: tuple[PlanSpend, ...]
    top_decile_nanos: int  # what the top 10% of tenants (at least one) spent

    @property
    def cost(self) -> Decimal:
        return from_nanos(self.cost_nanos)

    @property
    def top_decile_share(self) -> Decimal | None:
        if self.cost_nanos == 0:
            return None
        share = Decimal(self.top_decile_nanos * 100) / Decimal(self.cost_nanos)
        return share.quantize(Decimal("0.1"), ROUND_HALF_UP)


def prorate(price: Decimal, days: int) -> Decimal:
    """A monthly price for a period of ``days`` days, to the nano-dollar."""
    return (price * days / MONTH_DAYS).quantize(Decimal("0.000000001"), ROUND_HALF_UP)


def build_report(
    usage: Iterable[DailyUsage],
    start: date,
    end: date,
    *,
    prices: Mapping[str, Decimal] | None = None,
    top: int = 10,
) -> SpendReport:
    """The report of the tenant-days in ``usage`` (those outside ``start..end`` are ignored).

    ``prices`` maps plan names to prices per month (plans without a price show no margin).
    """
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    days = (end - start).days + 1
    prices = dict(prices or {})
    per_tenant: dict[str, list[DailyUsage]] = {}
    for day in usage:
        if start <= day.day <= end:
            per_tenant.setdefault(day.tenant_id, []).append(day)

    spends: list[TenantSpend] = []
    day_costs: dict[str, list[int]] = {}
    refusals_by_plan: dict[str, int] = {}
    requests_by_plan: dict[str, int] = {}
    for tenant, tenant_days in per_tenant.items():
        tenant_days.sort(key=lambda d: d.day)
        plan = tenant_days[-1].plan
        for d in tenant_days:
            day_costs.setdefault(d.plan, []).append(d.cost_nanos)
            refusals_by_plan[d.plan] = refusals_by_plan.get(d.plan, 0) + d.refusals
            requests_by_plan[d.plan] = requests_by_plan.get(d.plan, 0) + d.requests
        price = prices.get(plan)
        spends.append(
            TenantSpend(
                tenant_id=tenant,
                plan=plan,
                cost_nanos=sum(d.cost_nanos for d in tenant_days),
                requests=sum(d.requests for d in tenant_days),
                refusals=sum(d.refusals for d in tenant_days),
                days=len(tenant_days),
                price=None if price is None else prorate(price, days),
            )
        )
    spends.sort(key=lambda s: (-s.cost_nanos, s.tenant_id))

    plans: list[PlanSpend] = []
    for name in sorted(set(day_costs) | {s.plan for s in spends}):
        members = [s for s in spends if s.plan == name]
        tenant_costs = [s.cost_nanos for s in members]
        costs = day_costs.get(name, [])
        price = prices.get(name)
        period_price = None if price is None else prorate(price, days)
        plans.append(
            PlanSpend(
                plan=name,
                tenants=len(members),
                tenant_days=len(costs),
                cost_nanos=sum(costs),
                requests=requests_by_plan.get(name, 0),
                refusals=refusals_by_plan.get(name, 0),
                day_p50=percentile(costs, 50),
                day_p90=percentile(costs, 90),
                day_p99=percentile(costs, 99),
                tenant_p50=percentile(tenant_costs, 50),
                tenant_p90=percentile(tenant_costs, 90),
                tenant_p99=percentile(tenant_costs, 99),
                price_per_month=price,
                price_for_period=period_price,
                unprofitable=None
                if period_price is None
                else sum(1 for s in members if s.cost > period_price),
            )
        )
    decile = max(1, math.ceil(len(spends) / 10)) if spends else 0
    return SpendReport(
        start=start,
        end=end,
        days=days,
        tenants=len(spends),
        tenant_days=sum(len(d) for d in per_tenant.values()),
        cost_nanos=sum(s.cost_nanos for s in spends),
        requests=sum(s.requests for s in spends),
        refusals=sum(s.refusals for s in spends),
        top=tuple(spends[: max(0, top)]),
        plans=tuple(plans),
        top_decile_nanos=sum(s.cost_nanos for s in spends[:decile]),
    )


async def collect(usage: AsyncIterator[DailyUsage]) -> list[DailyUsage]:
    """Every item of ``fence.daily_usage(start, end)``."""
    return [day async for day in usage]


# -- output ------------------------------------------------------------------------------------


def _exact(amount: Decimal | None) -> str | None:
    """Money for machines: exact, plain notation (up to 9 places)."""
    return format_dollars(amount)


def _n(nanos: int) -> str:
    return _exact(from_nanos(nanos)) or "0"


def report_json(report: SpendReport) -> dict[str, Any]:
    """The report as JSON-ready data (money as exact decimal strings in dollars)."""
    return {
        "start": report.start.isoformat(),
        "end": report.end.isoformat(),
        "days": report.days,
        "tenants": report.tenants,
        "tenant_days": report.tenant_days,
        "cost": _n(report.cost_nanos),
        "requests": report.requests,
        "refusals": report.refusals,
        "top_decile_cost": _n(report.top_decile_nanos),
        "top_decile_share_pct": _exact(report.top_decile_share),
        "top": [
            {
                "rank": rank,
                "tenant_id": s.tenant_id,
                "plan": s.plan,
                "cost": _n(s.cost_nanos),
                "requests": s.requests,
                "refusals": s.refusals,
                "days": s.days,
                "price": _exact(s.price),
                "margin": _exact(s.margin),
            }
            for rank, s in enumerate(report.top, 1)
        ],
        "plans": [
            {
                "plan": p.plan,
                "tenants": p.tenants,
                "tenant_days": p.tenant_days,
                "cost": _n(p.cost_nanos),
                "requests": p.requests,
                "refusals": p.refusals,
                "day_p50": _n(p.day_p50),
                "day_p90": _n(p.day_p90),
                "day_p99": _n(p.day_p99),
                "tenant_p50": _n(p.tenant_p50),
                "tenant_p90": _n(p.tenant_p90),
                "tenant_p99": _n(p.tenant_p99),
                "price_per_month": _exact(p.price_per_month),
                "price_for_period": _exact(p.price_for_period),
                "revenue": _exact(p.revenue),
                "margin": _exact(p.margin),
                "margin_pct": _exact(p.margin_pct),
                "margin_p50": _exact(p.margin_at(50)),
                "margin_p90": _exact(p.margin_at(90)),
                "margin_p99": _exact(p.margin_at(99)),
                "unprofitable_tenants": p.unprofitable,
            }
            for p in report.plans
        ],
    }


CSV_COLUMNS = (
    "section",
    "rank",
    "plan",
    "tenant_id",
    "tenants",
    "tenant_days",
    "cost",
    "requests",
    "refusals",
    "day_p50",
    "day_p90",
    "day_p99",
    "tenant_p50",
    "tenant_p90",
    "tenant_p99",
    "price_per_month",
    "price_for_period",
    "revenue",
    "margin",
    "margin_p90",
    "unprofitable_tenants",
)


def report_csv(report: SpendReport) -> str:
    """One CSV table: a ``plan`` row per plan, then a ``top`` row per top spender."""
    data = report_json(report)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for p in data["plans"]:
        writer.writerow({"section": "plan", **p})
    for s in data["top"]:
        writer.writerow({"section": "top", **s, "price_for_period": s["price"]})
    return out.getvalue()


def _usd(amount: Decimal | None, places: int = 2) -> str:
    if amount is None:
        return "-"
    return format_usd_rounded(amount, places)


def _usd_n(nanos: int) -> str:
    amount = from_nanos(nanos)
    return _usd(amount, 4 if 0 < abs(amount) < 1 else 2)


def render_table(report: SpendReport, console: Any) -> None:
    """Print the report as Rich tables on ``console`` (a ``rich.console.Console``).

    Raises ``MissingExtra`` without Rich (``pip install 'tokenfence-asgi[cli]'``).
    """
    try:
        from rich import box
        from rich.markup import escape
        from rich.table import Table
    except ImportError as exc:
        raise MissingExtra("Rich", "cli", needed_for="render_table", module=exc.name) from exc

    def table(title: str) -> Table:
        return Table(
            title=title,
            title_justify="left",
            box=box.SIMPLE_HEAD,
            header_style="bold",
            pad_edge=False,
        )

    console.print(
        f"[bold]Spend {report.start} to {report.end}[/] ({report.days} days): "
        f"{report.tenants:,} tenants, {report.tenant_days:,} tenant-days, "
        f"{_usd(report.cost)} over {report.requests:,} calls, {report.refusals:,} refusals."
    )
    if report.top_decile_share is not None:
        console.print(
            f"The top 10% of tenants ({max(1, math.ceil(report.tenants / 10))}) spent "
            f"{_usd_n(report.top_decile_nanos)}, {report.top_decile_share}% of the total."
        )

    plans = table("Spend and margin per plan")
    heads = (
        "plan",
        "tenants",
        "spend",
        "refusals",
        "p50\nday",
        "p90\nday",
        "p99\nday",
        "price\n/month",
        "p50\ntenant",
        "p90\ntenant",
        "margin\nat p90",
        "margin\ntotal",
        "losing\ntenants",
    )
    for head in heads:
        plans.add_column(head, justify="left" if head == "plan" else "right", no_wrap=True)
    for p in report.plans:
        margin_p90 = p.margin_at(90)
        style = "red" if margin_p90 is not None and margin_p90 < 0 else ""
        total = _usd(p.margin)
        if p.margin_pct is not None:
            total += f" ({p.margin_pct}%)"
        plans.add_row(
            escape(p.plan),
            f"{p.tenants:,}",
            _usd(p.cost),
            f"{p.refusals:,}",
            _usd_n(p.day_p50),
            _usd_n(p.day_p90),
            _usd_n(p.day_p99),
            _usd(p.price_per_month),
            _usd_n(p.tenant_p50),
            _usd_n(p.tenant_p90),
            f"[{style}]{_usd(margin_p90)}[/]" if style else _usd(margin_p90),
            total,
            "-" if p.unprofitable is None else f"{p.unprofitable:,}",
        )
    console.print(plans)
    if any(p.price_per_month is not None for p in report.plans):
        console.print(
            f"Prices prorated to {report.days} days (a month is {MONTH_DAYS} days); day columns:"
            " spend per tenant-day, tenant columns: spend per tenant over the period.",
            style="dim",
        )

    top = table(f"Top {len(report.top)} spenders")
    for head in ("#", "tenant", "plan", "spend", "share", "calls", "refusals", "days", "margin"):
        left = head in ("tenant", "plan")
        top.add_column(head, justify="left" if left else "right", no_wrap=True)
    for rank, s in enumerate(report.top, 1):
        share = "-" if report.cost_nanos == 0 else f"{100 * s.cost_nanos / report.cost_nanos:.1f}%"
        margin = s.margin
        shown = _usd(margin)
        if margin is not None and margin < 0:
            shown = f"[red]{shown}[/]"
        top.add_row(
            str(rank),
            escape(s.tenant_id),
            escape(s.plan),
            _usd(s.cost),
            share,
            f"{s.requests:,}",
            f"{s.refusals:,}",
            str(s.days),
            shown,
        )
    console.print(top)
