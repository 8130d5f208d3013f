"""Per replica: keep a working set within the KV pool, or let the engine pack its memory itself.

Why: on a replica whose decode steps are weight-bound (`legato_admission.gates` is False: the
whole pool reads faster than the weights), every sequence in the batch is nearly free
throughput, so the policy lets the engine fill its memory in admission order rather than hold
programs back on a projection. That pays only while the engine keeps what it computed. Where
memory fits only a few contexts, an overcommitted engine drops whole contexts (LRU eviction of
programs between calls, preemption by recompute of running calls) and computes them again:
a long context dropped once costs seconds of compute-bound prefill that serves nobody. There
the policy must do what thunderagent does: admit a working set that fits and pause the rest
whole.

The choice is measured, not configured. For each replica the meter adds up the engine seconds
spent recomputing KV the engine had already computed for a program and dropped (a call whose
prompt repeats context its program computed before, `LLMCall.reused_context_tokens`, but found
less of it on the device; priced with `EngineRates.reload_s`, the cheapest way back: the
engine's own prefill cost, or a load from a tier where one keeps dropped KV), over
the time the replica packed: gating stops the drops, so time spent gated says nothing about
what packing costs, and averaging over it would settle the choice where the two mixed regimes
cost the same rather than on the cheaper regime. A context the policy itself let go through a
tool (`pin_rule` released it: the recompute was priced and chosen, and gating would not avoid
it) is not counted. Letting the engine pack can win at most the memory the budget would leave
unused: what the admitted programs' projections reserve beyond what they hold now (output
reserves, next-call growth), a fraction `slack` of the projected total, averaged over time. In
a weight-bound decode step that memory is batch share, and the throughput it is worth follows
from the step's cost (`gate_cost`: a step reads the weights, `w`, and the batch's KV, up to `p`
for the whole pool, so a batch with a fraction `s` less KV runs steps that much cheaper and
loses less than `s` of its tokens per second). So the replica is gated while the recompute
time exceeds that share of the time it has been packing:

    lost_s > gate_cost(slack) x packing_s

Both sides are measured on the replica or read from its cost model; no constant. The choice
follows the workload's phase (it is re-made at every finished call).

One overcommit needs no measuring: the prefix parts that programs share (a system prompt, a
database schema). When the distinct shared parts of the live programs (`admission.SharedParts`)
add up to more than the memory of the replicas that pack, admitting them all at once makes the engine
evict shared prefixes that admitted programs read again, each one recomputed (or reloaded) by
every program that comes back to it, however the private contexts fare. A gate admits programs
whose shared parts fit, those whose parts are held first (`_cheapest_start`), so programs on one
schema run together while it is cached. The replica gates while that holds, whatever the meter
says.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from legato.scheduler.admission import KVBudget
from legato.scheduler.engine_rates import EngineRates
from legato.scheduler.policy import ReplicaView


@dataclass(slots=True)
class _Meter:
    since_s: float | None = None  # first call dispatched to the replica
    packing: bool = True  # the replica's current choice (`thrashing` records it)
    packing_s: float = 0.0  # serving time spent packing, up to `clock_s`
    clock_s: float | None = None  # when `packing_s` was last brought up to date
    lost_s: float = 0.0  # engine seconds spent, while packing, recomputing KV dropped after it was computed
    seen_s: float | None = None  # when the budget was last sampled
    reserved: float = 0.0  # time integral of the admitted programs' projected KV
    unused: float = 0.0  # time integral of the part of it not held
    last: tuple[float, float] = (0.0, 0.0)  # (projected, not held) at the last sample


@dataclass(slots=True)
class ThrashMeter:
    """Recompute of dropped KV per replica, and the gate-or-pack choice it implies."""

    _meters: dict[int, _Meter] = field(default_factory=dict)
    _released: set[str] = field(default_factory=set)  # runs the policy let go since their last call

    def released(self, run: str) -> None:
        """The policy let the run's KV go (a pause, a release through a tool): its next call's
        recompute was chosen (`pin_rule` priced it), not thrash."""
        self._released.add(run)

    def forget(self, run: str) -> None:
        self._released.discard(run)

    def dispatched(self, replica: int, now: float) -> None:
        m = self._meters.setdefault(replica, _Meter())
        if m.since_s is None:
            m.since_s = now

    def call_finished(
        self, run: str, view: ReplicaView, rates: EngineRates, reused: float, cached: float
    ) -> None:
        """A call of `run` whose prompt starts with `reused` tokens its program computed before
        found `cached` of them on the device (block granularity: up to a block short is not a
        loss); the rest came back the cheapest way."""
        if run in self._released:
            self._released.discard(run)
            return
        if reused - cached <= view.block_size:
            return
        m = self._meters.setdefault(view.replica, _Meter())
        cost = rates.reload_s(view, cached, reused)
        if cost and m.packing:
            m.lost_s += cost

    def lost_fraction(self, replica: int, now: float) -> float:
        """Share of the replica's time spent packing that went to recomputing dropped KV."""
        m = self._meters.get(replica)
        if m is None or m.since_s is None:
            return 0.0
        if m.packing:
            m.packing_s += now - (m.since_s if m.clock_s is None else m.clock_s)
        m.clock_s = now
        return m.lost_s / m.packing_s if m.packing_s > 0.0 else 0.0

    def slack(self, replica: int, now: float, budget: KVBudget) -> float:
        """Time-averaged fraction of the admitted programs' projected KV that they do not hold:
        the memory a gate at the pool's capacity reserves and leaves unused. Averaged over the
        replica's serving time, so that it is a property of the workload rather than of the
        moment (it is sampled at every finished call)."""
        m = self._meters.setdefault(replica, _Meter())
        if m.seen_s is not None and now > m.seen_s:
            dt = now - m.seen_s
            m.reserved += m.last[0] * dt
            m.unused += m.last[1] * dt
        m.seen_s = now
        peak = max(budget.used[replica], default=0.0)
        m.last = (peak, max(0.0, peak - budget.current[replica]))
        return m.unused / m.reserved if m.reserved > 0.0 else 0.0

    def gated_share(self) -> float:
        """Share of the metered replicas' serving time (up to each one's last finished call)
        spent gated: a report of which regime was chosen, and for how long."""
        served = gated = 0.0
        for m in self._meters.values():
            if m.since_s is None or m.clock_s is None:
                continue
            span = m.clock_s - m.since_s
            served += span
            gated += span - m.packing_s
        return gated / served if served > 0.0 else 0.0

    def thrashing(
        self, replica: int, now: float, budget: KVBudget, view: ReplicaView, shared_overflow: bool = False
    ) -> bool:
        """Does recomputing dropped KV cost the replica more than gating would, or do the live
        programs' shared parts overflow the memory that packs (`shared_overflow`, see the module
        docstring)? The answer is the replica's choice from now on."""
        lost = self.lost_fraction(replica, now)
        gate = lost > gate_cost(self.slack(replica, now, budget), view) or shared_overflow
        self._meters.setdefault(replica, _Meter()).packing = not gate
        return gate


def gate_cost(slack: float, view: ReplicaView) -> float:
    """Share of decode throughput lost when the batch holds a fraction `slack` less KV: tokens
    per step shrink with the batch, the step's time only by its KV read. With `w` the step's
    fixed cost and `p` its KV read for the whole pool, throughput at pool share `x` is
    x / (w + p x). Without the cost model's facts, memory counts as batch share one for one."""
    if view.decode_step_s is None or not view.decode_s_per_ctx_token:
        return slack
    w = view.decode_step_s
    p = view.total_blocks * view.block_size * view.decode_s_per_ctx_token
    kept = 1.0 - slack
    return 1.0 - kept * (w + p) / (w + p * kept)
