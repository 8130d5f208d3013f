"""What the simulator shows a policy and the report: the `ClusterView` over simulated replicas,
and the per-tier traffic summed over replicas (`RunOutcome.extra["tier_<name>_<counter>"]`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from legato.scheduler.policy import ReplicaView
from legato.sim.config import SimConfig
from legato.sim.engine import SimEngine
from legato.sim.hardware import tier_specs
from legato.sim.workload import Segment


class SimClusterView:
    """`ClusterView` over the simulated replicas."""

    def __init__(
        self,
        engines: Sequence[SimEngine],
        prompt_of: Callable[[str], tuple[Segment, ...] | None],
        run_index: Mapping[str, int],
    ) -> None:
        self._engines = engines
        self._prompt_of = prompt_of  # an arrived, undispatched call's prompt
        self._runs = run_index

    @property
    def num_replicas(self) -> int:
        return len(self._engines)

    def replica(self, index: int) -> ReplicaView:
        e = self._engines[index]
        pool = e.pool
        return ReplicaView(
            replica=index,
            block_size=pool.block_size,
            total_blocks=pool.capacity,
            free_blocks=pool.available,
            running=e.running,
            waiting=e.n_waiting + e.n_parked,
        )

    def cached_prefix_tokens(self, replica: int, call_id: str) -> int:
        prompt = self._prompt_of(call_id)
        if prompt is None:
            return 0
        return self._engines[replica].pool.match_tokens(prompt)

    def resident_tokens(self, replica: int, run_id: str) -> int:
        run = self._runs.get(run_id)
        if run is None:
            return 0
        return self._engines[replica].resident_tokens(run)


def tier_extra(engines: Sequence[SimEngine], config: SimConfig, prefetches: int) -> dict[str, float]:
    """Per-tier traffic summed over replicas (only with tiers): `tier_<name>_<counter>`."""
    if not config.tiers:
        return {}
    out: dict[str, float] = {"prefetches": float(prefetches)}
    out["tier_load_stall_s"] = sum(e.stats.load_stall_s for e in engines)
    for spec in tier_specs(config.tiers):
        block_bytes = config.block_size * config.cost_model().model.kv_bytes_per_token
        totals = {"offloaded_bytes": 0.0, "loaded_bytes": 0.0, "hit_tokens": 0.0, "prefetched_bytes": 0.0}
        totals["capacity_blocks"] = totals["peak_blocks"] = 0.0
        for e in engines:
            if e.pool.tiers is None:
                continue
            st = next(lv for lv in e.pool.tiers.levels if lv.spec.name == spec.name)
            totals["offloaded_bytes"] += st.stats.offloaded_blocks * block_bytes
            totals["loaded_bytes"] += st.stats.loaded_blocks * block_bytes
            totals["prefetched_bytes"] += st.stats.prefetched_blocks * block_bytes
            totals["hit_tokens"] += st.stats.hit_tokens
            totals["write_busy_s"] = totals.get("write_busy_s", 0.0) + st.stats.write_busy_s
            totals["read_busy_s"] = totals.get("read_busy_s", 0.0) + st.stats.read_busy_s
            totals["capacity_blocks"] += st.capacity
            totals["peak_blocks"] = max(totals["peak_blocks"], float(st.stats.peak_blocks))
        out.update({f"tier_{spec.name}_{k}": v for k, v in totals.items()})
    return out


__all__ = ["SimClusterView", "tier_extra"]
