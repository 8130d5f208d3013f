"""Weighted virtual token counters (VTC) across tenants, charged at program granularity.

Why counters and not quotas: a backlogged tenant should get service in proportion to its weight,
and a tenant that was away should not come back with a hoard of credit (nor be punished for
having been away). VTC (Sheng et al., OSDI'24) does both: each tenant's counter grows by
`(w_in * input + w_out * output) / weight` as its calls finish; the tenant with the smallest
counter goes first; a tenant that becomes active again has its counter lifted to the minimum of
the active tenants. Legato applies it when choosing which *program* to admit next (SAGA's
Agent Fair Share idea: agents are scheduled as wholes, so the lever is program admission).

Tenants are few (tens), programs many: the per-event cost is O(active tenants) at most.
Both counters are `Tally`s, so instances on one store can share them (`Tally.shared`): a
tenant's service on one instance then counts on every other.
"""

from __future__ import annotations

from collections.abc import Mapping

from legato.scheduler.tally import Tally

W_IN, W_OUT = 1.0, 2.0  # the same cost the bench metrics charge


class FairShare:
    def __init__(
        self, weights: Mapping[str, float] | None = None, *, w_in: float = W_IN, w_out: float = W_OUT
    ) -> None:
        for tenant, w in (weights or {}).items():
            if not w > 0 or w != w:
                raise ValueError(f"tenant weight must be > 0, got {w!r} for tenant {tenant!r}")
        self.weights = dict(weights or {})
        self.w_in = w_in
        self.w_out = w_out
        self.counters = Tally()
        # Service actually delivered per unit weight (no prepay): what the call-level gate
        # equalizes between tenants whose calls share an engine.
        self.served = Tally()
        self._active: dict[str, int] = {}  # tenant -> programs it has in the system

    def set_weight(self, tenant: str, weight: float) -> None:
        if not weight > 0 or weight != weight:
            raise ValueError(f"tenant weight must be > 0, got {weight!r} for tenant {tenant!r}")
        self.weights[tenant] = weight

    def weight(self, tenant: str) -> float:
        return self.weights.get(tenant, 1.0)

    def counter(self, tenant: str) -> float:
        return self.counters.get(tenant, 0.0)

    def active_min(self) -> float | None:
        if not self._active:
            return None
        return min(self.counters.get(t, 0.0) for t in self._active)

    def program_started(self, tenant: str) -> None:
        """A tenant's program entered the system; a returning tenant is lifted to the minimum."""
        n = self._active.get(tenant, 0)
        if n == 0:
            floor = self.active_min()
            if floor is not None:
                self.counters.lift(tenant, floor)
                self.served.lift(tenant, min(self.served.get(t, 0.0) for t in self._active))
        self._active[tenant] = n + 1

    def program_finished(self, tenant: str) -> None:
        n = self._active.get(tenant, 0) - 1
        if n <= 0:
            self._active.pop(tenant, None)
        else:
            self._active[tenant] = n

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        return self.w_in * input_tokens + self.w_out * output_tokens

    def charge(self, tenant: str, input_tokens: float, output_tokens: float, prepaid: float = 0.0) -> float:
        """Charge a call's tokens, drawing first on `prepaid` (cost already charged when the
        program was admitted); returns what is left of `prepaid`."""
        cost = self.cost(input_tokens, output_tokens)
        used = min(prepaid, cost)
        if cost > used:
            self.counters.add(tenant, (cost - used) / self.weight(tenant))
        return prepaid - used

    def serve(self, tenant: str, input_tokens: float, output_tokens: float) -> None:
        """Record delivered service (prompt at dispatch, output when known)."""
        cost = self.cost(input_tokens, output_tokens)
        self.served.add(tenant, cost / self.weight(tenant))

    def prepay(self, tenant: str, cost: float) -> float:
        """Charge a program's predicted cost when it is admitted, so the next admission already
        sees the service this one commits to (counters that only grow as calls finish lag behind
        admissions, and a burst of admissions overshoots one tenant's share)."""
        cost = max(0.0, cost)
        self.counters.add(tenant, cost / self.weight(tenant))
        return cost

    def refund(self, tenant: str, prepaid: float) -> None:
        """Give back prepaid cost a program did not use (it finished early or was paused)."""
        if prepaid > 0:
            self.counters.add(tenant, -prepaid / self.weight(tenant))

    def pick(self, tenants: list[str]) -> str:
        """The tenant to serve next among `tenants`: smallest counter, then name."""
        if not tenants:
            raise ValueError("pick() needs at least one tenant")
        return min(tenants, key=lambda t: (self.counters.get(t, 0.0), t))
