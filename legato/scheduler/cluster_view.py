"""The `ClusterView` a policy reads in real time: what the scheduler knows about its engines.

- Capacity (`block_size`, `total_blocks`, `free_blocks`) is each engine's last
  `await engine.capacity()`, refreshed (coalesced) after every event.
- `running` / `waiting` are the scheduler's own counts: a call is *running* once its first chunk
  arrived (with chunked prefill, after its whole prompt) and *waiting* from dispatch until then,
  plus calls held by a pause.
- The prefill cost (`prefill_s_per_token` / `_per_pair`) is declared for an engine with
  `Capability.PREFILL_COSTS` (the torch engine's fit to its own step timings, a vLLM or SGLang
  server's from its prefill-phase metrics); for others the policy measures an upper bound from call
  timings (`legato.scheduler.engine_rates`).
- `cached_prefix_tokens` / `resident_tokens` ask an engine with `Capability.PREFIX_SNAPSHOT`
  (the torch engine) directly; for other engines they are estimated from the sequences the
  scheduler remembers per replica (the longest common prefix, in whole blocks; optimistic: it
  ignores evictions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from legato.engine_adapter.base import Capability, PrefillCostEngine, PrefixSnapshotEngine
from legato.scheduler.policy import ReplicaView
from legato.scheduler.runtime_state import SchedulerState


class EngineClusterView:
    """`ClusterView` over real engines (see the module docstring)."""

    def __init__(self, state: SchedulerState) -> None:
        self._s = state

    @property
    def num_replicas(self) -> int:
        return len(self._s.engines)

    def replica(self, index: int) -> ReplicaView:
        s = self._s
        cap = s.capacity[index]
        engine = s.engines[index]
        costs = None
        if Capability.PREFILL_COSTS in engine.capabilities:
            costs = cast(PrefillCostEngine, engine).prefill_costs()
        return ReplicaView(
            replica=index,
            block_size=cap.block_size,
            total_blocks=cap.total_blocks,
            free_blocks=cap.free_blocks,
            running=s.running[index],
            waiting=s.waiting[index],
            prefill_s_per_token=None if costs is None else costs[0],
            prefill_s_per_pair=None if costs is None else costs[1],
        )

    def cached_prefix_tokens(self, replica: int, call_id: str) -> int:
        pending = self._s.pending.get(call_id)
        if pending is None:
            return 0
        call = pending.call
        return self.prefix_tokens(replica, call.prompt_token_ids, self._s.cache_salt(call.tenant))

    def resident_tokens(self, replica: int, run_id: str) -> int:
        run = self._s.runs.get(run_id)
        if run is None or not run.last_seq:
            return 0
        return self.prefix_tokens(replica, run.last_seq, self._s.cache_salt(run.tenant))

    def prefix_tokens(self, replica: int, token_ids: Sequence[int], salt: str | None) -> int:
        """Leading tokens of `token_ids` resident on the replica (see the module docstring)."""
        s = self._s
        engine = s.engines[replica]
        if Capability.PREFIX_SNAPSHOT in engine.capabilities:
            return cast(PrefixSnapshotEngine, engine).resident_prefix_tokens(token_ids, salt)
        best = 0
        for run in s.runs.values():
            if run.replica != replica or s.cache_salt(run.tenant) != salt:
                continue
            seq = run.last_seq
            k, limit = 0, min(len(seq), len(token_ids))
            while k < limit and seq[k] == token_ids[k]:
                k += 1
            best = max(best, k)
        return best // s.capacity[replica].block_size * s.capacity[replica].block_size


__all__ = ["EngineClusterView"]
