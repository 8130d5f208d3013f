"""The one decision applier: a policy's decisions, checked and routed to a `ReplicaControl`.

Every driver of a pure policy — the simulator (`legato.sim.control`), the real-time runtime
(`legato.scheduler.engine_control`) and the decision-cost bench — hands the decisions a policy
returned to `DecisionApplier.apply`. The applier owns what must be the same everywhere:

- the meaning of each decision (one typed `ReplicaControl` method per kind, see
  `legato.scheduler.policy` for the semantics),
- the checks (a `Dispatch` of a call that is not waiting for one, or to a replica that does not
  exist, a `Prefetch` to a replica that does not exist),
- what a bad decision does: it is a policy bug, so `BadDecision` is raised, after the batch's
  other decisions have been applied (one bad decision must not strand the calls the same
  answer dispatched). The simulator lets it end the run; the runtime counts it
  (`stats["bad_decisions"]`) and logs it, like any other policy failure, because a policy bug
  must not take a server down.
- an optional record of the decisions in the order they were handed to the replicas (tests
  compare the record of two drivers), and an optional `journal` (`DecisionLog`: what `/ui`
  shows), told each applied decision with the event it answered.

What a replica can or cannot do is declared, not coded around: `ReplicaTraits`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from legato.scheduler.decision_log import DecisionLog
from legato.scheduler.policy import (
    Decision,
    Dispatch,
    NextUse,
    Pause,
    Pin,
    Prefetch,
    Resume,
    SetPriority,
    Unpin,
)


class BadDecision(ValueError):
    """A policy returned decisions that cannot be applied (a policy bug); `problems` lists them."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ReplicaTraits:
    """What the replicas under a `ReplicaControl` can do with a decision.

    `can_preempt_running`: `Pause` sends the run's *running* calls back to the queue (the
    simulated replica swaps or recomputes them, as vLLM's scheduler can). The `Engine` protocol
    has no such operation, so on real engines a running call finishes; only its queued calls
    are held.
    `can_rerank_queued`: `SetPriority` re-ranks the run's calls that wait in a replica's queue
    (the simulated replica re-heaps them; real engines announcing `Capability.PRIORITY` get
    them aborted and resubmitted with the new priority).
    `has_tiers`: `Prefetch` can bring offloaded KV back; without tiers it is ignored.
    """

    can_preempt_running: bool
    can_rerank_queued: bool = True
    has_tiers: bool = False


class ReplicaControl(Protocol):
    """The typed control surface a driver exposes: one method per decision kind.

    The applier has checked a decision before it calls a method (the call is waiting for a
    dispatch, the replica index exists). A run or call the replicas do not know (already
    finished) is a no-op there, never an error: decisions may trail the events they answer."""

    @property
    def traits(self) -> ReplicaTraits: ...

    @property
    def num_replicas(self) -> int: ...

    def awaits_dispatch(self, call_id: str) -> bool:
        """The call has arrived and has not been dispatched yet."""
        ...

    def dispatch(self, call_id: str, replica: int, priority: int) -> None: ...

    def set_priority(self, run_id: str, priority: int) -> None: ...

    def pause(self, run_id: str, evict: bool) -> None:
        """`evict` False: hold the run's calls only (a router-level pause)."""
        ...

    def resume(self, run_id: str) -> None: ...

    def pin(self, run_id: str, ttl_s: float) -> None: ...

    def unpin(self, run_id: str) -> None: ...

    def next_use(self, run_id: str, at_s: float) -> None: ...

    def prefetch(self, run_id: str, replica: int) -> None: ...


class DecisionApplier:
    """Applies decisions to one `ReplicaControl`; see the module docstring."""

    def __init__(
        self,
        control: ReplicaControl,
        *,
        record: list[Decision] | None = None,
        journal: DecisionLog | None = None,
    ) -> None:
        self.control = control
        self.record = record
        self.journal = journal

    def apply(self, decisions: Iterable[Decision], cause: object = None) -> None:
        """`cause`: the event the policy answered (the journal's reason; nothing else reads it)."""
        bad: list[str] = []
        for d in decisions:
            problem = self._apply_one(d)
            if problem is not None:
                bad.append(problem)
            elif self.journal is not None:
                self.journal.note(d, cause)
        if bad:
            raise BadDecision(bad)

    def _apply_one(self, d: Decision) -> str | None:
        c = self.control
        if isinstance(d, Dispatch):
            if not c.awaits_dispatch(d.call_id):
                return f"dispatched unknown or already dispatched call {d.call_id!r}"
            if not 0 <= d.replica < c.num_replicas:
                return f"dispatched {d.call_id!r} to replica {d.replica} (have {c.num_replicas})"
        elif isinstance(d, Prefetch):
            if not 0 <= d.replica < c.num_replicas:
                return f"Prefetch to replica {d.replica}: there are {c.num_replicas} replicas"
        elif not isinstance(d, SetPriority | Pause | Resume | Pin | Unpin | NextUse):
            return f"unknown decision {d!r}"
        if self.record is not None:
            self.record.append(d)
        if isinstance(d, Dispatch):
            c.dispatch(d.call_id, d.replica, d.priority)
        elif isinstance(d, SetPriority):
            c.set_priority(d.run_id, d.priority)
        elif isinstance(d, Pause):
            c.pause(d.run_id, d.evict)
        elif isinstance(d, Resume):
            c.resume(d.run_id)
        elif isinstance(d, Pin):
            c.pin(d.run_id, d.ttl_s)
        elif isinstance(d, Unpin):
            c.unpin(d.run_id)
        elif isinstance(d, NextUse):
            c.next_use(d.run_id, d.at_s)
        else:
            c.prefetch(d.run_id, d.replica)
        return None


__all__ = ["BadDecision", "DecisionApplier", "ReplicaControl", "ReplicaTraits"]
