"""The demo's scripted story, told on a console while it happens against the running app.

Every tenant is served; then the burner's agent is told to "analyse everything" until the fence
downgrades it and then refuses it with a 402, while the other tenants are still served.
"""

import asyncio
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tokenfence_asgi.cli.demo.app import BURNER, TENANTS
from tokenfence_asgi.cli.options import usd
from tokenfence_asgi.config import Plan
from tokenfence_asgi.engine.fence import TokenFence

__all__ = ["HELLO", "Scenario", "plans_table"]

HELLO = "Hello"
"""The short question of the scenario and of the printed curl line."""

_WORKERS = 4  # the agent's concurrent calls
_MAX_BURN_CALLS = 400  # the starter plan refuses long before; a guard against a broken fence
_WORDS = (
    "revenue",
    "margin",
    "contract",
    "renewal",
    "churn",
    "forecast",
    "supplier",
    "liability",
    "clause",
    "quarter",
    "region",
    "pipeline",
    "headcount",
    "discount",
    "warranty",
    "audit",
    "exposure",
    "invoice",
    "backlog",
    "capacity",
    "pricing",
)


@dataclass
class _Reply:
    tenant: str
    path: str
    status: int
    body: dict[str, Any]

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def cost(self) -> Decimal:
        return Decimal(str(self.body.get("cost_usd", "0")))


def _dollars(amount: Decimal) -> str:
    """``$5``, ``$0.50``: cents only when there are some."""
    return usd(amount, 0 if amount == amount.to_integral_value() else 2)


def _chunk(number: int, length: int) -> str:
    """A deterministic piece of a long document, ``length`` characters."""
    words = [f"Section {number}:"]
    size = len(words[0])
    index = number
    while size < length:
        word = _WORDS[(index * 7 + size) % len(_WORDS)]
        words.append(word)
        size += len(word) + 1
        index += 1
    return " ".join(words)[:length]


class Scenario:
    """The scripted story, told on ``console`` while it happens against the running app."""

    def __init__(self, client: httpx.AsyncClient, fence: TokenFence, console: Console) -> None:
        self.client = client
        self.fence = fence
        self.console = console

    async def call(self, tenant: str, path: str, payload: dict[str, Any]) -> _Reply:
        response = await self.client.post(path, json=payload, headers={"X-Tenant-ID": tenant})
        return _Reply(tenant, path, response.status_code, response.json())

    async def spent(self, tenant: str) -> tuple[Decimal, Decimal]:
        """The tenant's committed spend and limit today, once its calls are settled."""
        for _ in range(400):  # a commit lands when LiteLLM's success event runs
            day = (await self.fence.status(tenant)).windows[0]
            if day.held == 0:
                break
            await asyncio.sleep(0.005)
        return day.used, day.limit or Decimal(0)

    async def round(self, calls: list[tuple[str, str, dict[str, Any]]]) -> list[_Reply]:
        """Make ``calls`` one after the other and show them as a table."""
        table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), header_style="bold")
        for column in ("tenant", "POST", "HTTP", "model or error", "cost", "spent today"):
            table.add_column(column, justify="right" if column == "cost" else "left", no_wrap=True)
        replies = []
        for tenant, path, payload in calls:
            reply = await self.call(tenant, path, payload)
            used, limit = await self.spent(tenant)
            replies.append(reply)
            if reply.status == 200:
                row = ["[green]200[/]", reply.model, usd(reply.cost, 6)]
            else:
                row = [f"[bold red]{reply.status}[/]", escape(str(reply.body.get("error"))), ""]
            table.add_row(tenant, path, *row, f"{usd(used, 4)} of {_dollars(limit)}")
        self.console.print(table)
        return replies

    async def run(self) -> bool:
        """Tell the whole story; whether it ended as it should."""
        c = self.console
        c.print("\n[bold]1. Every tenant asks something: all are served.[/]")
        reminder = {"message": "Draft a polite reminder for an overdue invoice."}
        risks = {"message": "List the risks in our supplier agreements."}
        first = await self.round(
            [
                ("acme", "/chat", {"message": "Summarise our refund policy in two lines."}),
                ("globex", "/chat", reminder),
                ("initech", "/search", {"query": "Which contracts renew this quarter?"}),
                ("umbrella", "/sdk/chat", risks),
            ]
        )
        c.print(
            "  (acme asked for gpt-4o, which the free plan does not have: downgraded; "
            "umbrella is served through fence.guard(AsyncOpenAI()), without LiteLLM)"
        )
        if any(reply.status != 200 for reply in first):
            return False
        if not await self.burn():
            return False
        c.print("\n[bold]3. Meanwhile, on the same app and the same store:[/]")
        last = await self.round(
            [
                ("acme", "/search", {"query": "What is our support email?"}),
                ("initech", "/document_analysis", {"document": _chunk(1, 3000)}),
                ("umbrella", "/sdk/chat", {"message": "Prepare the board summary."}),
                (BURNER, "/chat", {"message": HELLO}),
                (BURNER, "/sdk/chat", {"message": HELLO}),
            ]
        )
        return [reply.status for reply in last] == [200, 200, 200, 402, 402]

    async def burn(self) -> bool:
        """The burner's agent spends its day: gpt-4o, then downgraded, then refused."""
        c = self.console
        c.print(
            f"\n[bold]2. {BURNER}'s agent ({TENANTS[BURNER]} plan, $5.00 a day) is told to "
            f'"analyse everything":[/] {_WORKERS} workers send 4,700-character chunks to '
            "POST /document_analysis, asking gpt-4o for a full report on each."
        )
        replies: list[_Reply] = []
        refused: list[_Reply] = []
        numbers = iter(range(1, _MAX_BURN_CALLS + 1))

        async def worker() -> None:
            for number in numbers:
                if refused:
                    return
                payload = {"document": _chunk(number, 4700)}
                reply = await self.call(BURNER, "/document_analysis", payload)
                if reply.status != 200:
                    refused.append(reply)
                    return
                replies.append(reply)

        await asyncio.gather(*(worker() for _ in range(_WORKERS)))
        for model, count in Counter(r.model for r in replies).items():
            cost = sum((r.cost for r in replies if r.model == model), Decimal(0))
            note = "" if model == "gpt-4o" else "  downgraded: gpt-4o's worst case no longer fits"
            c.print(f"  {count:>3} reports by {model:<12} {usd(cost):>7}{note}")
        if not refused or refused[0].status != 402:
            c.print(f"[bold red]  {BURNER}'s agent was never refused with a 402[/]")
            return False
        c.print("  then [bold red]HTTP 402[/], the next report does not fit what is left:")
        c.print_json(data=refused[0].body)

        # The agent falls back to short questions, one at a time, until those are refused too.
        answered = 0
        for _ in range(_MAX_BURN_CALLS):
            await self.spent(BURNER)  # settled: a refusal now is final for the day
            reply = await self.call(BURNER, "/chat", {"message": HELLO})
            if reply.status != 200:
                break
            answered += 1
        used, limit = await self.spent(BURNER)
        c.print(
            f"  The agent falls back to short questions: {answered} answered, then HTTP "
            f"{reply.status}. {BURNER} spent {usd(used, 4)} of its {usd(limit)} day,"
            " and not a cent more."
        )
        return reply.status == 402


def plans_table(fence: TokenFence) -> Table:
    """The demo's tenants, their plans and those plans' limits."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("tenant", "plan", "per day", "per month", "requests/day", "models"):
        table.add_column(column)
    plans = fence.plans
    for tenant, name in TENANTS.items():
        plan: Plan = plans[name]
        day = next((lim for lim in plan.limits if lim.window == "1d"), None)
        month = next((lim for lim in plan.limits if lim.window == "1mo"), None)
        table.add_row(
            tenant,
            name,
            usd(day.max_cost) if day and day.max_cost else "-",
            usd(month.max_cost, 0) if month and month.max_cost else "-",
            f"{day.max_requests:,}" if day and day.max_requests else "-",
            ", ".join(plan.models) if plan.models else "all",
        )
    return table
