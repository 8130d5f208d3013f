"""`continuum` pins what Continuum specifies (Li et al., arXiv:2511.02230; Equation 2, the v6
cold-start rules of section 4.2, Algorithm 1, as reconstructed in
github.com/burninglhw/vllm-continuum `docs/continuum-paper.md`): the TTL is tau* = argmax
F(tau) x B - tau over the tool's empirical latency CDF F (not a fixed multiple of the mean),
an exponential(1 s) prior and then the pooled CDF at cold start, and pins give way, latest
program first, when memory runs out."""

from __future__ import annotations

import math

from legato.scheduler.baselines.continuum import COLD_START_K, Continuum, best_ttl, prior_ttl
from legato.scheduler.events import CallFinished, RunStarted, ToolFinished, ToolStarted
from legato.scheduler.policy import Dispatch, Pin
from legato.sim import SimConfig
from legato.sim.engine import DONE, PREFILL, WAITING, SimEngine, SimRequest
from legato.sim.kv_pool import KVPool
from legato.sim.workload import Segment
from tests.scheduler.baseline_helpers import FakeView, arrive, finish, on


def test_tau_star_is_the_argmax_of_equation_2() -> None:
    """tau* = argmax F(tau) x B - tau over {0} and the observed latencies."""
    lat = sorted([0.5] * 4 + [1.0] * 4 + [60.0] * 2)  # 80% return within 1 s
    assert best_ttl(lat, benefit_s=100.0) == 1.0  # 0.8 x 100 - 1 = 79 > 100 - 60 = 40
    assert best_ttl(lat, benefit_s=400.0) == 60.0  # 400 - 60 = 340 > 0.8 x 400 - 1 = 319
    assert best_ttl(lat, benefit_s=10.0) == 1.0  # 0.8 x 10 - 1 = 7 > 0.4 x 10 - 0.5 = 3.5
    assert best_ttl(lat, benefit_s=0.9) == 0.0  # 0.4 x 0.9 - 0.5 < 0: not worth a pin
    # the mean (12.6 s) does not set it: min(30 s, 2 x mean) would be 25.2 s
    assert best_ttl(lat, benefit_s=10.0) != min(30.0, 2 * sum(lat) / len(lat))


def test_cold_start_prior_then_pooled_then_per_tool() -> None:
    assert prior_ttl(0.5) == 0.0 and prior_ttl(math.e) == 1.0  # mu log(B / mu), mu = 1 s
    view = FakeView([1000])
    c = Continuum()
    on(c, RunStarted("a", "p", "t"), 0.0, view)
    assert on(c, arrive("a", 0, 4000), 0.0, view) == [Dispatch("a#0", 0, priority=1)]
    on(c, finish("a", 0, 4000, 1000, cached=0), 10.0, view)  # 400 prompt tok/s measured
    benefit = 5000 / 400  # reload of the 5000-token context: 12.5 s
    assert c.reload_s("a", 10.0) == benefit
    # cold start: exponential prior
    assert on(c, ToolStarted("a", "bash"), 10.0, view) == [Pin("a", prior_ttl(benefit))]
    # a call returning to its live pin goes ahead of program-level FCFS
    assert on(c, arrive("a", 1, 5100), 11.0, view) == [Dispatch("a#1", 0, priority=0)]
    for _ in range(COLD_START_K + 1):
        on(c, ToolFinished("a", "grep", 0.2), 12.0, view)
    # past K returns in all, but bash has none: the pooled CDF (all 0.2 s) sets it
    assert on(c, ToolStarted("a", "bash"), 12.0, view) == [Pin("a", 0.2)]
    for d in [0.5] * 80 + [60.0] * 21:
        on(c, ToolFinished("a", "bash", d), 12.0, view)
    own = best_ttl(sorted([0.5] * 80 + [60.0] * 21), benefit)
    assert own == 0.5
    assert on(c, ToolStarted("a", "bash"), 12.0, view) == [Pin("a", own)]


def _engine(blocks: int) -> SimEngine:
    cfg = SimConfig()
    pool = KVPool(blocks, 16)
    return SimEngine(
        0, cfg.cost_model(), pool, max_num_batched_tokens=8192, max_num_seqs=8, pin_yield=True, check=True
    )


def _finish_and_pin(e: SimEngine, run: int, prompt: int) -> None:
    r = SimRequest(f"c{run}", run, prompt, 16, priority=run)
    e.add(r, (Segment(100 + run, prompt),), Segment(200 + run, 16))
    now = 0.0
    while r.state != DONE:
        end = e.plan(now)
        assert end is not None
        e.complete(end)
        now = end
    assert e.pin(run) is not None


def test_pins_yield_latest_program_first_when_memory_runs_out() -> None:
    """Runs 1 and 2 (2 submitted later) hold pins of ~1,000 tokens; a call needing more than
    is free arrives. The latest program's pin is released, only as many as needed, before the
    call is refused (Continuum: memory pressure releases whole pins, latest program first)."""
    e = _engine(160)  # 2,560 tokens
    _finish_and_pin(e, 1, 1000)
    _finish_and_pin(e, 2, 1000)
    big = SimRequest("c3", 3, 1200, 16, priority=3)
    e.add(big, (Segment(103, 1200),), Segment(203, 16))
    e.plan(10.0)
    assert big.state == PREFILL  # admitted at once, not after a TTL
    assert list(e.pins) == [1] and e.stats.pin_yields == 1  # run 2's pin gave way, run 1's held
    # without pin_yield the call waits for a pin to expire
    e2 = _engine(160)
    e2.pin_yield = False
    _finish_and_pin(e2, 1, 1000)
    _finish_and_pin(e2, 2, 1000)
    big2 = SimRequest("c3", 3, 1200, 16, priority=3)
    e2.add(big2, (Segment(103, 1200),), Segment(203, 16))
    e2.plan(10.0)
    assert big2.state == WAITING and len(e2.pins) == 2


def test_benefit_counts_the_queueing_wait_of_evicted_programs() -> None:
    """B = reload + eta x T: T is the mean queued -> admitted wait of calls that returned to no
    live pin (the engine reports it); eta is 1 at cold start."""
    view = FakeView([1000])
    c = Continuum()
    on(c, RunStarted("a", "p", "t"), 0.0, view)
    on(c, arrive("a", 0, 4000), 0.0, view)
    on(c, finish("a", 0, 4000, 1000), 10.0, view)  # first call: its wait does not count
    on(c, arrive("a", 1, 5000), 20.0, view)  # no pin was live: an evicted program's next call
    done = CallFinished("a#1", "a", 5000, 0, 0, "stop", queued_s=30.0)
    on(c, done, 30.0, view)
    reload = c.reload_s("a", 30.0)
    assert reload is not None
    assert c.ttl("bash", "a", 30.0) == prior_ttl(reload + 30.0)
