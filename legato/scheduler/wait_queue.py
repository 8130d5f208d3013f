"""Programs waiting for admission, one heap per tenant (lazy deletion by version).

The key is the program's expected completion time if served from now on (`_enqueue`: when it
entered plus its predicted remaining calls times the measured call cycle). Entries are
invalidated by bumping the run's `qver` instead of being removed (also how a run taken from the
middle of the queue leaves it).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping

from legato.scheduler.legato_run import Run


class WaitQueue:
    def __init__(self) -> None:
        self._heaps: dict[str, list[tuple[float, int, int, str]]] = {}
        self._seq = 0

    def __bool__(self) -> bool:
        return bool(self._heaps)

    def __contains__(self, tenant: object) -> bool:
        return tenant in self._heaps

    def tenants(self) -> list[str]:
        return list(self._heaps)

    def push(self, r: Run, key: float, now: float) -> None:
        r.queued_s = now
        r.queued = True
        r.qver += 1
        self._seq += 1
        heapq.heappush(self._heaps.setdefault(r.tenant, []), (key, self._seq, r.qver, r.run_id))

    def head(self, tenant: str, runs: Mapping[str, Run]) -> Run | None:
        """The tenant's first valid entry (stale ones are dropped on the way)."""
        heap = self._heaps.get(tenant)
        while heap:
            _, _, qver, run_id = heap[0]
            r = runs.get(run_id)
            if r is not None and r.qver == qver and r.queued:
                return r
            heapq.heappop(heap)
        if heap is not None:
            del self._heaps[tenant]
        return None

    def pop(self, tenant: str) -> None:
        """Remove the tenant's head (call `head` first)."""
        heapq.heappop(self._heaps[tenant])

    def in_order(self, tenant: str, runs: Mapping[str, Run]) -> Iterator[tuple[float, int, Run]]:
        """The tenant's valid entries as (key, arrival sequence, run), least key first, read
        lazily off the heap (a frontier of heap positions): a caller that stops after k entries
        pays O(k log k), not the queue's length. A run taken from anywhere in the queue leaves a
        stale entry behind (bump its `qver`)."""
        heap = self._heaps.get(tenant)
        if not heap:
            return
        frontier = [(heap[0], 0)]
        while frontier:
            (key, seq, qver, run_id), i = heapq.heappop(frontier)
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))
            r = runs.get(run_id)
            if r is not None and r.qver == qver and r.queued:
                yield key, seq, r
