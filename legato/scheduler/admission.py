"""KV admission budget: the summed KV of a replica's active programs, kept within its capacity.

Why: when the KV of the programs an engine serves exceeds its memory, a request-level engine
thrashes — it evicts the prefix of every agent that is running a tool and preempts running
requests, then recomputes both (ThunderAgent measured up to 7x worse latency). Admitting whole
programs only while their KV fits, and pausing whole programs when growth overflows, keeps every
admitted program's prefix resident through its tool calls.

The budget is in tokens, kept incrementally (O(horizons) per update, never a scan of programs):
- each active program holds its *footprint*: the tokens of its private context (prompt + output
  reserve of live calls, the context of branches inside a tool), minus shared parts;
- and a *projection*: its expected footprint a few calls ahead, one value per horizon (grown by
  the context growth per call, times the chance it is still running then) and that value's
  variance (a run either still holds it or has finished and freed everything). Admission packs
  projections: a program admitted small keeps growing, so packing current sizes admits a burst
  of young programs that overflow together a few steps later; packing each program's *peak*
  instead wastes memory, because programs finish at different times. Summed over programs, the
  projections give the expected total at each horizon and its variance; admission keeps
  mean + `safety` standard deviations under the threshold at every horizon, so a replica with
  few large programs (one finish frees a lot, or not) keeps more headroom than one with many;
- shared parts (a tenant's system prompt, an RL group's task prompt) are held once per replica
  with a reference count, since the prefix cache stores them once.

Two thresholds give hysteresis: programs are admitted while every projected total stays under
`low` x capacity and paused only when the current total goes over `high` x capacity.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class SharedParts:
    """Shared prefix parts (a tenant's system prompt, an RL group's task prompt), each held once
    with a count of the programs that hold it, and their distinct tokens."""

    tokens: float = 0.0
    _parts: dict[Hashable, list[float]] = field(default_factory=dict)  # key -> [tokens, holders]

    def holds(self, key: Hashable) -> bool:
        return key in self._parts

    def add(self, parts: Sequence[tuple[Hashable, float]]) -> float:
        """One more holder of each part; returns the tokens of the parts not held before."""
        added = 0.0
        for key, size in parts:
            entry = self._parts.get(key)
            if entry is None:
                self._parts[key] = [size, 1.0]
                added += size
            else:
                entry[1] += 1.0
        self.tokens += added
        return added

    def remove(self, keys: Iterable[Hashable]) -> float:
        """One holder fewer of each part; returns the tokens of the parts no one holds now."""
        freed = 0.0
        for key in keys:
            entry = self._parts.get(key)
            if entry is None:
                continue
            entry[1] -= 1.0
            if entry[1] <= 0.0:
                freed += entry[0]
                del self._parts[key]
        self.tokens -= freed
        return freed


@dataclass(slots=True)
class _Held:
    replica: int
    tokens: float = 0.0
    projected: list[float] = field(default_factory=list)
    variance: list[float] = field(default_factory=list)
    shared: list[Hashable] = field(default_factory=list)


class KVBudget:
    def __init__(
        self, *, horizons: int = 1, low: float = 0.9, high: float = 0.95, safety: float = 2.0
    ) -> None:
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"need 0 < low <= high <= 1, got low={low}, high={high}")
        if horizons < 1:
            raise ValueError(f"horizons must be >= 1, got {horizons}")
        self.low = low
        self.high = high
        self.horizons = horizons
        self.safety = safety
        self.capacity: list[float] = []
        self.used: list[list[float]] = []  # per replica, per horizon: projected totals
        self.var: list[list[float]] = []  # per replica, per horizon: summed variances
        self.current: list[float] = []  # per replica: footprint totals
        self.count: list[int] = []  # per replica: admitted programs
        self.releases = 0  # programs released so far (admission retries only after one)
        self._held: dict[str, _Held] = {}
        self._shared: dict[int, SharedParts] = {}  # per replica: the parts its programs hold

    def set_capacity(self, capacities: Sequence[float]) -> None:
        if len(capacities) != len(self.capacity):
            self.used = [[0.0] * self.horizons for _ in capacities]
            self.var = [[0.0] * self.horizons for _ in capacities]
            self.current = [0.0] * len(capacities)
            self.count = [0] * len(capacities)
        self.capacity = list(capacities)

    @property
    def replicas(self) -> int:
        return len(self.capacity)

    def replica_of(self, run: str) -> int | None:
        held = self._held.get(run)
        return None if held is None else held.replica

    def holds(self, run: str) -> bool:
        return run in self._held

    def tokens_of(self, run: str) -> float:
        held = self._held.get(run)
        return 0.0 if held is None else held.tokens

    def room(self, replica: int) -> float:
        """Tokens still admissible on the replica at its tightest horizon."""
        k = self.safety
        used, var = self.used[replica], self.var[replica]
        peak = max(u + k * math.sqrt(max(0.0, v)) for u, v in zip(used, var, strict=True))
        cap = self.capacity[replica]
        return (self.low * cap if math.isfinite(cap) else 0.0) - peak  # unbounded: least used

    def fits(
        self,
        replica: int,
        need: Sequence[float],
        need_var: Sequence[float] | None = None,
        without: Sequence[str] = (),
    ) -> bool:
        """Would a program projecting `need` (one value per horizon, with variances
        `need_var`) keep every horizon's mean + safety x std under `low`, once the programs
        `without` left the replica (their projections freed; shared parts they hold still
        counted, so it errs toward not fitting)?"""
        limit = self.low * self.capacity[replica]
        k = self.safety
        nv = self._vec([0.0] if need_var is None else need_var)
        used, var = self.used[replica], self.var[replica]
        if without:  # on copies: the budget itself is not changed
            used, var = list(used), list(var)
        for run in without:
            held = self._held.get(run)
            if held is None or held.replica != replica:
                continue
            for h, (p, v) in enumerate(zip(self._vec(held.projected), self._vec(held.variance), strict=True)):
                used[h] -= p
                var[h] -= v
        return all(
            used[h] + n + k * math.sqrt(max(0.0, var[h] + nv[h])) <= limit
            for h, n in enumerate(self._vec(need))
        )

    def peak_of(self, run: str) -> float:
        """The largest of the run's projected footprints (0 for a run not admitted)."""
        held = self._held.get(run)
        return 0.0 if held is None else max(held.projected)

    def overflow(self, replica: int) -> float:
        """Current tokens above the high threshold (> 0: someone must be paused)."""
        return self.current[replica] - self.high * self.capacity[replica]

    def shared_cost(self, replica: int, keys: Sequence[tuple[Hashable, float]]) -> float:
        """Tokens the shared parts `keys` would add on `replica` (those not held there yet)."""
        held = self._shared.get(replica)
        return sum(tokens for key, tokens in keys if held is None or not held.holds(key))

    def _vec(self, projected: Sequence[float]) -> list[float]:
        if len(projected) == self.horizons:
            return list(projected)
        if len(projected) == 1:
            return [projected[0]] * self.horizons
        raise ValueError(f"need one projection per horizon ({self.horizons}), got {len(projected)}")

    def admit(
        self,
        run: str,
        replica: int,
        tokens: float,
        shared: Sequence[tuple[Hashable, float]],
        projected: Sequence[float] | None = None,
        variance: Sequence[float] | None = None,
    ) -> None:
        if run in self._held:
            raise ValueError(f"run {run!r} is already admitted")
        if not 0 <= replica < len(self.capacity):
            raise ValueError(
                f"replica {replica} has no capacity set (have {len(self.capacity)}); call set_capacity first"
            )
        if projected is not None:
            self._vec(projected)  # refuse a malformed projection before changing anything
        held = _Held(replica, projected=[0.0] * self.horizons, variance=[0.0] * self.horizons)
        self._held[run] = held
        self.count[replica] += 1
        added = self._shared.setdefault(replica, SharedParts()).add(shared)
        if added:
            used = self.used[replica]
            for h in range(self.horizons):
                used[h] += added
            self.current[replica] += added
        held.shared.extend(key for key, _ in shared)
        self.update(run, tokens, projected, variance)

    def update(
        self,
        run: str,
        tokens: float,
        projected: Sequence[float] | None = None,
        variance: Sequence[float] | None = None,
    ) -> None:
        """The run's private footprint (and projections, default the footprint, and their
        variances, default 0) changed."""
        held = self._held[run]
        proj = self._vec([tokens] if projected is None else projected)
        pvar = self._vec([0.0] if variance is None else variance)
        used, var = self.used[held.replica], self.var[held.replica]
        for h in range(self.horizons):
            used[h] += proj[h] - held.projected[h]
            var[h] += pvar[h] - held.variance[h]
        held.projected = proj
        held.variance = pvar
        self.current[held.replica] += tokens - held.tokens
        held.tokens = tokens

    def release(self, run: str) -> None:
        """The run left the replica (paused or finished): its footprint and shared refs go."""
        held = self._held.pop(run, None)
        if held is None:
            return
        r = held.replica
        self.releases += 1
        self.count[r] -= 1
        used, var = self.used[r], self.var[r]
        for h in range(self.horizons):
            used[h] -= held.projected[h]
            var[h] = max(0.0, var[h] - held.variance[h])
        self.current[r] -= held.tokens
        freed = self._shared[r].remove(held.shared) if held.shared else 0.0
        if freed:
            for h in range(self.horizons):
                used[h] -= freed
            self.current[r] -= freed
