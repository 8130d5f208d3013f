"""Call-level fair share: hold an admitted program's next call while its tenant is ahead.

Admission balances committed work between tenants at program granularity (`FairShare`), so
between admissions one tenant's programs can run ahead of its weight (their contexts are
longer, the other's wait on tools). The gate holds the next call of a tenant that leads, in
delivered service per weight, a backlogged tenant with calls on the engines by more than one
call's worth of service: the mean fair-share cost of a call over every program seen (learned
online; no gate before any call has finished). That is the granularity at which service can be
evened out at all: a smaller lead cannot be corrected by holding one call.

Work-conserving: nobody waits for a tenant that has nothing on the engines, deferred calls all
go when no call is on the engines, and none waits longer than a call takes on average
(measured from dispatch to finish; one policy tick before any has finished), so no cycle of
waits can stall a run.
"""

from __future__ import annotations

from collections.abc import Callable, Container

from legato.scheduler.fair_share import FairShare
from legato.scheduler.legato_run import Run


class FairGate:
    def __init__(
        self, fair: FairShare, lead_limit: Callable[[], float | None], max_wait_s: Callable[[], float]
    ) -> None:
        self.fair = fair
        self.lead_limit = lead_limit
        self.max_wait_s = max_wait_s
        self.on_engine: dict[str, int] = {}  # tenant -> its calls on an engine
        self._deferred: dict[str, list[str]] = {}  # tenant -> runs with deferred calls (FIFO)
        self._since: dict[str, float] = {}  # tenant -> when its oldest call was held

    def entered(self, tenant: str, calls: int = 1) -> None:
        if calls > 0:
            self.on_engine[tenant] = self.on_engine.get(tenant, 0) + calls

    def left(self, tenant: str) -> None:
        n = self.on_engine.get(tenant, 0) - 1
        if n <= 0:
            self.on_engine.pop(tenant, None)
        else:
            self.on_engine[tenant] = n

    def gated(self, tenant: str, waiting: Container[str]) -> bool:
        """Is the tenant ahead of a backlogged tenant with calls on the engines by more than
        the lead limit (see the module docstring)?"""
        if not self.on_engine:
            return False
        limit = self.lead_limit()
        if limit is None:
            return False
        served = self.fair.served
        behind = min(
            (served.get(t, 0.0) for t in self.on_engine if t != tenant and t in waiting),
            default=None,
        )
        return behind is not None and served.get(tenant, 0.0) - behind > limit

    def defer(self, r: Run, call_id: str, now: float) -> None:
        if not r.deferred:
            self._deferred.setdefault(r.tenant, []).append(r.run_id)
            self._since.setdefault(r.tenant, now)
        r.deferred.append(call_id)

    def due(self, now: float, waiting: Container[str]) -> list[str]:
        """Runs whose deferred calls may go now (their tenant no longer leads, nothing is on
        the engines, or they waited the limit), in tenant order then FIFO."""
        if not self._deferred:
            return []
        out: list[str] = []
        for tenant in sorted(self._deferred):
            waited = now - self._since.get(tenant, now)
            if self.on_engine and waited < self.max_wait_s() and self.gated(tenant, waiting):
                continue
            self._since.pop(tenant, None)
            out.extend(self._deferred.pop(tenant))
        return out
