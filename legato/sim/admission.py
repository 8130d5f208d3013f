"""Admission on a simulated replica: queued requests join the step in (priority, arrival) order
while seats (`max_num_seqs`), the token budget and KV blocks last, each from its prefix-cache hit
(at most prompt - 1 tokens, so the last token is always recomputed, as vLLM does), loading from
KV tiers when the cost model prefers it, and under SGLang's conservative output reserve when the
policy declares `reserve_output`. Called by `SimEngine.plan` (`sim/engine.py`)."""

from __future__ import annotations

import heapq

from legato.sim.replica_state import ReplicaState
from legato.sim.sim_request import PREFILL, WAITING, SimRequest


def admit(e: ReplicaState, now: float, budget: int, chunks: list[tuple[SimRequest, int]]) -> int:
    pool = e.pool
    bs = e.bs
    waiting = e.waiting
    room = 0.0  # tokens a reserve_output engine may still admit this round
    if e.reserve is not None:
        room = pool.available * bs - e.reserve.running_tokens(e.running, e.generated_running())
    admitted = 0
    while waiting and budget > 0 and e.running < e.max_seqs:
        _, _, qver, r = waiting[0]
        if qver != r.qver or r.state != WAITING:
            heapq.heappop(waiting)
            continue
        if r.run in e.paused:
            heapq.heappop(waiting)
            e.n_waiting -= 1
            e.park(r)
            continue
        hit_blocks, stop = pool.acquire(r.nodes, r.run)
        target = r.prefill_target
        cap = (target - 1) // bs
        hit = min(hit_blocks, cap) * bs
        dev_blocks = hit // bs
        plan = None
        if pool.tiers is not None and hit_blocks < cap:
            plan = pool.tiers.plan(r.nodes, hit, cap, e.prefill_s)
            hit = plan.recompute_from  # loaded blocks count as a prefix hit
        c = min(target - hit, budget)
        need = -(-(hit + c) // bs) - dev_blocks  # loaded blocks need device blocks too
        if need > pool.available:
            e.yield_pins(need, now)
        cost = 0.0
        if e.reserve is not None:
            cost = (target - hit) + e.reserve.new_tokens()
            if cost > room and (e.running or admitted):
                pool.release(r.nodes, None)
                break  # SGLang: no room left for this request's output to come
        if need > pool.available:
            pool.release(r.nodes, None)
            break
        room -= cost
        admitted += 1
        heapq.heappop(waiting)
        e.n_waiting -= 1
        pool.allocate(need)
        if plan is not None and plan.loads:
            assert pool.tiers is not None
            e.stall_until = max(e.stall_until, pool.tiers.charge(plan))
            _, stop = pool.commit(r.nodes, stop, hit)
        landed = e.prefetched.pop(r.run, None)
        if landed is not None:
            e.stall_until = max(e.stall_until, landed)
        r.state = PREFILL
        r.computed = hit
        r.tree_blocks = hit // bs
        r.cidx = stop
        if r.hit_tokens < 0:
            r.hit_tokens = min(hit, r.prompt_len)
            r.first_admit_s = now
            e.stats.cached_prompt_tokens += r.hit_tokens
        e.admit_count += 1
        r.admit_seq = e.admit_count
        r.vver += 1
        e.push_victim(r)
        e.prefilling.append(r)
        chunks.append((r, c))
        budget -= c
        if r.run in e.pins:
            e.unpin(r.run, now=now)
    return budget
