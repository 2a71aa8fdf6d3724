"""The outage allowance: a little local spending per tenant while the store is unreachable.

With ``on_store_error="allowance"`` each fence instance lets a tenant spend up to
``outage_allowance`` dollars from a local counter while Redis cannot be reached, then refuses
with ``StoreUnavailable`` as the closed mode does. Reservations made this way are ``degraded``;
their commits are kept here and written back to Redis when it answers again, each as a commit of
an id the store never saw (charged once, marked late, recorded in the ledger), so nothing goes
unrecorded and a repeated write-back cannot charge twice. Once everything owed is written back,
the local counters start again from zero: Redis holds the spend and enforces the limits.

What a process owes is in its memory only: a process that dies during an outage loses what it
had not written back (logged when the fence is closed with spend still owed).
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenfence_asgi.results import Reservation

__all__ = ["Allowance", "Owed"]


@dataclass(frozen=True, slots=True)
class Owed:
    """A commit made while the store was unreachable, to be written back."""

    reservation: Reservation
    cost_nanos: int
    input_tokens: int
    output_tokens: int
    model: str | None
    request_id: str | None


class Allowance:
    """Local counters of one fence instance: per tenant, what was held or spent without the store.

    Not thread-safe, like the rest of a fence: use it from one event loop.
    """

    __slots__ = ("_holds", "_limit", "_owed", "_used")

    def __init__(self, per_tenant_nanos: int) -> None:
        self._limit = per_tenant_nanos
        self._used: dict[str, int] = {}
        self._holds: dict[str, int] = {}  # degraded reservation id -> nanos counted for it
        self._owed: dict[str, Owed] = {}

    @property
    def limit_nanos(self) -> int:
        return self._limit

    def used_nanos(self, tenant: str) -> int:
        """What the tenant held or spent locally since the store was last reached."""
        return self._used.get(tenant, 0)

    def take(self, reservation_id: str, tenant: str, nanos: int) -> bool:
        """Count a degraded hold of ``nanos``; False (nothing counted) when it does not fit."""
        used = self._used.get(tenant, 0)
        if used + nanos > self._limit:
            return False
        self._used[tenant] = used + nanos
        self._holds[reservation_id] = nanos
        return True

    def owe(self, owed: Owed) -> None:
        """Keep a commit the store could not take; its hold's count becomes the actual cost."""
        reservation = owed.reservation
        if reservation.id in self._owed:
            return  # a repeated commit: the first one is what is owed
        held = self._holds.pop(reservation.id, 0)
        tenant = reservation.tenant_id
        self._used[tenant] = max(0, self._used.get(tenant, 0) - held) + owed.cost_nanos
        self._owed[reservation.id] = owed

    def forget(self, reservation: Reservation) -> None:
        """A degraded hold released, or committed to the store directly: stop counting it."""
        held = self._holds.pop(reservation.id, None)
        if held is not None:
            tenant = reservation.tenant_id
            self._used[tenant] = max(0, self._used.get(tenant, 0) - held)

    @property
    def owed(self) -> bool:
        """Whether commits wait to be written back."""
        return bool(self._owed)

    def owed_nanos(self) -> int:
        return sum(o.cost_nanos for o in self._owed.values())

    def pending(self) -> list[Owed]:
        """What is owed, oldest first (it stays owed until ``written`` is called for it)."""
        return list(self._owed.values())

    def written(self, reservation_id: str) -> None:
        """One owed commit reached the store."""
        self._owed.pop(reservation_id, None)

    def recovered(self) -> None:
        """Everything owed is in the store: start counting from zero, bar open degraded holds."""
        if self._owed:
            return
        # A degraded hold still open is settled later through the store (as an unknown id) or
        # dropped on release; it no longer needs the local counter.
        self._used.clear()
        self._holds.clear()
