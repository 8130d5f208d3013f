"""`Tally`: per-tenant counters that several server instances can add to.

A fair-share counter changes in two ways only: a charge adds to it (a refund is a negative
charge) and a returning tenant is lifted to a floor (`FairShare.program_started`). Any sequence
of those is one map `c -> max(c + add, floor)` (composition keeps that form), so what an
instance did since it last exchanged is one `(add, floor)` pair per tenant, which a shared store
applies atomically to the shared value whatever other instances applied meanwhile
(`legato.server.store.redis_fair_share`). Locally a value is the shared value last seen with
the pending pair applied. Unshared (one process, the default) it is a plain dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

NO_FLOOR = -math.inf

Op = tuple[float, float]  # (add, floor): c -> max(c + add, floor)
_IDENTITY: Op = (0.0, NO_FLOOR)


def then(first: Op, second: Op) -> Op:
    """`second` applied after `first`, as one op."""
    a1, f1 = first
    a2, f2 = second
    return a1 + a2, max(f1 + a2, f2)


def apply(op: Op, value: float) -> float:
    return max(value + op[0], op[1])


class Tally:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.shared = False  # set by the exchange: record what changes, to push it
        self._pending: dict[str, Op] = {}

    def get(self, tenant: str, default: float = 0.0) -> float:
        return self.values.get(tenant, default)

    def __getitem__(self, tenant: str) -> float:
        return self.values[tenant]

    def add(self, tenant: str, amount: float) -> None:
        self.values[tenant] = self.values.get(tenant, 0.0) + amount
        if self.shared:
            self._pending[tenant] = then(self._pending.get(tenant, _IDENTITY), (amount, NO_FLOOR))

    def lift(self, tenant: str, floor: float) -> None:
        """Raise the tenant's counter to at least `floor`."""
        self.values[tenant] = max(self.values.get(tenant, 0.0), floor)
        if self.shared:
            self._pending[tenant] = then(self._pending.get(tenant, _IDENTITY), (0.0, floor))

    # -- several instances ------------------------------------------------------------------
    def take(self) -> dict[str, Op]:
        """What changed here since the last exchange (now counted as pushed)."""
        ops, self._pending = self._pending, {}
        return ops

    def push_failed(self, ops: Mapping[str, Op]) -> None:
        """`take`'s ops did not reach the store: they come before what was recorded since."""
        for tenant, op in ops.items():
            self._pending[tenant] = then(op, self._pending.get(tenant, _IDENTITY))

    def adopt(self, shared: Mapping[str, float]) -> None:
        """Every instance's values (this one's pushed ops included), plus what changed here
        since the push."""
        for tenant, value in shared.items():
            self.values[tenant] = apply(self._pending.get(tenant, _IDENTITY), value)


__all__ = ["NO_FLOOR", "Op", "Tally", "apply", "then"]
