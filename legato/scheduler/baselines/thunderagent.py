"""`thunderagent`: ThunderAgent's program-aware router, with the upstream defaults.

Reproduces `ThunderAgent-org/ThunderAgent` (Kang et al., 2026), router mode "tr":
`ThunderAgent/scheduler/router.py` (`MultiBackendRouter`) over `ThunderAgent/backend/state.py`
(`BackendState`), with `ThunderAgent/config.py`'s defaults. Every constant below is upstream's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from legato.scheduler.events import CallArrived, CallFinished, RunFinished
from legato.scheduler.policy import (
    BasePolicy,
    ClusterView,
    Decision,
    Dispatch,
    Pause,
    PolicyTraits,
    Resume,
)

BUFFER_PER_PROGRAM = 100  # backend/state.py: decode headroom reserved per active program (tokens)
SCHEDULER_INTERVAL_S = 5.0  # config.py `scheduler_interval`: the periodic check's period
ACTING_TOKEN_WEIGHT = 1.0  # config.py `acting_token_weight` (BackendState `tool_coefficient`)
RESUME_TIMEOUT_S = 1800.0  # router.py `_wait_for_resume`: a paused program is force-resumed after it


@dataclass(slots=True)
class _Prog:
    order: int  # first-seen order (deterministic tie-break)
    replica: int | None = None  # backend it is registered on; None while paused or not yet placed
    origin: int | None = None  # backend it was paused from (None: a new program)
    tokens: int = 0  # `total_tokens`: context at request time, prompt + output after it
    steps: int = 0  # `step_count`: LLM calls it has made
    reasoning: bool = True  # `ProgramStatus`: REASONING (a request pending) or ACTING (tool)
    acting_since: float = 0.0
    in_flight: int = 0  # calls dispatched and not finished
    paused: bool = False  # in the global waiting queue
    paused_at: float = 0.0
    marked: int = 0  # tokens counted in the backend's `future_paused_tokens` (0: not marked)
    held: list[str] = field(default_factory=list)  # calls that arrived while paused


class ThunderAgent(BasePolicy):
    """ThunderAgent's scheduler as upstream ships it (router mode "tr", defaults of config.py):

    - A program is REASONING while it has a request pending and ACTING after its response
      (`update_program_before_request` / `update_program_after_request`), ACTIVE on one backend
      or PAUSED in one global waiting queue shared by all backends.
    - Capacity (`BackendState.remaining_capacity`): the backend's full KV (`block_size x
      num_gpu_blocks`) minus (reasoning tokens + `acting_token_weight` x acting tokens
      - shared tokens + 100 tokens per active program). Shared tokens stay 0: upstream defines
      `BackendState.update_shared_tokens` but nothing calls it.
    - A new program is placed on the backend with the fewest active tokens that has room for it,
      but only when the waiting queue is empty; otherwise it waits in the queue
      (`_select_backend_for_new_program`).
    - Every `scheduler_interval` = 5 s (`_scheduled_check`): first resume (`_greedy_resume`):
      waiting programs in priority REASONING (step > 1) > NEW (step 1) > ACTING, each group
      smallest first, as many as fit the total remaining capacity, placed best-fit decreasing
      (largest first, onto the backend with the most room). Then, on each backend over capacity
      (`_pause_until_safe`): pause the smallest ACTING program, repeatedly; when none is left,
      mark the smallest REASONING program, which is paused when its response arrives.
    - The acting-token decay 2^-t is off (`use_acting_token_decay=False`); when turned on
      (`decay=True`) it discounts acting tokens for the resume decision only
      (`remaining_capacity_with_decay`), never for pausing.
    - A program waiting 30 min is force-resumed (`_wait_for_resume` timeout).

    A pause is a router-level pause (`Pause(evict=False)`): calls are held here, the engine is
    not told, the paused program's KV ages in its LRU like any other (upstream does nothing to
    the engine when it pauses a program).

    Differs from upstream: the pause loop stops once the marked programs' tokens cover the
    overflow (`capacity_overflow(include_future_release=True)`, what the loop's comment says it
    does; the shipped loop re-checks `remaining_capacity()`, which marking never changes, and so
    marks every REASONING program on an overflowing backend). Token counts are exact (upstream
    estimates a request's tokens from its characters until the response reports usage) and are
    not updated while a response streams."""

    name = "thunderagent"
    traits = PolicyTraits(eviction="lru", tick_s=SCHEDULER_INTERVAL_S)

    def __init__(self, *, decay: bool = False) -> None:
        self.decay = decay
        self._progs: dict[str, _Prog] = {}
        self._queue: dict[str, _Prog] = {}  # the global waiting queue, in pause order
        self._future: dict[int, int] = {}  # backend -> `future_paused_tokens`
        self._seen = 0

    # --- capacity (backend/state.py) -------------------------------------------------------

    def _capacity(self, view: ClusterView, replica: int) -> int:
        r = view.replica(replica)
        return r.total_blocks * r.block_size

    def _registered(self, replica: int) -> list[tuple[str, _Prog]]:
        return [(run, p) for run, p in self._progs.items() if p.replica == replica]

    def _remaining(self, view: ClusterView, replica: int, now: float, decay: bool = False) -> float:
        active = 0.0
        count = 0
        for _, p in self._registered(replica):
            count += 1
            if p.reasoning:
                active += p.tokens
            elif decay:
                active += p.tokens * 2.0 ** (-(now - p.acting_since))
            else:
                active += ACTING_TOKEN_WEIGHT * p.tokens
        used = active + count * BUFFER_PER_PROGRAM  # shared tokens: 0 (see the class docstring)
        return self._capacity(view, replica) - used

    # --- events ------------------------------------------------------------------------------

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        call = event.call
        p = self._progs.get(call.run_id)
        if p is None:
            self._seen += 1
            p = self._progs[call.run_id] = _Prog(self._seen)
        p.steps += 1
        p.tokens = call.prompt_len
        p.reasoning = True
        if p.paused:
            p.held.append(call.call_id)
            return ()
        if p.replica is None:
            replica = self._place_new(p, now, view)
            if replica is None:
                p.held.append(call.call_id)
                return (self._enqueue(call.run_id, p, now),)
            p.replica = replica
        p.in_flight += 1
        return (Dispatch(call.call_id, p.replica),)

    def _place_new(self, p: _Prog, now: float, view: ClusterView) -> int | None:
        """`_select_backend_for_new_program`: none while anyone waits (fairness); else the
        backend with the fewest active tokens among those with room for the program."""
        if self._queue:
            return None
        best: int | None = None
        best_tokens = 0.0
        for i in range(view.num_replicas):
            if self._remaining(view, i, now) < p.tokens + BUFFER_PER_PROGRAM:
                continue
            progs = self._registered(i)
            tokens = sum(q.tokens if q.reasoning else ACTING_TOKEN_WEIGHT * q.tokens for _, q in progs)
            if best is None or tokens < best_tokens:
                best, best_tokens = i, tokens
        return best

    def on_call_finished(self, event: CallFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        p = self._progs.get(event.run_id)
        if p is None:
            return ()
        p.in_flight -= 1
        p.tokens = event.prompt_tokens + event.output_tokens
        if p.in_flight > 0:
            return ()
        p.reasoning = False
        p.acting_since = now
        if p.marked and p.replica is not None:  # `_clear_mark_and_pause`
            self._future[p.replica] = max(0, self._future.get(p.replica, 0) - p.marked)
            p.marked = 0
            return (self._enqueue(event.run_id, p, now),)
        return ()

    def on_run_finished(self, event: RunFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        p = self._progs.pop(event.run_id, None)
        if p is None:
            return ()
        self._queue.pop(event.run_id, None)
        if p.marked and p.replica is not None:
            self._future[p.replica] = max(0, self._future.get(p.replica, 0) - p.marked)
        return ()

    def on_tick(self, now: float, view: ClusterView) -> Sequence[Decision]:
        """`_scheduled_check`: resume, then pause where over capacity."""
        out: list[Decision] = []
        self._force_resume(now, view, out)
        self._greedy_resume(now, view, out)
        for i in range(view.num_replicas):
            if self._remaining(view, i, now) < 0:
                self._pause_until_safe(i, now, view, out)
        return out

    # --- pause / resume (scheduler/router.py) ------------------------------------------------

    def _enqueue(self, run: str, p: _Prog, now: float) -> Decision:
        p.origin = p.replica
        p.replica = None
        p.paused = True
        p.paused_at = now
        self._queue[run] = p
        return Pause(run, evict=False)

    def _resume(self, run: str, p: _Prog, replica: int, out: list[Decision]) -> None:
        del self._queue[run]
        p.paused = False
        p.replica = replica
        out.append(Resume(run))
        for call_id in p.held:
            p.in_flight += 1
            out.append(Dispatch(call_id, replica))
        p.held = []

    def _pause_until_safe(self, replica: int, now: float, view: ClusterView, out: list[Decision]) -> None:
        """Smallest ACTING program first (paused now); then mark the smallest REASONING one,
        until the overflow, net of marked programs' tokens, is gone."""
        overflow = -self._remaining(view, replica, now) - self._future.get(replica, 0)
        progs = sorted(self._registered(replica), key=lambda rp: (rp[1].tokens, rp[1].order))
        for run, p in progs:
            if overflow <= 0:
                return
            if not p.reasoning:
                overflow -= ACTING_TOKEN_WEIGHT * p.tokens + BUFFER_PER_PROGRAM
                out.append(self._enqueue(run, p, now))
        for _, p in progs:
            if overflow <= 0:
                return
            if p.reasoning and not p.marked and p.replica == replica:
                p.marked = p.tokens
                self._future[replica] = self._future.get(replica, 0) + p.tokens
                overflow -= p.tokens

    def _greedy_resume(self, now: float, view: ClusterView, out: list[Decision]) -> None:
        """Best-fit decreasing over backends: pick waiting programs in priority order while
        they fit the summed remaining capacity, then place the largest first onto the backend
        with the most room."""
        if not self._queue:
            return
        caps: list[tuple[float, int]] = []
        for i in range(view.num_replicas):
            room = self._remaining(view, i, now, decay=self.decay)
            if room > BUFFER_PER_PROGRAM:
                caps.append((room, i))
        total = sum(room for room, _ in caps)
        if not caps:
            return
        waiting = sorted(self._queue.items(), key=lambda rp: (rp[1].tokens, rp[1].order))
        reasoning = [rp for rp in waiting if rp[1].steps > 1 and rp[1].reasoning]
        new = [rp for rp in waiting if rp[1].steps == 1]
        acting = [rp for rp in waiting if rp[1].steps > 1 and not rp[1].reasoning]
        chosen: list[tuple[str, _Prog]] = []
        cumulative = 0.0
        for run, p in reasoning + new + acting:
            need = p.tokens + BUFFER_PER_PROGRAM
            if cumulative + need <= total:
                chosen.append((run, p))
                cumulative += need
        if not chosen:
            return
        chosen.sort(key=lambda rp: (-rp[1].tokens, rp[1].order))
        caps.sort(key=lambda c: (-c[0], c[1]))
        smallest = chosen[-1][1].tokens + BUFFER_PER_PROGRAM
        for run, p in chosen:
            if not caps or smallest > caps[0][0]:
                break
            need = p.tokens + BUFFER_PER_PROGRAM
            if need > caps[0][0]:
                continue
            room, replica = caps[0]
            self._resume(run, p, replica, out)
            if room - need > BUFFER_PER_PROGRAM:
                caps[0] = (room - need, replica)
                caps.sort(key=lambda c: (-c[0], c[1]))
            else:
                caps.pop(0)

    def _force_resume(self, now: float, view: ClusterView, out: list[Decision]) -> None:
        """A program waiting `RESUME_TIMEOUT_S` goes back to its backend regardless of capacity
        (a new one to the backend with the fewest programs: `select_backend_for_new_program_default`)."""
        for run, p in list(self._queue.items()):
            if now - p.paused_at < RESUME_TIMEOUT_S:
                continue
            target = p.origin
            if target is None:
                counts = [len(self._registered(i)) for i in range(view.num_replicas)]
                target = min(range(view.num_replicas), key=lambda i: (counts[i], i))
            self._resume(run, p, target, out)
