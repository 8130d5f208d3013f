"""A program whose prefill would stall the running batch waits for it, a bounded time
(`legato_admission.stall_defers`, `AdmissionControl._stalls`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from legato.scheduler.events import CallArrived, LLMCall, RunStarted
from legato.scheduler.legato_admission import gates, stall_defers
from legato.scheduler.legato_policy import TICK_S, Legato
from legato.scheduler.policy import Decision, Dispatch, ReplicaView
from legato.sim.cost_model import CostModel
from legato.sim.hardware import gpu
from legato.sim.models import model

BIG, SMALL = 120_000, 1_000  # prompt tokens: a long document, a short question


class _View:
    """One replica with `running` calls in its batch and `blocks` of 16 tokens free; by
    default an H100 with room for every prompt here (it gates: its pool reads slower than the
    weights)."""

    def __init__(self, running: int, gpu_name: str = "h100", blocks: int = 40_000) -> None:
        self.facts = CostModel(model("llama-3.1-8b"), gpu(gpu_name)).engine_facts()
        self.running = running
        self.blocks = blocks

    @property
    def num_replicas(self) -> int:
        return 1

    def replica(self, index: int) -> ReplicaView:
        return ReplicaView(index, 16, self.blocks, self.blocks, self.running, 0, *self.facts)

    def cached_prefix_tokens(self, replica: int, call_id: str) -> int:
        return 0

    def resident_tokens(self, replica: int, run_id: str) -> int:
        return 0


def _start(policy: Legato, view: _View, run: str, prompt: int, now: float) -> list[Decision]:
    policy.on_event(RunStarted(run, "docs", "t0"), now, view)
    call = LLMCall(f"{run}#0", run, "docs", "ask", "t0", (), num_prompt_tokens=prompt)
    return list(policy.on_event(CallArrived(call), now, view))


def _dispatched(out: list[Decision], call_id: str) -> bool:
    return any(isinstance(d, Dispatch) and d.call_id == call_id for d in out)


def test_the_rule_waits_only_while_the_stall_outweighs_the_program_and_the_wait() -> None:
    assert stall_defers(16, 5.0, own_s=10.0, waited_s=0.0)  # 80 s of others' time against 10 s
    assert not stall_defers(16, 5.0, own_s=100.0, waited_s=0.0)  # the program is the longer
    assert not stall_defers(16, 5.0, own_s=10.0, waited_s=80.0)  # it has waited the stall out
    assert not stall_defers(0, 5.0, own_s=0.0, waited_s=0.0)  # nothing runs: nothing to stall


@given(
    running=st.integers(0, 512),
    way_in_s=st.floats(0.0, 1e4),
    own_s=st.floats(0.0, 1e6),
    waited_s=st.floats(0.0, 1e6),
)
def test_no_program_waits_longer_than_the_stall_it_would_cause(
    running: int, way_in_s: float, own_s: float, waited_s: float
) -> None:
    if stall_defers(running, way_in_s, own_s, waited_s):
        assert waited_s < running * way_in_s and own_s < running * way_in_s


def test_a_long_prompt_waits_for_the_running_calls_and_a_short_one_does_not() -> None:
    view = _View(running=16)
    assert gates(view.replica(0))
    policy = Legato()
    policy.rates.record_call(2.0)  # calls take 2 s: the cycle until one is measured
    assert _dispatched(_start(policy, view, "small", SMALL, 0.0), "small#0")
    assert not _dispatched(_start(policy, view, "big", BIG, 0.0), "big#0")
    # It waits about what its prefill would cost the 16 running calls, and no longer.
    way_in = policy.rates.recompute_s(view.replica(0), 0.0, BIG)
    assert way_in is not None and 16 * way_in > 2.0
    assert not _dispatched(list(policy.on_tick(0.9 * 16 * way_in, view)), "big#0")
    assert _dispatched(list(policy.on_tick(1.1 * 16 * way_in + TICK_S, view)), "big#0")


def test_a_long_prompt_goes_in_at_once_on_an_idle_engine() -> None:
    policy = Legato()
    policy.rates.record_call(2.0)
    assert _dispatched(_start(policy, _View(running=0), "big", BIG, 0.0), "big#0")


def test_a_packing_replica_admits_a_long_prompt_at_once() -> None:
    # An A10's pool (2,164 blocks next to 16 GB of weights) reads faster than the weights, so
    # admission never holds a program back there.
    view = _View(running=16, gpu_name="a10", blocks=2164)
    assert not gates(view.replica(0))
    policy = Legato()
    policy.rates.record_call(2.0)
    way_in = policy.rates.recompute_s(view.replica(0), 0.0, 30_000)
    assert way_in is not None and 16 * way_in > 2.0  # it would wait on a gating replica
    assert _dispatched(_start(policy, view, "big", 30_000, 0.0), "big#0")


class _Resident(_View):
    def __init__(self, running: int, resident: int) -> None:
        super().__init__(running)
        self.resident = resident

    def resident_tokens(self, replica: int, run_id: str) -> int:
        return self.resident


def test_a_paused_program_counts_only_the_context_it_must_bring_back() -> None:
    from legato.scheduler.legato_run import PAUSED, Run

    policy = Legato()
    policy.rates.record_call(2.0)
    policy._ensure_capacity(_View(running=16))
    r = policy._runs["back"] = Run("back", "docs", "t0", None, state=PAUSED, replica=0)
    r.calls_done = 1
    r.live["back#1"] = BIG
    policy._enqueue(r, 0.0)
    for resident, stalls in ((0, True), (10 * BIG, False)):  # recomputed: 16 stalled; all resident
        view = _Resident(running=16, resident=resident)
        assert policy._stalls(r, policy._stall_sites(view), view, 0.0) is stalls


class _Unknown(_View):
    def replica(self, index: int) -> ReplicaView:
        return ReplicaView(index, 16, self.blocks, self.blocks, self.running, 0)


def test_an_engine_that_declares_no_prefill_cost_admits_at_once() -> None:
    # Measured rates only bound a prefill token's cost from above (decode tokens count too), so
    # they would overstate every stall: the program goes in.
    policy = Legato()
    policy.rates.record_call(2.0)
    assert _dispatched(_start(policy, _Unknown(running=16), "big", BIG, 0.0), "big#0")
