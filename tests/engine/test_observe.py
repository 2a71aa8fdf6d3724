"""Observers see every reservation, refusal, settlement and script, and never fail a call."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tokenfence_asgi import BudgetExceeded, FenceObserver, Plan, TokenFence
from tokenfence_asgi.errors import TokenFenceError
from tokenfence_asgi.results import Reservation, Settlement
from tokenfence_asgi.web.auth import bearer_token, token_matches


class Recorder(FenceObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def reserved(self, reservation: Reservation) -> None:
        self.events.append(("reserved", reservation.id))

    def refused(self, error: TokenFenceError, tenant_id: str, feature: str | None) -> None:
        self.events.append(("refused", (error.error_code, tenant_id, feature)))

    def committed(self, reservation: Reservation, settlement: Settlement) -> None:
        self.events.append(("committed", (reservation.id, settlement.cost, settlement.duplicate)))

    def released(self, reservation: Reservation, settlement: Settlement) -> None:
        self.events.append(("released", reservation.id))

    def script(self, name: str, seconds: float, ok: bool) -> None:
        assert seconds >= 0
        self.events.append(("script", (name, ok)))


class Broken(FenceObserver):
    def reserved(self, reservation: Reservation) -> None:
        raise RuntimeError("observer bug")


async def test_observer_sees_every_event(make_fence: Callable[..., TokenFence]) -> None:
    from tokenfence_asgi.config import Limit

    fence = make_fence(plans=[Plan("tiny", [Limit("1d", max_cost="0.10")])], default_plan="tiny")
    rec = fence.observe(Recorder())
    fence.observe(Broken())
    r1 = await fence.reserve("t1", "0.06", feature="chat")
    await fence.commit(r1, "0.05")
    await fence.commit(r1, "0.05")
    with pytest.raises(BudgetExceeded):
        await fence.reserve("t1", "0.06", feature="chat")
    r2 = await fence.reserve("t1", "0.01")
    await fence.release(r2)
    names = [e for e in rec.events if e[0] != "script"]
    from decimal import Decimal

    assert names == [
        ("reserved", r1.id),
        ("committed", (r1.id, Decimal("0.05"), False)),
        ("committed", (r1.id, Decimal("0.05"), True)),
        ("refused", ("ai_budget_exceeded", "t1", "chat")),
        ("reserved", r2.id),
        ("released", r2.id),
    ]
    scripts = [e[1] for e in rec.events if e[0] == "script"]
    assert scripts == [
        ("reserve", True),
        ("commit", True),
        ("commit", True),
        ("reserve", True),
        ("reserve", True),
        ("release", True),
    ]


def test_observe_rejects_other_objects() -> None:
    fence = TokenFence()
    with pytest.raises(TypeError, match="FenceObserver"):
        fence.observe(object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("Basic abc", None),
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_token_matches() -> None:
    assert token_matches("Bearer s3cret", "s3cret")
    assert not token_matches("Bearer s3cre", "s3cret")
    assert not token_matches("Bearer \udcff", "s3cret")
    assert not token_matches(None, "s3cret")
