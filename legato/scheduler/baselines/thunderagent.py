"""`thunderagent`: program-aware pause/resume at tool boundaries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from legato.scheduler.events import CallArrived, CallFinished, RunFinished, ToolFinished, ToolStarted
from legato.scheduler.policy import (
    BasePolicy,
    ClusterView,
    Decision,
    Dispatch,
    Pause,
    PolicyTraits,
    Resume,
)

THRESHOLD = 0.9  # fraction of a replica's KV capacity the active programs may fill
TICK_S = 0.5


@dataclass(slots=True)
class _Prog:
    replica: int
    tokens: int = 0  # context the program holds (last prompt + output)
    acting_since: float | None = None  # tool running since (None: reasoning or idle)
    paused: bool = False
    held: list[str] | None = None  # calls that arrived while paused


class ThunderAgent(BasePolicy):
    """Reproduces ThunderAgent's program scheduler (Kang et al., 2026): each program is
    REASONING (an LLM call in flight) or ACTING (a tool running), ACTIVE or PAUSED. A replica's
    KV demand is estimated as the tokens of its reasoning programs plus those of its acting
    programs decayed by 2^-t (t = seconds the tool has run: the longer it runs, the less its
    KV is worth keeping). Above the threshold it pauses acting programs, shortest first, so the
    engine may evict their KV instead of thrashing the running ones; when demand drops it resumes
    paused programs smallest first while they fit (best-fit packing). New programs are placed on
    the replica with the least estimated demand and wait, paused, when none has room.

    Simplifies: one threshold for pause and resume (no hysteresis band); token counts come from
    finished calls (the running call's growth is not tracked); paused programs' KV is dropped
    rather than offloaded; tool-environment management is out of scope."""

    name = "thunderagent"
    traits = PolicyTraits(eviction="lru", tick_s=TICK_S)

    def __init__(self) -> None:
        self._progs: dict[str, _Prog] = {}

    def _demand(self, replica: int, now: float) -> float:
        total = 0.0
        for p in self._progs.values():
            if p.replica != replica or p.paused:
                continue
            if p.acting_since is None:
                total += p.tokens
            else:
                total += p.tokens * 2.0 ** (-(now - p.acting_since))
        return total

    def _capacity(self, view: ClusterView, replica: int) -> float:
        r = view.replica(replica)
        return THRESHOLD * r.total_blocks * r.block_size

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        call = event.call
        p = self._progs.get(call.run_id)
        out: list[Decision] = []
        if p is None:
            replica = min(range(view.num_replicas), key=lambda i: (self._demand(i, now), i))
            p = _Prog(replica, tokens=call.prompt_len)
            self._progs[call.run_id] = p
            if self._demand(replica, now) + p.tokens > self._capacity(view, replica):
                p.paused = True
                out.append(Pause(call.run_id))
        p.tokens = max(p.tokens, call.prompt_len)
        p.acting_since = None
        if p.paused:
            p.held = [*(p.held or []), call.call_id]
            return out
        out.append(Dispatch(call.call_id, p.replica))
        return out

    def on_call_finished(self, event: CallFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        p = self._progs.get(event.run_id)
        if p is not None:
            p.tokens = event.prompt_tokens + event.output_tokens
        return ()

    def on_tool_started(self, event: ToolStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        p = self._progs.get(event.run_id)
        if p is None:
            return ()
        p.acting_since = now
        return self._rebalance(p.replica, now, view)

    def on_tool_finished(self, event: ToolFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        return ()

    def on_tick(self, now: float, view: ClusterView) -> Sequence[Decision]:
        out: list[Decision] = []
        for i in range(view.num_replicas):
            out.extend(self._rebalance(i, now, view))
        return out

    def on_run_finished(self, event: RunFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        p = self._progs.pop(event.run_id, None)
        return () if p is None else self._rebalance(p.replica, now, view)

    def _rebalance(self, replica: int, now: float, view: ClusterView) -> list[Decision]:
        cap = self._capacity(view, replica)
        demand = self._demand(replica, now)
        out: list[Decision] = []
        if demand > cap:
            acting = sorted(
                (p.tokens, run)
                for run, p in self._progs.items()
                if p.replica == replica and not p.paused and p.acting_since is not None
            )
            for _, run in acting:
                if demand <= cap:
                    break
                p = self._progs[run]
                demand -= p.tokens * 2.0 ** (-(now - (p.acting_since or now)))
                p.paused = True
                out.append(Pause(run))
            return out
        paused = sorted(
            (p.tokens, run) for run, p in self._progs.items() if p.replica == replica and p.paused
        )
        for tokens, run in paused:
            if demand + tokens > cap and demand > 0:
                continue
            p = self._progs[run]
            p.paused = False
            demand += tokens
            out.append(Resume(run))
            for call_id in p.held or []:
                out.append(Dispatch(call_id, replica))
            p.held = None
        return out
