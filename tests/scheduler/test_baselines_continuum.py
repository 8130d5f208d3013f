"""`continuum` pins what Continuum specifies (Li et al., arXiv:2511.02230, section 4): the TTL
is tau* = argmax_tau F(tau) x benefit - cost x E[min(T, tau)] over the tool's empirical
latency CDF F (not a fixed multiple of the mean), cold start uses the released code's fixed
2 s (github.com/Hanchenli/vllm-continuum, `FIXED_THRESHOLD_CONTINUUM`), and pins give way,
latest program first, when memory runs out."""

from __future__ import annotations

from legato.scheduler.baselines.continuum import COLD_TTL_S, Continuum, best_ttl
from legato.scheduler.events import RunStarted, ToolFinished, ToolStarted
from legato.scheduler.policy import Dispatch, Pin
from legato.sim import SimConfig, simulate
from legato.sim.workload import CallSpec, ProgramSpec, Segment, Workload
from tests.scheduler.baseline_helpers import FakeView, arrive, finish, on


def test_tau_star_is_the_argmax_of_benefit_minus_memory_cost() -> None:
    # a bimodal tool: 80% return within 1 s, 20% take a minute
    lat = sorted([0.5] * 4 + [1.0] * 4 + [60.0] * 2)
    # cheap memory: holding through the slow mode still pays
    assert best_ttl(lat, benefit_s=10.0, cost_per_s=0.01) == 60.0
    # dearer memory: cover the fast mode only (F = 0.8 at 1 s), not the slow one
    assert best_ttl(lat, benefit_s=10.0, cost_per_s=1.0) == 1.0
    # memory dearer than any reload saves: no pin at all
    assert best_ttl(lat, benefit_s=0.1, cost_per_s=1.0) == 0.0
    # the mean (12.6 s) is not what sets it: 2 x mean capped at 30 s would be 25.2
    assert best_ttl(lat, benefit_s=10.0, cost_per_s=1.0) != min(30.0, 2 * sum(lat) / len(lat))


def test_policy_ttl_uses_the_tools_distribution_and_the_replicas_memory() -> None:
    view = FakeView([1000])  # 16,000 tokens of KV
    c = Continuum()
    on(c, RunStarted("a", "p", "t"), 0.0, view)
    assert on(c, arrive("a", 0, 4000), 0.0, view) == [Dispatch("a#0", 0, priority=1)]
    on(c, finish("a", 0, 4000, 1000, cached=0), 10.0, view)  # 4000 tokens computed in 10 s
    # cold start: no latency of this tool seen yet
    assert on(c, ToolStarted("a", "bash"), 10.0, view) == [Pin("a", COLD_TTL_S)]
    for d in [0.5] * 8 + [60.0] * 2:
        on(c, ToolFinished("a", "bash", d), 10.0, view)
    # n = 5000 tokens; R = 400 tok/s: benefit 12.5 s; cost 5000/16000 = 0.3125 per second held
    expected = best_ttl(sorted([0.5] * 8 + [60.0] * 2), 5000 / 400, 5000 / 16000)
    assert expected == 0.5
    assert on(c, ToolStarted("a", "bash"), 10.0, view) == [Pin("a", expected)]
    # with 100x the memory the slow mode is worth covering
    big = FakeView([100_000])
    assert on(c, ToolStarted("a", "bash"), 10.0, big) == [Pin("a", 60.0)]


def _program(pid: str, seg0: int, prompts: tuple[int, int], tool_s: float) -> ProgramSpec:
    s = Segment(seg0, prompts[0])
    grown = (s, Segment(seg0 + 1, 16), Segment(seg0 + 2, prompts[1] - prompts[0] - 16))
    return ProgramSpec(
        pid,
        "t",
        0.0,
        (
            CallSpec("s0", (s,), 16, seg0 + 1, tool="bash", tool_latency_s=tool_s),
            CallSpec("s1", grown, 16, seg0 + 3, deps=(0,)),
        ),
    )


def test_pins_of_later_programs_yield_when_memory_runs_out() -> None:
    """p1 (submitted after p0) pins its KV through a 50 s tool; p0's next call then needs more
    KV than is left. The later program's pin gives way at once (Continuum unpins the latest
    programs when memory is full) instead of p0 waiting out the TTL."""
    w = Workload("w", (_program("p0", 100, (800, 3000), 1.0), _program("p1", 200, (1600, 1700), 50.0)))
    cfg = SimConfig(kv_blocks=260, max_num_seqs=8)  # 4,160 tokens
    out = simulate(w, "continuum", cfg, concurrency=2, check=True)
    assert out.extra["pin_yields"] >= 1
    p0 = next(p for p in out.programs if p.program_id == "p0")
    assert p0.finish_s < 1.0 + COLD_TTL_S  # it did not wait for p1's pin to expire
    # and a program never takes memory from an earlier program's pin
    w2 = Workload("w", (_program("p0", 100, (1600, 1700), 50.0), _program("p1", 200, (800, 3000), 1.0)))
    out2 = simulate(w2, "continuum", cfg, concurrency=2, check=True)
    assert out2.extra["pin_yields"] == 0
