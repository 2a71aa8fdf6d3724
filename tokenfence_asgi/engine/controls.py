"""Operator controls: plans, pools, moves between them, and the kill switches."""

from __future__ import annotations

import math
import uuid

import structlog

from tokenfence_asgi.engine.routing import HOPS, Route, Router
from tokenfence_asgi.errors import ConfigError, Contended, UnknownPlan
from tokenfence_asgi.store import codecs
from tokenfence_asgi.store.keys import OWN, decode_id, encode_id, validate_id

__all__ = ["Controls"]

log = structlog.get_logger("tokenfence_asgi")


class Controls:
    """What an operator changes in the store: plans, pools and switches (see ``TokenFence``)."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.settings = router.settings
        self.keys = router.keys
        self.store = router.store

    def _known_plan(self, plan: str) -> None:
        if plan not in self.settings.plans:
            raise UnknownPlan(plan, tuple(self.settings.plans))

    # -- plans ---------------------------------------------------------------------------------

    async def set_plan(self, tenant_id: str, plan: str) -> None:
        tenant_enc = encode_id(validate_id(tenant_id, what="tenant_id"))
        self._known_plan(plan)
        await self._admin(tenant_enc, "set_plan", plan)
        self.router.remember(self.router.tenant_plans, tenant_enc, plan)

    async def set_pool_plan(self, pool: str, plan: str) -> None:
        pool_enc = encode_id(validate_id(pool, what="pool"))
        self._known_plan(plan)
        call = codecs.admin_other_call(self.keys.pool_state(pool_enc), "set_plan", plan)
        await self.router.run("admin", *call)
        self.router.remember(self.router.pool_plans, pool_enc, plan)

    async def _admin(self, tenant_enc: str, op: str, arg: str) -> None:
        def build(route: Route) -> codecs.Call:
            return codecs.admin_tenant_call(route.keys, op, arg, route.location)

        await self.router.call("admin", tenant_enc, build)

    # -- pools ---------------------------------------------------------------------------------

    async def set_pool(self, tenant_id: str, pool: str | None, plan: str | None) -> None:
        tenant_enc = encode_id(validate_id(tenant_id, what="tenant_id"))
        target = OWN if pool is None else encode_id(validate_id(pool, what="pool"))
        if plan is not None:
            if pool is None:
                raise ConfigError("set_pool(..., plan=...) needs a pool")
            await self.set_pool_plan(pool, plan)
        elif pool is not None:
            known = await self.store.hget(self.keys.pool_state(target), "plan")
            if known is None:
                raise ConfigError(f"pool {pool!r} has no plan yet: pass plan=")
        own = self.keys.tenant(tenant_enc)
        directory = await self.store.hgetall(own.state)
        if "mvid" in directory:  # a move that was interrupted: finish it first
            await self._move(tenant_enc, directory["mvfrom"], directory["mvto"], directory["mvid"])
        source = await self.store.hget(own.state, "loc") or OWN
        if source != target:
            await self._move(tenant_enc, source, target, uuid.uuid4().hex)
        self.router.remember(self.router.locations, tenant_enc, target)
        log.info("tenant_moved", tenant=tenant_id, pool=pool)

    async def _move(self, tenant_enc: str, source: str, target: str, move_id: str) -> None:
        """Move a tenant from ``source`` to ``target`` in idempotent steps (see store/lua/move.lua).

        The own tag records the move first, so a move interrupted at any step is resumed with
        the same id (every step is idempotent for it) by the next ``set_pool``.
        """
        run = self.router.run
        own = self.keys.tenant(tenant_enc)
        for _ in range(HOPS):
            if source == target:
                return
            await run("move", *codecs.move_call(own, "begin", tenant_enc, target, move_id, source))
            keys = self.keys.tenant(tenant_enc, source)
            dump = await run(
                "move", *codecs.move_call(keys, "out", tenant_enc, target, move_id, source)
            )
            moved = codecs.moved_to(dump)
            if moved is not None:  # an earlier move went elsewhere: follow it
                source = moved
                continue
            dest = self.keys.tenant(tenant_enc, target)
            state = codecs.move_dump(dump)
            await run(
                "move", *codecs.move_call(dest, "in", tenant_enc, source, move_id, target, state)
            )
            if OWN not in (source, target):
                await run("move", *codecs.move_call(own, "point", tenant_enc, target, move_id, OWN))
            ttl = [self.settings.record_ttl_arg]
            await run(
                "move", *codecs.move_call(keys, "drop", tenant_enc, target, move_id, source, ttl)
            )
            await run("move", *codecs.move_call(own, "end", tenant_enc, target, move_id, OWN))
            return
        raise Contended("the tenant kept moving during set_pool; try again")

    # -- kill switches -------------------------------------------------------------------------

    async def switch(self, op: str, tenant_id: str | None, feature: str | None) -> None:
        """``kill`` or ``revive`` a tenant, a tenant's feature, or (no tenant) everyone."""
        field = "k"
        if feature is not None:
            field = f"k:{encode_id(validate_id(feature, what='feature'))}"
        if tenant_id is None:
            call = codecs.admin_other_call(self.keys.global_switches, op, field)
            await self.router.run("admin", *call)
            self.router.switches_read_at = -math.inf
        else:
            await self._admin(encode_id(validate_id(tenant_id, what="tenant_id")), op, field)

    async def global_switches(self) -> tuple[bool, tuple[str, ...]]:
        fields = await self.router.global_switches()
        features = tuple(sorted(decode_id(f[2:]) for f in fields if f.startswith("k:")))
        return "k" in fields, features

    async def tenant_switch(self, tenant_id: str) -> bool:
        """Whether the tenant's own kill switch is on, read from its state where it lives."""
        tenant_enc = encode_id(validate_id(tenant_id, what="tenant_id"))
        own = self.keys.tenant(tenant_enc)
        killed, location = await self.store.hmget(own.state, ["k", "loc"])
        if location:
            killed = await self.store.hget(self.keys.tenant(tenant_enc, location).state, "k")
        return killed is not None
