"""Observers: synchronous hooks the engine calls on every reservation, refusal and settlement.

Metrics exporters and audit logs subclass ``FenceObserver`` and override what they need; the
engine calls them inline, so they must be fast and must not block (count, do not send). An
observer that raises is logged and never fails the call.
"""

from __future__ import annotations

import structlog

from tokenfence_asgi.errors import TokenFenceError
from tokenfence_asgi.results import Reservation, Settlement

__all__ = ["FenceObserver", "Observers"]

log = structlog.get_logger("tokenfence_asgi")


class FenceObserver:
    """No-op base: override the events you care about."""

    def reserved(self, reservation: Reservation) -> None:
        """A reservation was granted (also a degraded one when the store was unreachable)."""

    def refused(self, error: TokenFenceError, tenant_id: str, feature: str | None) -> None:
        """A reserve was refused: budget, request limit or kill switch."""

    def committed(self, reservation: Reservation, settlement: Settlement) -> None:
        """A commit returned (``settlement.duplicate`` for a repeat, ``recorded`` False if lost)."""

    def released(self, reservation: Reservation, settlement: Settlement) -> None:
        """A release returned."""

    def script(self, name: str, seconds: float, ok: bool) -> None:
        """One store script ran for ``seconds`` (wall clock, round trip included)."""


class Observers:
    """The engine's fan-out to its observers; every call is guarded."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: tuple[FenceObserver, ...] = ()

    def add(self, observer: FenceObserver) -> None:
        if not isinstance(observer, FenceObserver):
            raise TypeError(f"observer must be a FenceObserver, got {type(observer).__name__}")
        self.items = (*self.items, observer)

    def remove(self, observer: FenceObserver) -> None:
        self.items = tuple(o for o in self.items if o is not observer)

    def reserved(self, reservation: Reservation) -> None:
        for o in self.items:
            try:
                o.reserved(reservation)
            except Exception:
                log.exception("observer_failed", observer=type(o).__name__, hook="reserved")

    def refused(self, error: TokenFenceError, tenant_id: str, feature: str | None) -> None:
        for o in self.items:
            try:
                o.refused(error, tenant_id, feature)
            except Exception:
                log.exception("observer_failed", observer=type(o).__name__, hook="refused")

    def committed(self, reservation: Reservation, settlement: Settlement) -> None:
        for o in self.items:
            try:
                o.committed(reservation, settlement)
            except Exception:
                log.exception("observer_failed", observer=type(o).__name__, hook="committed")

    def released(self, reservation: Reservation, settlement: Settlement) -> None:
        for o in self.items:
            try:
                o.released(reservation, settlement)
            except Exception:
                log.exception("observer_failed", observer=type(o).__name__, hook="released")

    def script(self, name: str, seconds: float, ok: bool) -> None:
        for o in self.items:
            try:
                o.script(name, seconds, ok)
            except Exception:
                log.exception("observer_failed", observer=type(o).__name__, hook="script")
