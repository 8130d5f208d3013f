"""What the simulator shows a policy and the report: the `ClusterView` over simulated replicas,
and the `RunOutcome` of a finished run (with the per-tier traffic summed over replicas,
`extra["tier_<name>_<counter>"]`, and the numbers a policy reports about itself)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from legato.scheduler.policy import Policy, ReplicaView, TierView
from legato.sim.client import TenantLedger
from legato.sim.config import SimConfig
from legato.sim.control import SimControl
from legato.sim.engine import SimEngine
from legato.sim.hardware import TierSpec
from legato.sim.outcome import ProgramOutcome, RunOutcome
from legato.sim.workload import Segment

# `CostModel.engine_facts()`: prefill s/token, prefill s/attended pair, decode step s, decode s per
# context token, KV bytes per token.
EngineFacts = tuple[float, float, float, float, float]


class SimClusterView:
    """`ClusterView` over the simulated replicas."""

    def __init__(
        self,
        engines: Sequence[SimEngine],
        prompt_of: Callable[[str], tuple[Segment, ...] | None],
        run_index: Mapping[str, int],
        facts: EngineFacts,
    ) -> None:
        self._engines = engines
        self._facts = facts  # the cost model's rates for this GPU and model
        self._prompt_of = prompt_of  # an arrived, undispatched call's prompt
        self._runs = run_index

    @property
    def num_replicas(self) -> int:
        return len(self._engines)

    def replica(self, index: int) -> ReplicaView:
        e = self._engines[index]
        pool = e.pool
        facts = self._facts
        tiers: tuple[TierView, ...] = ()
        if pool.tiers is not None:
            tiers = tuple(
                TierView(
                    lv.spec.name,
                    lv.spec.bandwidth,
                    lv.spec.round_trip_s,
                    lv.capacity * pool.tiers.block_bytes,
                    max(0, lv.capacity - lv.used) * pool.tiers.block_bytes,
                )
                for lv in pool.tiers.levels
            )
        return ReplicaView(
            replica=index,
            block_size=pool.block_size,
            total_blocks=pool.capacity,
            free_blocks=pool.available,
            running=e.running,
            waiting=e.n_waiting + e.n_parked,
            prefill_s_per_token=facts[0],
            prefill_s_per_pair=facts[1],
            decode_step_s=facts[2],
            decode_s_per_ctx_token=facts[3],
            kv_bytes_per_token=facts[4],
            tiers=tiers,
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


def build_outcome(
    policy: Policy,
    outcomes: Sequence[ProgramOutcome],
    engines: Sequence[SimEngine],
    ledger: TenantLedger,
    control: SimControl,
    config: SimConfig,
    tiers: Sequence[TierSpec],
) -> RunOutcome:
    """The `RunOutcome` of a finished simulation."""
    stats = [e.stats for e in engines]
    programs = sorted(outcomes, key=lambda o: o.program_id)
    first = min((o.arrival_s for o in programs), default=0.0)
    last = max((o.finish_s for o in programs), default=0.0)
    evicted = sum(e.pool.evicted_blocks for e in engines)
    busy = sum(s.busy_s for s in stats)
    pool_block_s = sum(s.busy_s * e.pool.capacity for s, e in zip(stats, engines, strict=True))
    return RunOutcome(
        policy=policy.name,
        programs=programs,
        makespan_s=last - first,
        prompt_tokens=sum(o.prompt_tokens for o in programs),
        prefill_tokens_computed=sum(s.prefill_tokens for s in stats),
        cached_prompt_tokens=sum(s.cached_prompt_tokens for s in stats),
        preemptions=sum(s.preemptions for s in stats),
        pauses=control.pauses,
        replicas=len(engines),
        engine_busy_s=sum(s.busy_s for s in stats),
        service_by_tenant=dict(sorted(ledger.service.items())),
        tenant_weights=dict(sorted(ledger.weights.items())),
        backlog_service_by_tenant=ledger.backlog_service,
        backlog_window_s=max(0.0, ledger.backlog_end_s - first),
        extra={
            "engine_steps": float(sum(s.steps for s in stats)),
            "evicted_blocks": float(evicted),
            "pin_yields": float(sum(s.pin_yields for s in stats)),
            # What a throughput gap comes from: the decode batch the engines ran, and the share
            # of their KV pool that requests or pins held (the rest was free or idle cache),
            # both averaged over busy time.
            "mean_decode_batch": sum(s.decoding_s for s in stats) / busy if busy else 0.0,
            "kv_in_use_share": sum(s.in_use_block_s for s in stats) / pool_block_s if pool_block_s else 0.0,
            # Prefill the engines could not hide under memory-bound decode steps (seconds).
            "prefill_exposed_s": sum(s.prefill_exposed_s for s in stats),
            "prefetches_ignored": float(0 if tiers else control.prefetches),
            **tier_extra(engines, config, tiers, control.prefetches),
            **policy_extra(policy),
        },
    )


def policy_extra(policy: Policy) -> dict[str, float]:
    """Numbers a policy reports about itself (e.g. reuse-predictor accuracy), when it has a
    `stats() -> dict[str, float]` method."""
    stats = getattr(policy, "stats", None)
    return {str(k): float(v) for k, v in stats().items()} if callable(stats) else {}


def tier_extra(
    engines: Sequence[SimEngine], config: SimConfig, tiers: Sequence[TierSpec], prefetches: int
) -> dict[str, float]:
    """Per-tier traffic summed over replicas (only with tiers): `tier_<name>_<counter>`."""
    if not tiers:
        return {}
    out: dict[str, float] = {"prefetches": float(prefetches)}
    out["tier_load_stall_s"] = sum(e.stats.load_stall_s for e in engines)
    for spec in tiers:
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


__all__ = ["SimClusterView", "build_outcome", "policy_extra", "tier_extra"]
