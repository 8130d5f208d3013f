"""The KV-limited makespan bound: hand-checked arithmetic, and a bound every simulated policy
respects (a bound a real replay could beat would be wrong)."""

from __future__ import annotations

import pytest

from legato.bench.kv_bound import compute
from legato.bench.workloads import build_workload
from legato.sim.driver import SimConfig, simulate
from legato.sim.workload import CallSpec, ProgramSpec, Segment, Workload


def _program(pid: str, calls: tuple[CallSpec, ...]) -> ProgramSpec:
    return ProgramSpec(pid, "t", 0.0, calls)


def test_bound_arithmetic_on_a_hand_made_workload() -> None:
    system = Segment(1, 160)  # shared by both programs: two chains, so half counts for each
    task = Segment(2, 32)  # shared by two parallel calls of one program (two chains)
    programs = []
    for p in range(2):
        own = Segment(10 + p, 16)
        calls = (
            CallSpec("a", (system, task), output_tokens=11, output_seg_id=20 + p),
            CallSpec("b", (system, task, own), output_tokens=11, output_seg_id=30 + p, deps=(0,)),
            CallSpec("c", (system, task), output_tokens=11, output_seg_id=40 + p, deps=(0,)),
        )
        programs.append(_program(f"p{p}", calls))
    config = SimConfig(kv_blocks=100)
    bound = compute(Workload("hand", tuple(programs)), config)
    own_output = 1 + 10 / 2  # mean output so far while each call decodes its 10 tokens
    reads = 2 * 10 * ((192 + own_output) + (208 + own_output) + (192 + own_output))
    # system: 2 programs x 2 chains (a-b, c) = 4 chains; task: 2 chains per program = 4
    held = 2 * 10 * ((160 / 4 + 32 / 4 + own_output) * 2 + (160 / 4 + 32 / 4 + 16 + own_output))
    cost = config.cost_model()
    assert bound.decode_tokens == 60
    assert bound.capacity_tokens == 1600
    assert bound.kv_read_s == pytest.approx(reads * cost.model.kv_bytes_per_token / cost.bytes_per_s)
    assert bound.min_steps == pytest.approx(held / 1600)
    assert bound.makespan_s == pytest.approx(bound.kv_read_s + bound.min_steps * bound.step_fixed_s)
    assert bound.steps_per_min == pytest.approx(6 * 60 / bound.makespan_s)


@pytest.mark.parametrize("workload", ["multiagent", "swe"])
def test_no_simulated_policy_beats_the_bound(workload: str) -> None:
    """A small pool (twice the largest call) so memory binds; every policy's makespan stays
    above the bound."""
    w = build_workload(workload, 12, 3, {})
    largest = max(c.prompt_tokens + c.output_tokens for p in w.programs for c in p.calls)
    config = SimConfig(kv_blocks=2 * largest // 16)
    bound = compute(w, config)
    for policy in ("fcfs-lru", "continuum", "legato"):
        makespan = simulate(w, policy, config, concurrency=6).makespan_s
        assert makespan >= bound.makespan_s, policy
    assert bound.makespan_s > 0


def test_replicas_share_the_work_at_best_evenly() -> None:
    w = build_workload("multiagent", 16, 1, {})
    one, two = compute(w, SimConfig(kv_blocks=4000)), compute(w, SimConfig(kv_blocks=4000, replicas=2))
    assert two.makespan_s == pytest.approx(one.makespan_s / 2)
    assert (
        simulate(w, "legato", SimConfig(kv_blocks=4000, replicas=2), concurrency=8).makespan_s
        >= two.makespan_s
    )


def test_every_sim_bench_report_carries_the_bound() -> None:
    from legato.bench.report import render_table
    from legato.bench.runner import execute_bench

    run = execute_bench("multiagent", ["fcfs-lru"], programs=6, concurrency=3)
    assert run.report["kv_bound"]["steps_per_min"] >= run.report["policies"]["fcfs-lru"]["steps_per_min"]
    assert "bound: no policy keeping KV on the device exceeds" in str(render_table(run.report).caption)
