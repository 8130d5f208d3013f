"""`lpm` pins what SGLang does (github.com/sgl-project/sglang, defaults): out of memory,
`ScheduleBatch.retract_decode` (`python/sglang/srt/managers/schedule_batch.py`) retracts the
running request with the fewest output tokens, whatever its prefix match; admission
(`PrefillAdder`, `python/sglang/srt/managers/schedule_policy.py`) keeps room for the output to
come, scaled by `new_token_ratio` (0.7 decaying to 0.7 x 0.14 over 600 steps,
`python/sglang/global_config.py`)."""

from __future__ import annotations

from legato.scheduler.baselines.lpm import Lpm
from legato.sim import SimConfig
from legato.sim.engine import DECODE, PREFILL, WAITING, SimEngine, SimRequest
from legato.sim.kv_pool import KVPool
from legato.sim.output_reserve import INIT_RATIO, MIN_RATIO_FACTOR, OutputReserve
from legato.sim.workload import Segment


def _engine(blocks: int, **traits: object) -> SimEngine:
    return SimEngine(
        0,
        SimConfig().cost_model(),
        KVPool(blocks, 16),
        max_num_batched_tokens=8192,
        max_num_seqs=16,
        check=True,
        **traits,  # type: ignore[arg-type]
    )


def _add(e: SimEngine, run: int, prompt: int, out: int, priority: int) -> SimRequest:
    r = SimRequest(f"c{run}", run, prompt, out, priority)
    e.add(r, (Segment(100 + run, prompt),), Segment(200 + run, out))
    return r


def _step(e: SimEngine, now: float) -> float:
    """One engine step (a decode jump is cut at its first step boundary)."""
    end = e.plan(now)
    assert end is not None
    end = e.truncate(now) or end
    e.complete(end)
    return end


def test_lpm_declares_sglang_engine_mechanics() -> None:
    t = Lpm().traits
    assert t.victim == "fewest-output" and t.reserve_output and t.preemption == "recompute"


def test_retraction_takes_the_fewest_output_tokens_not_the_smallest_prefix_match() -> None:
    """A (priority 0: short dispatch-time match) has decoded 100 tokens when B (priority -100:
    long match) arrives; the pool then runs out. vLLM's order (lowest priority first) would
    preempt A; SGLang retracts B, which has produced the fewest tokens."""
    for victim, preempted in (("newest", "A"), ("fewest-output", "B")):
        e = _engine(30, victim=victim)  # 480 tokens
        a = _add(e, 0, 100, 300, priority=0)
        now = 0.0
        while a.state != DECODE or a.a + e.d - a.prompt_len + 1 < 100:
            now = _step(e, now)
        b = _add(e, 1, 100, 300, priority=-100)
        while e.stats.preemptions == 0:
            now = _step(e, now)
        gone = {"A": a, "B": b}[preempted]
        kept = b if gone is a else a
        assert gone.state in (WAITING, PREFILL) and kept.state == DECODE, victim


def test_admission_keeps_room_for_the_output_to_come() -> None:
    """Three 200-token prompts, 64 tokens of output allowed each, 640 tokens of KV: the blocks
    fit all three prompts, but SGLang's admission reserves the output of each admitted one
    (64 tokens, unscaled, in the round it is admitted) and admits two."""
    for reserve, admitted in ((False, 3), (True, 2)):
        e = _engine(40, reserve_output=reserve, max_new_tokens=64)
        reqs = [_add(e, i, 200, 32, priority=0) for i in range(3)]
        e.plan(0.0)
        assert sum(r.state == PREFILL for r in reqs) == admitted, reserve


def test_new_token_ratio_decays_and_jumps_back_after_a_retraction() -> None:
    r = OutputReserve(4096)
    assert r.ratio == INIT_RATIO == 0.7
    r.decoded(300)
    assert r.min_ratio < r.ratio < INIT_RATIO
    r.decoded(10_000)
    assert r.ratio == INIT_RATIO * MIN_RATIO_FACTOR
    r.retracted(n_running=4, generated=4 * 1000)  # (4000 + 20 x 4) / (4 x 4096)
    assert abs(r.ratio - 4080 / 16384) < 1e-12
    assert r.running_tokens(2, 100) == (2 * 4096 - 100) * r.ratio
