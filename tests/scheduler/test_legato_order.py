"""The engine order of Legato's programs: admission order, and what a release through a tool
does to a program's place in it (`AdmissionControl._activate`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from legato.scheduler.events import (
    CallArrived,
    CallFinished,
    CallHints,
    LLMCall,
    RunStarted,
    ToolFinished,
    ToolStarted,
)
from legato.scheduler.legato_policy import Legato
from legato.scheduler.policy import Decision, Dispatch, Pause, Pin, ReplicaView, TierView
from legato.sim.cost_model import CostModel
from legato.sim.hardware import gpu
from legato.sim.models import model


class _View:
    """One A10 replica with the cost model's engine facts (a pool that never gates), optionally
    a host tier; `gating`: a KV read per context token as dear as the weights (it gates)."""

    def __init__(self, tiers: tuple[TierView, ...] = (), gating: bool = False) -> None:
        facts = list(CostModel(model("llama-3.1-8b"), gpu("a10")).engine_facts())
        if gating:
            facts[3] = facts[2]
        self.facts = tuple(facts)
        self.tiers = tiers

    @property
    def num_replicas(self) -> int:
        return 1

    def replica(self, index: int) -> ReplicaView:
        return ReplicaView(index, 16, 2000, 2000, 1, 0, *self.facts, tiers=self.tiers)

    def cached_prefix_tokens(self, replica: int, call_id: str) -> int:
        return 0

    def resident_tokens(self, replica: int, run_id: str) -> int:
        return 0


def _call(run: str, j: int, prompt: int) -> CallArrived:
    hints = CallHints(next_tool="user", expected_tool_latency_s=60.0)
    return CallArrived(
        LLMCall(f"{run}#{j}", run, "agent", f"step-{j}", "t0", (), hints=hints, num_prompt_tokens=prompt)
    )


def _priority(out: list[Decision], call_id: str) -> int:
    return next(d.priority for d in out if isinstance(d, Dispatch) and d.call_id == call_id)


def _return_after_a_long_tool(view: _View, policy: Legato | None = None) -> tuple[int, int, list[Decision]]:
    """`a` runs a call, then a tool far longer than holding its KV is worth (fitted from three
    samples); `b` arrives meanwhile; then `a` returns. Returns (a's, b's priority, decisions
    at the tool start)."""
    policy = Legato() if policy is None else policy
    for k in range(3):
        policy.on_event(ToolFinished("x", "user", 60.0 * (1.2 if k else 0.8)), 0.0, view)
    policy.on_event(RunStarted("a", "agent", "t0"), 0.0, view)
    policy.on_event(_call("a", 0, 6000), 0.0, view)
    policy.on_event(CallFinished("a#0", "a", 6000, 200, 0, "stop"), 5.0, view)
    at_tool = list(policy.on_event(ToolStarted("a", "user", 60.0), 5.0, view))
    policy.on_event(RunStarted("b", "agent", "t0"), 6.0, view)
    b = _priority(list(policy.on_event(_call("b", 0, 6000), 6.0, view)), "b#0")
    policy.on_event(ToolFinished("a", "user", 60.0), 65.0, view)
    a = _priority(list(policy.on_event(_call("a", 1, 6400), 65.0, view)), "a#1")
    return a, b, at_tool


def test_a_program_released_to_be_recomputed_queues_behind_programs_admitted_since() -> None:
    # No tier: the way back is recomputing its context, so to the engine it is a new request.
    a, b, at_tool = _return_after_a_long_tool(_View())
    assert [d for d in at_tool if isinstance(d, Pause)] and not [d for d in at_tool if isinstance(d, Pin)]
    assert a > b


def test_a_program_parked_in_a_tier_keeps_its_place() -> None:
    # A host tier with room: its KV comes back by a load, and it keeps its admission order.
    host = TierView("host", 25e9, 20e-6, 1e12, 1e12)
    a, b, at_tool = _return_after_a_long_tool(_View((host,)))
    assert [d for d in at_tool if isinstance(d, Pause)]
    assert a < b


def test_on_a_gating_replica_a_released_program_keeps_its_place() -> None:
    # The budget keeps the engine within its pool: nothing is preempted for the returning call,
    # and the order finishes programs in turn.
    a, b, at_tool = _return_after_a_long_tool(_View(gating=True))
    assert [d for d in at_tool if isinstance(d, Pause)]
    assert a < b


def test_before_any_call_cycle_is_measured_the_mean_call_time_orders_the_queue() -> None:
    # Single-call programs never measure a cycle between calls: the time a call takes stands
    # in, so a much larger program that entered a moment earlier still queues behind.
    from legato.scheduler.legato_run import WAITING, Run

    policy = Legato()
    policy.rates.record_call(10.0)
    for name, at, prompt in (("big", 0.0, 8000), ("small", 1.0, 1000)):
        r = policy._runs[name] = Run(name, "agent", "t0", None, state=WAITING)
        r.live[f"{name}#0"] = prompt
        policy._enqueue(r, at)
    head = policy._waiting.head("t0", policy._runs)
    assert head is not None and head.run_id == "small"


def test_a_program_parked_in_a_tier_that_expects_more_calls_than_a_new_one_queues_behind() -> None:
    # Past runs: most made one call, a few many. `a` has made one call, so it is likely a long
    # one: least expected remaining work first puts `b`, which came since, ahead of it, and `c`,
    # which comes after it returned, too.
    host = TierView("host", 25e9, 20e-6, 1e12, 1e12)
    view = _View((host,))
    policy = Legato()
    for length in (1, 1, 1, 1, 1, 1, 5, 7):
        policy.predictor.history.record_run("agent", length)
    a, b, at_tool = _return_after_a_long_tool(view, policy)
    assert [d for d in at_tool if isinstance(d, Pause)]
    assert a > b
    policy.on_event(RunStarted("c", "agent", "t0"), 66.0, view)
    assert _priority(list(policy.on_event(_call("c", 0, 6000), 66.0, view)), "c#0") < a


def test_a_growing_context_counts_at_the_size_it_will_reach() -> None:
    # Past runs of `agent` made 4 calls and grew 2,000 tokens a call. `fresh` has made none and
    # holds 2,000 tokens now; `late` has made 3 and holds 9,000. At today's sizes `fresh` looks
    # cheaper (4 x 2,000 against 1 x 9,000), but its four calls will hold 4,000 ... 10,000
    # tokens (28,000 in all) against `late`'s one at 11,000: `late` goes first.
    from legato.scheduler.legato_run import PAUSED, WAITING, Run

    policy = Legato()
    policy.rates.record_call(10.0)
    policy._queued_fp = [5000.0 * 1000, 1000]  # footprints queued so far: 5,000 tokens on average
    for _ in range(3):
        policy.predictor.history.record_run("agent", 4)
        policy.predictor.history.record_growth("agent", 2000.0)
    runs = (("fresh", WAITING, 0, 2000), ("late", PAUSED, 3, 9000))
    for name, state, done, prompt in runs:
        r = policy._runs[name] = Run(name, "agent", "t0", None, state=state)
        r.calls_done = done
        r.live[f"{name}#{done}"] = prompt
        policy._enqueue(r, 0.0)
    head = policy._waiting.head("t0", policy._runs)
    assert head is not None and head.run_id == "late"


def test_a_program_whose_shared_prefix_is_held_is_admitted_first() -> None:
    # `cold` came first; `warm` came a second later, but its 3,000-token shared prefix (its
    # database schema) is already held on the replica by an admitted program, while `cold`'s is
    # not. Admitting `warm` adds 3,000 tokens less, worth a cycle (10 s) x 3,000 / the mean
    # footprint (2,000): 15 s more than the second between them. `warm` goes first.
    from legato.scheduler.legato_run import WAITING, Run

    policy = Legato()
    policy._ensure_capacity(_View(gating=True))
    policy.rates.record_call(10.0)
    schema_a, schema_b = (("prefix", "t0", "sql", 3000), 3000.0), (("prefix", "t0", "sql", 3001), 3001.0)
    policy.budget.admit("holder", 0, 1000.0, [schema_a])
    for name, shared, at in (("cold", schema_b, 0.0), ("warm", schema_a, 1.0)):
        r = policy._runs[name] = Run(name, "sql", "t0", None, state=WAITING)
        r.shared.append(shared)
        r.live[f"{name}#0"] = 2000
        policy._enqueue(r, at)
    head = policy._waiting.head("t0", policy._runs)
    assert head is not None and head.run_id == "cold"  # by key alone
    assert policy._cheapest_start(head, {}, _View(gating=True), 1.0) is policy._runs["warm"]
    # Taken from mid-queue, `warm` leaves a stale entry: `cold` stays the head.
    out: list[Decision] = []
    policy._admit(1.0, _View(gating=True), out)
    assert policy._runs["warm"].state != WAITING
    head = policy._waiting.head("t0", policy._runs)
    assert head is None or head.run_id == "cold"


def test_choosing_the_next_program_reads_the_queue_only_as_far_as_a_key_could_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 2,000 programs wait; none has a shared part, so every rank is its key and the head wins.
    # The choice must not read the whole queue at every admission (`bench decide` went from
    # 28 to 360 us per event at 10,000 programs when it did).
    from legato.scheduler.legato_run import WAITING, Run

    policy = Legato()
    policy._ensure_capacity(_View(gating=True))
    policy.rates.record_call(10.0)
    for i in range(2000):
        r = policy._runs[f"p{i}"] = Run(f"p{i}", "agent", "t0", None, state=WAITING)
        r.live[f"p{i}#0"] = 1000 + i
        policy._enqueue(r, float(i))
    read = 0
    in_order = policy._waiting.in_order

    def counting(tenant: str, runs: Mapping[str, Run]) -> Iterator[tuple[float, int, Run]]:
        nonlocal read
        for entry in in_order(tenant, runs):
            read += 1
            yield entry

    monkeypatch.setattr(policy._waiting, "in_order", counting)
    head = policy._waiting.head("t0", policy._runs)
    assert head is not None
    assert policy._cheapest_start(head, {}, _View(gating=True), 0.0) is head
    assert read <= 2
