"""Which replica an admitted program runs on.

Why it matters: a program's KV lives where its last call ran, so moving it costs a recompute of
its whole context. Rules, in order:
1. **program affinity**: a program that already ran somewhere goes back there when it fits;
2. **group affinity**: siblings of an RL GRPO group share their prompt, so they go to the
   replica the group's first admitted sibling went to (the shared prompt is computed once),
   elsewhere only to an idle replica;
3. otherwise the replica with the most room (spreads load, lowest index on ties);
4. **work stealing**: a program whose home has no room moves to another replica only when that
   replica is idle (nothing running or queued) or the program has waited `steal_after_s` —
   recomputing its context elsewhere beats leaving a GPU idle (the caller passes the
   recompute time of the program's context: waiting longer than that costs more than moving);
5. a replica running fewer than `min_programs` (default 1) programs takes one whatever its
   budget says (its home if that one is short, else the one with the fewest): a program too
   large for any budget still runs, since the engine can serve a call that fits its whole pool.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from legato.scheduler.admission import KVBudget


class Router:
    def __init__(self, steal_after_s: float = math.inf, min_programs: int = 1) -> None:
        if min_programs < 1:
            raise ValueError(f"min_programs must be >= 1, got {min_programs}")
        self.steal_after_s = steal_after_s
        self.min_programs = min_programs
        self._groups: dict[str, list[int]] = {}  # group -> [replica, admitted members]
        self.steals = 0

    def group_home(self, group: str) -> int | None:
        entry = self._groups.get(group)
        return None if entry is None else entry[0]

    def choose(
        self,
        budget: KVBudget,
        need: Callable[[int], tuple[Sequence[float], Sequence[float]]],
        *,
        home: int | None,
        group: str | None,
        waited_s: float,
        idle: Callable[[int], bool],
        may_steal: bool = True,
        steal_after_s: float | None = None,
    ) -> int | None:
        """The replica to admit a program on, or None when it fits nowhere now. `need(r)` is the
        program's projected footprints on replica r and their variances, one per budget horizon
        (shared parts already there are free). `steal_after_s` overrides the router's own."""
        steal_after = self.steal_after_s if steal_after_s is None else steal_after_s
        if home is not None:
            if budget.fits(home, *need(home)) or budget.count[home] < self.min_programs:
                return home
            if not may_steal:
                return None
            for r in self._by_room(budget):
                if r != home and budget.fits(r, *need(r)) and (idle(r) or waited_s >= steal_after):
                    self.steals += 1
                    return r
            for r in range(budget.replicas):
                if r != home and budget.count[r] == 0:
                    self.steals += 1
                    return r
            return None
        if group is not None:
            g = self.group_home(group)
            if g is not None:
                if budget.fits(g, *need(g)) or budget.count[g] < self.min_programs:
                    return g
                # Elsewhere the group's prompt is computed again, and the group's later
                # siblings split: only for an idle replica.
                for r in self._by_room(budget):
                    if r != g and budget.fits(r, *need(r)) and idle(r):
                        self.steals += 1
                        return r
                return None
        for r in self._by_room(budget):
            if budget.fits(r, *need(r)):
                return r
        fewest = min(range(budget.replicas), key=lambda r: (budget.count[r], r))
        return fewest if budget.count[fewest] < self.min_programs else None

    @staticmethod
    def _by_room(budget: KVBudget) -> list[int]:
        return sorted(range(budget.replicas), key=lambda r: (-budget.room(r), r))

    def joined(self, group: str | None, replica: int) -> None:
        """A group member was admitted on `replica` (the first one fixes the group's home)."""
        if group is None:
            return
        entry = self._groups.get(group)
        if entry is None:
            self._groups[group] = [replica, 1]
        else:
            entry[1] += 1

    def left(self, group: str | None) -> None:
        """A group member finished; the group is forgotten with its last member."""
        if group is None:
            return
        entry = self._groups.get(group)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._groups[group]
