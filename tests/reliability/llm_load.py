"""A worker process serving the full stack: uvicorn + TokenFenceMiddleware + the LiteLLM callback
+ a fake OpenAI-compatible provider, driven by its own concurrent HTTP clients.

Used by ``test_overspend.py``. Each phase (the provider under- or over-running the estimate)
spends one tenant's budget until every caller has been refused; an observer on the fence
records every reservation (with the time its reserve script was sent and answered) and every
settlement, which the parent lines up across processes.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from tokenfence_asgi.config import Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.engine.observe import FenceObserver
from tokenfence_asgi.errors import TokenFenceError
from tokenfence_asgi.money import to_nanos
from tokenfence_asgi.results import Reservation, Settlement

__all__ = ["MSGS", "PHASES", "llm_worker"]

MSGS = [{"role": "user", "content": "Say hello."}]
MAX_TOKENS = 50
# Usage the fake provider reports per phase: "under" bills less than the hold (5 prompt tokens
# where ~10 were counted, the 50 output tokens the hold allows), "over" bills 1000 prompt tokens.
PHASES = {"under": (5, MAX_TOKENS), "over": (1000, MAX_TOKENS)}


class Recorder(FenceObserver):
    """Every reservation and settlement, with monotonic times (one clock for all processes)."""

    def __init__(self) -> None:
        self.sent_at = 0.0
        # rid -> (amount nanos, script sent at, answered at)
        self.holds: dict[str, tuple[int, float, float]] = {}
        # rid -> (cost nanos charged, answered at, duplicate, recorded)
        self.settlements: dict[str, tuple[int, float, bool, bool]] = {}
        self.refusals = 0

    def script(self, name: str, seconds: float, ok: bool) -> None:
        if name == "reserve":  # called just before reserved(), in the same task, no await between
            self.sent_at = time.monotonic() - seconds

    def reserved(self, reservation: Reservation) -> None:
        self.holds[reservation.id] = (reservation.amount_nanos, self.sent_at, time.monotonic())

    def refused(self, error: TokenFenceError, tenant_id: str, feature: str | None) -> None:
        self.refusals += 1

    def committed(self, reservation: Reservation, settlement: Settlement) -> None:
        self.settlements[reservation.id] = (
            to_nanos(settlement.cost),
            time.monotonic(),
            settlement.duplicate,
            settlement.recorded,
        )

    def released(self, reservation: Reservation, settlement: Settlement) -> None:
        self.settlements.setdefault(reservation.id, (0, time.monotonic(), False, True))


async def _run(
    url: str,
    prefix: str,
    plan: Plan,
    tenants: dict[str, str],
    callers: int,
    ready: Any,
    go: dict[str, Any],
) -> dict[str, Any]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import httpx
    import litellm
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    from tests.e2e.fake_provider import FakeProvider
    from tests.reliability.servers import serve
    from tokenfence_asgi.endpoints import feature
    from tokenfence_asgi.litellm import TokenFenceCallback
    from tokenfence_asgi.web.middleware import TokenFenceMiddleware

    fence = TokenFence(
        redis_url=url, prefix=prefix, plans=[plan], default_plan=plan.name, timeout_s=5
    )
    recorders = {phase: Recorder() for phase in PHASES}
    current: list[Recorder] = []

    class Switch(FenceObserver):  # forwards to the running phase's recorder
        def script(self, name: str, seconds: float, ok: bool) -> None:
            current[-1].script(name, seconds, ok)

        def reserved(self, reservation: Reservation) -> None:
            current[-1].reserved(reservation)

        def refused(self, error: TokenFenceError, tenant_id: str, feature: str | None) -> None:
            current[-1].refused(error, tenant_id, feature)

        def committed(self, reservation: Reservation, settlement: Settlement) -> None:
            current[-1].committed(reservation, settlement)

        def released(self, reservation: Reservation, settlement: Settlement) -> None:
            current[-1].released(reservation, settlement)

    fence.observe(Switch())
    callback = TokenFenceCallback(fence)
    litellm.callbacks = [callback]
    providers = {
        phase: FakeProvider(prompt_tokens=p, completion_tokens=c)
        for phase, (p, c) in PHASES.items()
    }
    provider_app = Starlette(
        routes=[Mount(f"/{phase}", app=p.app()) for phase, p in providers.items()]
    )
    provider_base: list[str] = []

    @feature("chat")
    async def chat(request: Request) -> JSONResponse:
        phase = request.path_params["phase"]
        response = await litellm.acompletion(
            model="gpt-4o-mini",
            messages=MSGS,
            max_tokens=MAX_TOKENS,
            api_base=f"{provider_base[0]}/{phase}/v1",
            api_key="sk-fake",
        )
        return JSONResponse({"model": response.model})

    app = Starlette(
        routes=[Route("/chat/{phase}", chat, methods=["POST"])],
        middleware=[Middleware(TokenFenceMiddleware, fence=fence)],
    )
    statuses: dict[str, dict[str, int]] = {}
    with serve(provider_app) as provider_url, serve(app) as base:
        provider_base.append(provider_url)
        limits = httpx.Limits(max_connections=callers + 5, max_keepalive_connections=callers + 5)
        async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
            for phase in PHASES:
                current.append(recorders[phase])
                counts: dict[str, int] = {}
                statuses[phase] = counts
                tenant = tenants[phase]
                ready.put(phase)
                if not await asyncio.to_thread(go[phase].wait, 600):
                    raise TimeoutError(f"phase {phase} was never started")

                async def caller(
                    phase: str = phase, tenant: str = tenant, counts: dict[str, int] = counts
                ) -> None:
                    while True:  # until refused
                        try:
                            r = await client.post(f"/chat/{phase}", headers={"X-Tenant-ID": tenant})
                        except httpx.TransportError as exc:
                            key = f"transport error: {type(exc).__name__}"
                            counts[key] = counts.get(key, 0) + 1
                            continue
                        key = str(r.status_code)
                        if r.status_code != 200:
                            key += ":" + str(r.json().get("error"))
                        counts[key] = counts.get(key, 0) + 1
                        if r.status_code != 200:
                            return

                await asyncio.gather(*(caller() for _ in range(callers)))
                recorder = recorders[phase]
                deadline = time.monotonic() + 60
                while set(recorder.settlements) != set(recorder.holds):
                    assert time.monotonic() < deadline, "calls left unsettled"
                    await asyncio.sleep(0.05)
    callback.close()
    return {
        "statuses": statuses,
        "provider_calls": {phase: p.calls for phase, p in providers.items()},
        "reserved": {phase: r.holds for phase, r in recorders.items()},
        "settled": {phase: r.settlements for phase, r in recorders.items()},
        "refused": {phase: r.refusals for phase, r in recorders.items()},
        "store_errors": fence.counters.store_errors,
    }


def llm_worker(
    url: str,
    prefix: str,
    plan: Plan,
    tenants: dict[str, str],
    callers: int,
    ready: Any,
    go: dict[str, Any],
    queue: Any,
) -> None:
    """Run every phase of ``PHASES`` in order: put the phase on ``ready``, wait for its ``go``
    event, spend; at the end put what it saw on ``queue``."""
    import warnings

    warnings.simplefilter("ignore")  # LiteLLM's own deprecation noise
    queue.put(asyncio.run(_run(url, prefix, plan, tenants, callers, ready, go)))
