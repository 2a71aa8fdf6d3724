"""Reading what the scripts wrote: a tenant's status, daily usage, the tenants and the ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import date, datetime
from decimal import Decimal

from tokenfence_asgi.engine.commits import CommitQueue
from tokenfence_asgi.engine.routing import Route, Router
from tokenfence_asgi.errors import InvalidId, StoreUnavailable
from tokenfence_asgi.money import from_nanos
from tokenfence_asgi.results import DailyUsage, TenantStatus, UsageRecord
from tokenfence_asgi.store import codecs
from tokenfence_asgi.store.client import STORE_ERRORS
from tokenfence_asgi.store.keys import OWN, decode_id, encode_id, validate_id
from tokenfence_asgi.store.ledger import (
    LedgerKeys,
    day_number,
    parse_days,
    read_stream,
    read_streams,
    scan_keys,
    tag_pool,
    trimmed_counts,
)

__all__ = ["UsageMethods", "UsageReader"]

_PAGE = 1000  # ledger records read per round trip when iterating


def _date_range(start: date, end: date) -> tuple[int, int]:
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, date):
            raise TypeError(f"{name} must be a date, got {type(value).__name__}")
    first, last = day_number(start), day_number(end)
    if last < first:
        raise ValueError(f"end {end} is before start {start}")
    return first, last


def _count(count: object) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100_000:
        raise ValueError(f"count must be an int in [1, 100000], got {count!r}")
    return count


class UsageReader:
    """Status, usage and ledger reads of one fence (see ``TokenFence``)."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.settings = router.settings
        self.store = router.store
        self.keys = router.keys
        self.ledger_keys = LedgerKeys(router.keys.prefix)

    # -- status --------------------------------------------------------------------------------

    async def status(self, tenant_id: str) -> TenantStatus:
        tenant = validate_id(tenant_id, what="tenant_id")
        router, settings = self.router, self.settings

        def build(route: Route) -> codecs.Call:
            return codecs.status_call(
                route.keys,
                now=router.now_arg(),
                default_plan=settings.default_plan,
                reclaim=settings.reclaim_arg,
                record_ttl=settings.record_ttl_arg,
                location=route.location,
                plan=route.plan_name,
                pool_plan=route.pool_plan_name,
                specs=route.specs(),
            )

        reply, route = await router.call("status", encode_id(tenant), build)
        switches = await router.global_switches()
        return codecs.status_reply(
            reply,
            tenant=tenant,
            plan=route.plan,
            pool_plan=route.pool_plan,
            in_pool=route.keys.pool_state is not None,
            pool=route.pool,
            killed_globally="k" in switches,
        )

    async def stored_plan(self, tenant_id: str) -> str:
        """The name of the tenant's plan as the store has it (one status read)."""
        return (await self.status(tenant_id)).plan

    async def ping(self) -> None:
        keys = self.keys.tenant("%00ping")  # no validated id encodes to this
        now = self.router.now_arg()
        await self.router.run(
            "status", *codecs.ping_call(keys, now=now, default_plan=self.settings.default_plan)
        )

    # -- daily usage ---------------------------------------------------------------------------

    async def usage(self, tenant_id: str, start: date, end: date) -> list[DailyUsage]:
        tenant = validate_id(tenant_id, what="tenant_id")
        first, last = _date_range(start, end)

        def build(route: Route) -> codecs.Call:
            return codecs.usage_call(route.keys, route.location)

        reply, route = await self.router.call("usage", encode_id(tenant), build)
        return codecs.usage_days(reply, tenant, route.pool, first, last)

    async def daily_usage(self, start: date, end: date) -> AsyncIterator[DailyUsage]:
        first, last = _date_range(start, end)
        client = self.store.client
        batch: list[tuple[str, str, str]] = []

        async def flush() -> list[DailyUsage]:
            pipe = client.pipeline(transaction=False)
            for key, _, _ in batch:
                pipe.hget(key[:-1] + "s", "loc")
                pipe.hgetall(key)
            try:
                replies = await pipe.execute()
            except STORE_ERRORS as exc:
                raise StoreUnavailable(f"budget store unavailable: {exc}") from exc
            out: list[DailyUsage] = []
            for k, (_, location, tenant_enc) in enumerate(batch):
                moved_away, flat = replies[2 * k], replies[2 * k + 1]
                if moved_away is not None or not flat:
                    continue  # the tenant moved on: its days are where it lives now
                pairs = [x for item in flat.items() for x in item]
                out += parse_days(pairs, decode_id(tenant_enc), tag_pool(location), first, last)
            batch.clear()
            return out

        async for key in scan_keys(client, self.ledger_keys.days_pattern, "hash"):
            parsed = self.ledger_keys.days_key(key)
            if parsed is None:
                continue
            batch.append((key, *parsed))
            if len(batch) >= 200:
                for usage in await flush():
                    yield usage
        if batch:
            for usage in await flush():
                yield usage

    async def top_spenders(self, start: date, end: date, n: int) -> list[tuple[str, Decimal]]:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        totals: dict[str, int] = {}
        async for day in self.daily_usage(start, end):
            totals[day.tenant_id] = totals.get(day.tenant_id, 0) + day.cost_nanos
        ranked = sorted((t for t in totals.items() if t[1] > 0), key=lambda t: (-t[1], t[0]))
        return [(tenant, from_nanos(nanos)) for tenant, nanos in ranked[:n]]

    # -- tenants -------------------------------------------------------------------------------

    async def tenants(self) -> AsyncIterator[str]:
        async for key in scan_keys(self.store.client, self.ledger_keys.state_pattern, "hash"):
            tenant = self.ledger_keys.tenant_of_state(key)
            if tenant is None:
                continue
            try:
                validate_id(tenant)
            except InvalidId:
                continue  # not a tenant's (the readiness probe's key)
            yield tenant

    async def has_tenant(self, tenant_id: str) -> bool:
        tenant_enc = encode_id(validate_id(tenant_id, what="tenant_id"))
        return bool(await self.store.hgetall(self.keys.tenant(tenant_enc).state))

    # -- the ledger ----------------------------------------------------------------------------

    async def ledger_streams(self) -> AsyncIterator[str]:
        pattern = self.ledger_keys.stream_pattern
        async for key in scan_keys(self.store.client, pattern, "stream"):
            if self.ledger_keys.stream_location(key) is not None:
                yield key

    def _location(self, stream: str) -> str:
        location = self.ledger_keys.stream_location(stream)
        if location is None:
            raise ValueError(f"not a ledger stream of prefix {self.keys.prefix!r}: {stream!r}")
        return location

    async def read_ledger(self, stream: str, after: str, count: int) -> list[UsageRecord]:
        location = self._location(stream)
        return await read_stream(self.store.client, stream, location, after, _count(count))

    async def read_ledgers(
        self, cursors: Sequence[tuple[str, str]], count: int
    ) -> list[list[UsageRecord]]:
        located = [(stream, self._location(stream), after) for stream, after in cursors]
        return await read_streams(self.store.client, located, _count(count))

    async def ledger_trimmed(self, streams: Sequence[str]) -> dict[str, int]:
        for stream in streams:
            self._location(stream)
        return await trimmed_counts(self.store.client, streams)

    async def usage_records(
        self, tenant_id: str | None, start: datetime | None, end: datetime | None
    ) -> AsyncIterator[UsageRecord]:
        tenant = None if tenant_id is None else validate_id(tenant_id, what="tenant_id")
        own = None if tenant is None else self.keys.tenant(encode_id(tenant)).tag + "l"
        async for stream in self.ledger_streams():
            if (
                tenant is not None
                and stream != own
                and self.ledger_keys.stream_location(stream) == OWN
            ):
                continue  # another tenant's own stream
            after = "0"
            while True:
                records = await self.read_ledger(stream, after, _PAGE)
                for record in records:
                    if tenant is not None and record.tenant_id != tenant:
                        continue
                    if start is not None and record.timestamp < start:
                        continue
                    if end is not None and record.timestamp >= end:
                        continue
                    yield record
                if len(records) < _PAGE:
                    break
                after = records[-1].entry_id


class UsageMethods:
    """``TokenFence``'s methods that read usage: status, daily usage, tenants, the ledger.

    A mixin of the facade (as redis-py's command mixins are of its client): each method hands
    the call to the fence's ``UsageReader``.
    """

    __slots__ = ()

    _usage: UsageReader
    commits: CommitQueue

    # -- status and usage ----------------------------------------------------------------------

    async def status(self, tenant_id: str) -> TenantStatus:
        """The tenant's plan, pool, kill switches, open holds and every window of its plans.

        Commits this fence queued before the call land first (``commit_soon``).
        """
        await self.commits.flush()
        return await self._usage.status(tenant_id)

    async def ping(self) -> None:
        """Readiness check: runs a script (not PING), so a lost script cache is caught too.

        Raises ``StoreUnavailable`` when the store cannot be reached.
        """
        await self._usage.ping()

    async def usage(self, tenant_id: str, start: date, end: date) -> list[DailyUsage]:
        """The tenant's daily usage from ``start`` to ``end`` (UTC days, inclusive), by day.

        Days without any commit, refusal or release are left out. The counters are written by
        the same scripts as the charges, so they are exact; they are kept ``usage_days``.
        """
        return await self._usage.usage(tenant_id, start, end)

    def daily_usage(self, start: date, end: date) -> AsyncIterator[DailyUsage]:
        """Every tenant's daily usage from ``start`` to ``end`` (inclusive), tenant by tenant.

        Scans the store (every primary of a cluster): meant for reports and admin pages, not
        for a request path. A tenant whose move between pools is under way may be missing.
        """
        return self._usage.daily_usage(start, end)

    async def top_spenders(self, start: date, end: date, n: int = 10) -> list[tuple[str, Decimal]]:
        """The ``n`` tenants that spent the most from ``start`` to ``end`` (inclusive), with
        their spend, highest first (ties by tenant id). Tenants that spent nothing are left out.
        """
        return await self._usage.top_spenders(start, end, n)

    def tenants(self) -> AsyncIterator[str]:
        """The ids of every tenant the store has state for, in no particular order.

        Scans the store (every primary of a cluster); each tenant once.
        """
        return self._usage.tenants()

    async def has_tenant(self, tenant_id: str) -> bool:
        """Whether the store has state for the tenant (what ``tenants()`` lists): it reserved, or
        was given a plan, a pool or a kill switch. ``status`` and ``revive`` create none.

        One read of the tenant's own key; for operator tools that must not act on a typo.
        """
        return await self._usage.has_tenant(tenant_id)

    # -- the usage ledger ----------------------------------------------------------------------

    def ledger_streams(self) -> AsyncIterator[str]:
        """The keys of every usage ledger stream (one per tenant on its own, one per pool)."""
        return self._usage.ledger_streams()

    async def read_ledger(
        self, stream: str, after: str = "0", count: int = 1000
    ) -> list[UsageRecord]:
        """Up to ``count`` records of one ledger stream, oldest first, after entry id ``after``.

        ``after`` is a record's ``entry_id`` (``"0"``: from the start); the exporter's cursor.
        """
        return await self._usage.read_ledger(stream, after, count)

    def usage_records(
        self,
        *,
        tenant_id: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> AsyncIterator[UsageRecord]:
        """The ledger's records (still retained), stream by stream, oldest first in each.

        Optionally only one tenant's (from every stream it wrote to, pools included) and only
        those with ``start <= timestamp < end``. Scans the store: for reports and exports.
        """
        return self._usage.usage_records(tenant_id, start, end)

    async def read_ledgers(
        self, cursors: Sequence[tuple[str, str]], count: int = 1000
    ) -> list[list[UsageRecord]]:
        """``read_ledger`` for many ``(stream, after)`` cursors in one round trip, in order."""
        return await self._usage.read_ledgers(cursors, count)

    async def ledger_trimmed(self, streams: Sequence[str]) -> dict[str, int]:
        """How many entries each ledger stream has lost to trimming (``ledger_retention`` /
        ``ledger_maxlen``) since it was created. Needs Redis 7.0; streams gone since they were
        listed, and every stream on an older Redis, are left out."""
        return await self._usage.ledger_trimmed(streams)
