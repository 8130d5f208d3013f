"""The pure policy interface: events in, decisions out, clock injected.

A policy object is synchronous, does no I/O and never reads a clock: every call gets `now`
(seconds, virtual in the simulator, monotonic in the runtime) and a read-only `ClusterView` of
the engines. It answers with plain-data decisions. Two drivers apply them — the simulator
(`legato.sim.driver`) and the runtime scheduler (issue 5) — so a policy is
written once and compared side by side (DESIGN.md, "policies are pure").

What a policy may see is what a real runtime knows: calls that have arrived (with their hints),
program events, and engine state. The only exception is the clairvoyant bound, which declares
`PolicyTraits.oracle` and receives a `FutureOracle` from the simulator.

Decision semantics (both drivers implement them):

- `Dispatch(call_id, replica, priority)`: send an arrived call to a replica's queue. Lower
  priority runs first (vLLM's convention); equal priorities run in dispatch order. A policy may
  hold a call and dispatch it on a later event.
- `SetPriority(run_id, priority)`: re-rank the run's queued (not yet running) calls.
- `Pause(run_id, evict)` / `Resume(run_id)`: program-level admission control. A paused run's
  queued calls are not admitted, its running calls are sent back to the queue, and (with
  `evict`, the default) its cached KV is evicted before anything else's; `evict=False` is a
  router-level pause (ThunderAgent's): the engine is not told, the run's KV ages like any other.
  Resume lets them in again. Every pause of a program is a `Pause` decision, so drivers count
  pauses in one place: the decisions they apply.
- `Pin(run_id, ttl_s)` / `Unpin(run_id)`: keep the KV of the run's last call (prompt + output)
  resident on the replica that ran it, until the TTL passes, the run's next call is admitted,
  the run finishes, or it is unpinned.
- `NextUse(run_id, at_s)`: eviction hint: the run's KV is next needed at absolute time `at_s`
  (`math.inf`: never). Engines in next-use eviction mode evict the furthest next use first.
- `Prefetch(run_id, replica)`: bring the run's offloaded KV back before its next call (tiered
  engines; engines without tiers ignore it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from legato.scheduler.events import (
    CallArrived,
    CallFinished,
    Event,
    RunFinished,
    RunStarted,
    TenantWeight,
    Tick,
    ToolFinished,
    ToolStarted,
)

# --- decisions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dispatch:
    call_id: str
    replica: int
    priority: int = 0


@dataclass(frozen=True, slots=True)
class SetPriority:
    run_id: str
    priority: int


@dataclass(frozen=True, slots=True)
class Pause:
    run_id: str
    evict: bool = True  # False: hold the run's calls only; its cached KV keeps its LRU place


@dataclass(frozen=True, slots=True)
class Resume:
    run_id: str


@dataclass(frozen=True, slots=True)
class Pin:
    run_id: str
    ttl_s: float


@dataclass(frozen=True, slots=True)
class Unpin:
    run_id: str


@dataclass(frozen=True, slots=True)
class NextUse:
    run_id: str
    at_s: float = math.inf


@dataclass(frozen=True, slots=True)
class Prefetch:
    run_id: str
    replica: int


Decision = Dispatch | SetPriority | Pause | Resume | Pin | Unpin | NextUse | Prefetch

# --- what a policy sees ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TierView:
    """A KV tier below a replica's device memory (host RAM, Redis): what loading from it costs."""

    name: str
    bandwidth: float  # bytes/s back to the device, sustained
    round_trip_s: float  # fixed latency of one (pipelined) fetch
    capacity_bytes: float
    free_bytes: float

    def load_s(self, nbytes: float) -> float:
        return self.round_trip_s + nbytes / self.bandwidth


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """One engine replica's state at the time of the event.

    The engine facts after `waiting` are declared by the driver when it knows them (the
    simulator from its cost model and tier specs); None where it does not (a real engine:
    policies then measure them online from call timings, see `legato.scheduler.engine_rates`).
    """

    replica: int
    block_size: int
    total_blocks: int
    free_blocks: int  # free or evictable (cached but unreferenced) blocks
    running: int  # calls in the running batch
    waiting: int  # calls queued (paused ones included)
    # Compute-bound prefill: seconds per prompt token (the dense layers) and per attended
    # (query, key) pair (attention), so recomputing a context of c tokens takes
    # c * prefill_s_per_token + c * c / 2 * prefill_s_per_pair.
    prefill_s_per_token: float | None = None
    prefill_s_per_pair: float | None = None
    # A decode step costs decode_step_s (weights read once, plus launch overhead) plus
    # decode_s_per_ctx_token for every context token the batch attends (its KV read).
    decode_step_s: float | None = None
    decode_s_per_ctx_token: float | None = None
    kv_bytes_per_token: float | None = None
    tiers: tuple[TierView, ...] = ()  # fastest first


@runtime_checkable
class ClusterView(Protocol):
    """Read-only view of the engines, built on demand (cheap to pass, costly only when read)."""

    @property
    def num_replicas(self) -> int: ...

    def replica(self, index: int) -> ReplicaView: ...

    def cached_prefix_tokens(self, replica: int, call_id: str) -> int:
        """Leading prompt tokens of an arrived call resident in the replica's prefix cache."""
        ...

    def resident_tokens(self, replica: int, run_id: str) -> int:
        """Leading tokens of the run's last sequence (prompt + output of its latest call) still
        resident on the replica: what its next call would hit if it ran there now."""
        ...


@runtime_checkable
class FutureOracle(Protocol):
    """Exact knowledge of the future, for clairvoyant bounds only (the simulator has it)."""

    def next_use_s(self, run_id: str, now: float) -> float:
        """When the run's next LLM call arrives: `now` if one is ready or running, the end of its
        running tool step otherwise, `math.inf` when it makes no further call."""
        ...


@dataclass(frozen=True, slots=True)
class PolicyTraits:
    """What a policy needs from the engine it drives."""

    eviction: Literal["lru", "next-use"] = "lru"  # order among evictable cached blocks
    unlimited_kv: bool = False  # bound: the engine never runs out of KV blocks
    oracle: bool = False  # bound: receives a FutureOracle (simulator only)
    tick_s: float | None = None  # deliver a `Tick` this often (None: never)
    # Engine mechanics of the system a policy reproduces (the defaults are vLLM v1's):
    pin_yield: bool = False  # pins give way, latest-submitted program first, when KV runs out
    preemption: Literal["recompute", "swap"] = "recompute"  # swap: preempted KV to host swap space
    victim: Literal["newest", "fewest-output"] = "newest"  # which running request is preempted
    reserve_output: bool = False  # admit conservatively, reserving decode room (SGLang)


@runtime_checkable
class Policy(Protocol):
    name: str
    traits: PolicyTraits

    def on_event(self, event: Event, now: float, view: ClusterView) -> Sequence[Decision]: ...

    def set_oracle(self, oracle: FutureOracle) -> None:
        """Called once before the first event when `traits.oracle` is set."""
        ...


class BasePolicy:
    """Convenience base: routes each event type to a method; every method defaults to doing
    nothing, except `on_call` which must be written (an arrived call has to go somewhere)."""

    name = "base"
    traits = PolicyTraits()

    def set_oracle(self, oracle: FutureOracle) -> None:
        del oracle

    def on_event(self, event: Event, now: float, view: ClusterView) -> Sequence[Decision]:
        if isinstance(event, CallArrived):
            return self.on_call(event, now, view)
        if isinstance(event, CallFinished):
            return self.on_call_finished(event, now, view)
        if isinstance(event, ToolStarted):
            return self.on_tool_started(event, now, view)
        if isinstance(event, ToolFinished):
            return self.on_tool_finished(event, now, view)
        if isinstance(event, RunStarted):
            return self.on_run_started(event, now, view)
        if isinstance(event, RunFinished):
            return self.on_run_finished(event, now, view)
        if isinstance(event, Tick):
            return self.on_tick(now, view)
        if isinstance(event, TenantWeight):
            return self.on_tenant_weight(event, now, view)
        return ()

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        raise NotImplementedError

    def on_call_finished(self, event: CallFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        return ()

    def on_tool_started(self, event: ToolStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        return ()

    def on_tool_finished(self, event: ToolFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        return ()

    def on_run_started(self, event: RunStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        return ()

    def on_run_finished(self, event: RunFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        return ()

    def on_tick(self, now: float, view: ClusterView) -> Sequence[Decision]:
        return ()

    def on_tenant_weight(self, event: TenantWeight, now: float, view: ClusterView) -> Sequence[Decision]:
        return ()


def least_loaded(view: ClusterView) -> int:
    """The replica with the fewest running + waiting calls (lowest index on ties)."""
    best, best_load = 0, -1
    for i in range(view.num_replicas):
        r = view.replica(i)
        load = r.running + r.waiting
        if best_load < 0 or load < best_load:
            best, best_load = i, load
    return best
