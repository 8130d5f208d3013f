"""Preemption on a simulated replica: which running request gives way when the KV pool cannot
hold a step (vLLM's lowest priority / newest, or SGLang's fewest output tokens), and evicting it
(recompute: its blocks are freed, cached full blocks stay reusable; with `swap` its KV moves to the
first tier) back to the queue, or parking it for a paused run. Called by `sim/engine.py`."""

from __future__ import annotations

import heapq

from legato.sim.replica_state import ReplicaState
from legato.sim.sim_request import DECODE, PREFILL, SimRequest


def fewest_output(e: ReplicaState) -> SimRequest | None:
    """SGLang's `retract_decode` victim: the running request with the fewest output tokens
    (ties: the longest prompt)."""
    best: SimRequest | None = None
    best_key = (0, 0)
    for r in e.running_requests():
        gen = r.a + e.d - r.prompt_len + 1 if r.state == DECODE else r.generated
        key = (gen, -r.prompt_len)
        if best is None or key < best_key:
            best, best_key = r, key
    return best


def pop_victim(e: ReplicaState) -> SimRequest | None:
    v = e.victims
    while v:
        _, _, ver, r = heapq.heappop(v)
        if ver == r.vver and r.state in (PREFILL, DECODE):
            return r
    return None


def evict_running(e: ReplicaState, r: SimRequest, now: float, park: bool = False) -> None:
    """Preemption: free the request's blocks (cached full blocks stay reusable; with `swap`
    they move to the first tier at once, to be loaded back on readmission) and send it back
    to the queue (or park it, for a paused run)."""
    if r.state == DECODE:
        e.leave_decode(r)
    else:
        e.prefilling.remove(r)
    e.release_blocks(r, r.computed, now)
    if e.swap and not park:
        e.pool.swap_out(r.nodes)
    r.computed = 0
    r.cidx = 0
    r.tree_blocks = 0
    r.vver += 1
    if park:
        e.park(r)
    else:
        e.enqueue(r)
