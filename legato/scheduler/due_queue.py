"""A min-heap of timed entries: what the Legato policy must look at again at some time.

Prefetches (a tool about to finish), expected tool branches (dropped when their tool never
starts), hold TTLs (released when they pass): each is pushed with its time and taken off with
`pop_due(now)`. Entries are never removed early; the consumer checks that an entry still
applies (lazy deletion), so every operation is O(log n).
"""

from __future__ import annotations

import heapq
from typing import Generic, TypeVar

T = TypeVar("T")


class DueQueue(Generic[T]):
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._seq = 0

    def push(self, at_s: float, item: T) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at_s, self._seq, item))

    def pop_due(self, now: float) -> list[T]:
        """Entries due at or before `now`, earliest first."""
        out: list[T] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            out.append(heapq.heappop(heap)[2])
        return out

    def __len__(self) -> int:
        return len(self._heap)
