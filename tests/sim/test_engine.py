"""The simulated engine's vLLM semantics, timed against the cost model by hand."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from legato.scheduler.events import CallArrived
from legato.scheduler.policy import BasePolicy, ClusterView, Decision, Dispatch
from legato.sim import SimConfig, simulate
from legato.sim.driver import CallTrace
from legato.sim.workload import CallSpec, ProgramSpec, Segment, Workload
from tests.sim.helpers import agent_workload


def _one_call(prompt: int, out: int, arrival: float = 0.0, pid: str = "a", base: int = 0) -> ProgramSpec:
    return ProgramSpec(pid, "t", arrival, (CallSpec("n", (Segment(base + 1, prompt),), out, base + 2),))


def test_single_call_time_is_the_roofline_sum() -> None:
    cfg = SimConfig()
    cost = cfg.cost_model()
    out = simulate(Workload("one", (_one_call(1000, 10),)), "fcfs-lru", cfg, concurrency=1)
    prefill = cost.step_time(1000, 1000 * 1001 / 2, 1000)
    decode = sum(cost.step_time(1, 1001 + j, 1001 + j) for j in range(9))
    assert out.programs[0].tct_s == pytest.approx(prefill + decode, rel=1e-9)
    assert out.extra["engine_steps"] == 10
    assert out.prefill_tokens_computed == 1000
    # One sequence decodes in 9 of the 10 steps; the prefill step has none decoding.
    assert out.extra["mean_decode_batch"] == pytest.approx(decode / (prefill + decode), rel=1e-9)
    # The prefill step is compute-bound: what it took beyond reading the weights and its KV is
    # prefill no decode step hid; decode-only steps expose nothing.
    exposed = cost.compute_s(1000, 1000 * 1001 / 2) - cost.memory_s(1000)
    assert exposed > 0
    assert out.extra["prefill_exposed_s"] == pytest.approx(exposed, rel=1e-9)


def test_prefill_under_a_memory_bound_decode_step_is_hidden() -> None:
    """A short prompt arriving while a long context decodes rides in a step whose time is the
    KV read anyway: the decode step hides it, so it adds nothing to the exposed prefill."""
    cfg = SimConfig()
    long_ctx, short = 30_000, 16
    alone = simulate(Workload("one", (_one_call(long_ctx, 400, pid="a"),)), "fcfs-lru", cfg, concurrency=1)
    both = Workload(
        "two", (_one_call(long_ctx, 400, pid="a"), _one_call(short, 2, arrival=2.0, pid="b", base=10))
    )
    out = simulate(both, "fcfs-lru", cfg, concurrency=2)
    assert alone.extra["prefill_exposed_s"] > 0  # the long prompt's own chunks are compute-bound
    assert out.extra["prefill_exposed_s"] == pytest.approx(alone.extra["prefill_exposed_s"], rel=1e-9)
    assert out.prefill_tokens_computed == long_ctx + short


def test_chunked_prefill_splits_long_prompts() -> None:
    out = simulate(Workload("one", (_one_call(20_000, 2),)), "fcfs-lru", SimConfig(), concurrency=1)
    assert out.extra["engine_steps"] == 3 + 1  # 8192 + 8192 + 3616, then one decode step
    assert out.prefill_tokens_computed == 20_000


def test_prefix_cache_hits_whole_blocks_of_previous_turn() -> None:
    sys_seg, out1 = Segment(1, 1000), Segment(2, 50)
    calls = (
        CallSpec("s0", (sys_seg,), 50, 2, "bash", 1.0),
        CallSpec("s1", (sys_seg, out1, Segment(3, 100)), 20, 4, deps=(0,)),
    )
    out = simulate(
        Workload("two", (ProgramSpec("p", "t", 0.0, calls),)), "fcfs-lru", SimConfig(), concurrency=1
    )
    # call 1 computed 1000 + 49 tokens: 65 full blocks = 1040 tokens are reused by call 2
    assert out.cached_prompt_tokens == 1040
    assert out.prefill_tokens_computed == 1000 + (1150 - 1040)


def test_preemption_by_recompute_when_blocks_run_out() -> None:
    # Two 1000-token prompts that each decode 1500 tokens need 2 x 157 blocks; give 200.
    w = Workload("two", (_one_call(1000, 1500, pid="a"), _one_call(1000, 1500, pid="b", base=10)))
    out = simulate(w, "fcfs-lru", SimConfig(kv_blocks=200), concurrency=2, check=True)
    assert out.preemptions >= 1
    assert len(out.programs) == 2
    # Memory binds: requests held most of the pool while they ran.
    assert 0.5 < out.extra["kv_in_use_share"] <= 1.0
    assert out.prefill_tokens_computed > 2000  # the victim recomputed its prompt and outputs


def test_call_too_large_for_the_pool_is_an_error() -> None:
    with pytest.raises(ValueError, match="KV blocks"):
        simulate(Workload("big", (_one_call(5000, 10),)), "fcfs-lru", SimConfig(kv_blocks=100), concurrency=1)


def test_arrival_mid_decode_jump_is_admitted_at_the_next_step() -> None:
    w = Workload("two", (_one_call(500, 3000, pid="a"), _one_call(500, 5, arrival=1.0, pid="b", base=10)))
    trace: list[CallTrace] = []
    simulate(w, "fcfs-lru", SimConfig(), concurrency=2, trace=trace)
    b = next(t for t in trace if t.call_id == "b#0")
    assert 1.0 <= b.admitted_s < 1.0 + 0.02  # one decode step of an 8B model is ~7.6 ms


def test_thrashing_under_kv_pressure() -> None:
    """vLLM semantics + agents parked in tool calls: LRU evicts their KV and they recompute."""
    w = agent_workload(24, seed=5, steps=(6, 10))
    cfg = SimConfig(kv_blocks=3000)
    lru = simulate(w, "fcfs-lru", cfg, concurrency=24)
    inf = simulate(w, "infinite-kv", cfg, concurrency=24)
    assert lru.preemptions > 0
    assert inf.preemptions == 0
    assert lru.prefill_tokens_computed > 2 * inf.prefill_tokens_computed
    assert lru.makespan_s > inf.makespan_s


def test_program_aware_baselines_act() -> None:
    w = agent_workload(24, seed=5, steps=(6, 10))
    cfg = SimConfig(kv_blocks=3000)
    lru = simulate(w, "fcfs-lru", cfg, concurrency=24)
    thunder = simulate(w, "thunderagent", cfg, concurrency=24)
    cont = simulate(w, "continuum", cfg, concurrency=24)
    assert thunder.pauses > 0
    assert thunder.prefill_tokens_computed < lru.prefill_tokens_computed
    assert cont.cached_prompt_tokens > lru.cached_prompt_tokens


def test_unknown_presets_list_valid_choices() -> None:
    w = Workload("one", (_one_call(10, 2),))
    with pytest.raises(ValueError, match="h100"):
        simulate(w, "fcfs-lru", SimConfig(gpu="v100"), concurrency=1)
    with pytest.raises(ValueError, match=r"llama-3\.1-8b"):
        simulate(w, "fcfs-lru", SimConfig(model="gpt-5"), concurrency=1)
    with pytest.raises(ValueError, match="fcfs-lru"):
        simulate(w, "nope", SimConfig(), concurrency=1)
    with pytest.raises(ValueError, match="redis"):
        simulate(w, "fcfs-lru", SimConfig(tiers=("tape",)), concurrency=1)


class _Hoarder(BasePolicy):
    name = "hoarder"

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        return ()


def test_policy_that_never_dispatches_stalls_loudly() -> None:
    with pytest.raises(RuntimeError, match="stalled"):
        simulate(Workload("one", (_one_call(10, 2),)), _Hoarder(), SimConfig(), concurrency=1)


@pytest.mark.parametrize(
    "gpu,model", [("a10", "llama-3.1-8b"), ("h100", "qwen2.5-32b"), ("h100", "llama-3.1-70b")]
)
def test_presets_run(gpu: str, model: str) -> None:
    out = simulate(agent_workload(3, seed=0), "fcfs-lru", SimConfig(gpu=gpu, model=model), concurrency=3)
    assert len(out.programs) == 3


class _Probe(BasePolicy):
    """FCFS on replica 0 that records what the view says about a run's resident KV."""

    name = "probe"

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        call = event.call
        self.seen.append((view.resident_tokens(0, call.run_id), view.cached_prefix_tokens(0, call.call_id)))
        return (Dispatch(call.call_id, 0),)


def test_view_reports_resident_kv_of_a_run() -> None:
    sys_seg, out1 = Segment(1, 1000), Segment(2, 50)
    calls = (
        CallSpec("s0", (sys_seg,), 50, 2, "bash", 1.0),
        CallSpec("s1", (sys_seg, out1, Segment(3, 100)), 20, 4, deps=(0,)),
    )
    probe = _Probe()
    simulate(Workload("two", (ProgramSpec("p", "t", 0.0, calls),)), probe, SimConfig(), concurrency=1)
    assert probe.seen == [(0, 0), (1040, 1040)]
