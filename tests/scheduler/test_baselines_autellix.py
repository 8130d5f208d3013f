"""`autellix` pins what Autellix specifies (Luo et al., arXiv:2502.13965, section 4): PLAS
priorities from the program's attained service, counted as the work the engine did (cached
prompt tokens excluded); ATLAS's critical path for parallel calls; promotion when a call's wait
reaches its program's service time; preempted calls swapped to CPU memory (vLLM's swap space)."""

from __future__ import annotations

from legato.scheduler.baselines.autellix import QUANTUM_TOKENS, Autellix
from legato.scheduler.events import Tick
from legato.scheduler.policy import Dispatch, SetPriority
from legato.sim import SimConfig, simulate
from tests.scheduler.baseline_helpers import FakeView, arrive, finish, on
from tests.sim.helpers import agent_workload

VIEW = FakeView([10_000])


def _priority(decisions: list[object]) -> int:
    (d,) = decisions
    assert isinstance(d, Dispatch)
    return d.priority


def test_service_excludes_cached_prompt_tokens() -> None:
    a = Autellix()
    assert _priority(on(a, arrive("r", 0, 9000), 0.0, VIEW)) == 1
    on(a, finish("r", 0, 9000, 100, cached=8900), 1.0, VIEW)  # the engine computed 200 tokens
    assert _priority(on(a, arrive("r", 1, 9200), 2.0, VIEW)) == Autellix.level(200) == 1
    on(a, finish("r", 1, 9200, 2 * int(QUANTUM_TOKENS), cached=9100), 3.0, VIEW)
    assert _priority(on(a, arrive("r", 2, 13400), 4.0, VIEW)) == Autellix.level(200 + 100 + 4096) == 2


def test_atlas_parallel_calls_do_not_add_up() -> None:
    """Two parallel calls of one program, 8000 tokens of service each: the next call's service
    is the critical path (8000), not the sum (16000) PLAS would give."""
    a = Autellix()
    on(a, arrive("r", 0, 1000), 0.0, VIEW)
    on(a, arrive("r", 1, 1000), 0.0, VIEW)
    on(a, finish("r", 0, 1000, 7000), 1.0, VIEW)
    on(a, finish("r", 1, 1000, 7000), 1.0, VIEW)
    assert Autellix.level(8000) < Autellix.level(16000)
    assert _priority(on(a, arrive("r", 2, 9000), 2.0, VIEW)) == Autellix.level(8000)
    # calls in sequence sum (PLAS): the next one starts from the path through both
    on(a, finish("r", 2, 9000, 8000, cached=9000), 3.0, VIEW)
    assert _priority(on(a, arrive("r", 3, 17000), 4.0, VIEW)) == Autellix.level(16000)


def test_starvation_is_judged_by_wait_over_service() -> None:
    """Promotion once a call's wait reaches its program's service time: a program served
    little is promoted after a short wait, a long-served one only after a long wait."""
    a = Autellix()
    on(a, arrive("small", 0, 1000), 0.0, VIEW)
    on(a, arrive("big", 0, 1000), 0.0, VIEW)
    on(a, finish("small", 0, 1000, 0), 10.0, VIEW)  # 1000 tokens of service
    on(a, finish("big", 0, 1000, 9000), 10.0, VIEW)  # 10000
    on(a, arrive("small", 1, 1100), 10.0, VIEW)
    on(a, arrive("big", 1, 10100), 10.0, VIEW)
    # the replica has served 11000 tokens since t=0, so at time t a service of s tokens is
    # s * t / 11000 seconds: small (1000) is promoted once t - 10 >= t / 11, i.e. t >= 11;
    # big (10000) once t - 10 >= 10 t / 11, i.e. t >= 110
    assert on(a, Tick(), 11.0, VIEW) == [SetPriority("small", 0)]
    assert on(a, Tick(), 109.0, VIEW) == []
    assert on(a, Tick(), 110.0, VIEW) == [SetPriority("big", 0)]


def test_preemption_swaps_to_cpu_memory_and_loads_back() -> None:
    """No --tiers: the autellix engine still has vLLM's 4 GiB swap space; preempted calls'
    KV goes there and comes back by load, and only preempted KV goes there."""
    w = agent_workload(16, seed=5, steps=(3, 6))
    cfg = SimConfig(kv_blocks=1200, max_num_seqs=32)
    out = simulate(w, "autellix", cfg, concurrency=16, check=True)
    assert out.preemptions > 0
    assert 0 < out.extra["tier_host_loaded_bytes"] <= out.extra["tier_host_offloaded_bytes"]
    plain = simulate(w, "fcfs-lru", cfg, concurrency=16)
    assert "tier_host_offloaded_bytes" not in plain.extra  # stock vLLM v1: recompute only
