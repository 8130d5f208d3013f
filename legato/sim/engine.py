"""One simulated engine replica: vLLM v1 scheduling semantics, timed by the roofline model.

Each step the scheduler (1) gives every running decode one token and running prefills chunks of
the remaining token budget, in admission order; (2) if the KV pool cannot hold the step, preempts
the lowest-priority / newest running request (recompute: its blocks are freed, cached full
blocks stay reusable until evicted, it returns to the queue with num_computed_tokens = 0);
(3) if nothing was preempted, admits queued requests in (priority, arrival) order while seats
(`max_num_seqs`), budget and blocks last, each starting from its prefix-cache hit (at most
prompt - 1 tokens, so the last token is always recomputed, as vLLM does).

Speed: decode state is kept as aggregates (count, summed context, a histogram of positions
modulo the block size, a heap of finish steps), so a step costs O(prefilling requests), and a run
of decode-only steps is planned as one *jump* of k steps (until the first request finishes or
the pool would run out), priced in closed form. A jump is cut short at the next step boundary
when an outside event (a new call, a pause, a pin) reaches the replica.

Pins (`pin`) hold a run's KV between calls. On engines whose policy declares `pin_yield`
(Continuum's), pins give way when KV runs out: before a running request is preempted and before
a queued call is refused for lack of blocks, whole pins are released, latest-submitted run
first, until the blocks fit or no pin is left.

Engine mechanics a policy declares in its `PolicyTraits` (the defaults are vLLM v1's): the
preemption victim (`victim`: vLLM's lowest priority / newest, or SGLang's fewest output tokens),
preemption by swap instead of recompute (`preemption="swap"`: the victim's KV moves to the first
tier and is loaded back), SGLang's conservative admission (`reserve_output`, see
`sim/output_reserve.py`).

Policy decisions arrive as ops (`add`, `cancel`, `pause`, `resume`, `pin`, `unpin`, `set_priority`,
`set_hint`); the driver applies them only between steps, like a real engine's input queue.

Where the parts live: `sim_request.py` (requests, states, counters), `replica_state.py` (queues,
decode aggregates and jump arithmetic, pins, block release, invariants), `admission.py`,
`preemption.py`; this module holds the ops and the step loop (`plan`, `truncate`, `complete`).
"""

from __future__ import annotations

import heapq

from legato.sim.admission import admit
from legato.sim.preemption import evict_running, fewest_output, pop_victim
from legato.sim.replica_state import ReplicaState
from legato.sim.sim_request import DECODE, DONE, PARKED, PREFILL, WAITING, SimRequest, StepStats
from legato.sim.workload import Segment

__all__ = ["DECODE", "DONE", "PARKED", "PREFILL", "WAITING", "SimEngine", "SimRequest", "StepStats"]


class SimEngine(ReplicaState):
    """One simulated replica: policy ops applied between steps, and the step loop (`plan`,
    `truncate`, `complete`) over the state and helpers of `sim/replica_state.py`."""

    def add(self, req: SimRequest, segments: tuple[Segment, ...], out_seg: Segment) -> None:
        full = (*segments, out_seg)
        prev = self.run_path.get(req.run)
        if prev is not None and len(prev[0]) <= len(full) and full[: len(prev[0])] == prev[0]:
            nodes = self.pool.extend(prev[1], full[len(prev[0]) :])
        else:
            nodes = self.pool.extend([], full)
        self.run_path[req.run] = (full, nodes)
        need = -(-(req.prompt_len + req.out_len) // self.bs)
        if need > self.pool.capacity:
            raise ValueError(
                f"call {req.call_id} needs {need} KV blocks, more than the replica's {self.pool.capacity}"
            )
        req.nodes = nodes
        self._seq += 1
        req.seq = self._seq
        self.run_reqs.setdefault(req.run, []).append(req)
        self.enqueue(req)

    def set_priority(self, run: int, priority: int) -> None:
        for r in self.run_reqs.get(run, ()):
            r.priority = priority
            if r.state == WAITING:
                r.qver += 1
                heapq.heappush(self.waiting, (priority, r.seq, r.qver, r))

    def pause(self, run: int, now: float) -> None:
        if run in self.paused:
            return
        self.paused.add(run)
        for r in list(self.run_reqs.get(run, ())):
            if r.state in (PREFILL, DECODE):
                evict_running(self, r, now, park=True)
        self.pool.set_evict_first(run, True, self._tail(run))

    def resume(self, run: int) -> None:
        if run not in self.paused:
            return
        self.paused.discard(run)
        for r in self._parked.pop(run, []):
            self.n_parked -= 1
            self.enqueue(r)
        self.pool.set_evict_first(run, False, self._tail(run))

    def pin(self, run: int) -> int | None:
        """Pin the run's last path; returns the pin's version (for its expiry event)."""
        path = self.run_path.get(run)
        if path is None:
            return None
        self.unpin(run)
        self._pin_version += 1
        self.pool.acquire(path[1], run)
        self.pins[run] = (self._pin_version, path[1])
        return self._pin_version

    def prefetch(self, run: int, now: float) -> None:
        """Bring the run's tiered KV back to the device ahead of its next call, when the cost
        model prefers loading to recomputing and the blocks fit without preempting anyone."""
        tiers = self.pool.tiers
        path = self.run_path.get(run)
        if tiers is None or path is None or not path[1]:
            return
        pool, nodes = self.pool, path[1]
        tiers.now = now
        hit_blocks, stop = pool.acquire(nodes, run)
        plan = tiers.plan(nodes, hit_blocks * self.bs, nodes[-1].end // self.bs, self.prefill_s)
        blocks = (plan.recompute_from - hit_blocks * self.bs) // self.bs
        if plan.loads and 0 < blocks <= pool.available:
            pool.allocate(blocks)
            self.prefetched[run] = tiers.charge(plan, prefetch=True)
            pool.commit(nodes, stop, plan.recompute_from)
        pool.release(nodes, now)

    def cancel(self, req: SimRequest, now: float) -> None:
        """Drop one request before its planned end (an abort, a stop string), between steps:
        its computed full blocks stay cached, like a finished request's."""
        if req.state in (PREFILL, DECODE):
            evict_running(self, req, now, park=True)
        if req.state == PARKED:
            self._parked[req.run].remove(req)
            if not self._parked[req.run]:
                del self._parked[req.run]
            self.n_parked -= 1
        elif req.state == WAITING:
            self.n_waiting -= 1
        if req.state == DONE:
            return
        req.state = DONE
        req.qver += 1
        req.vver += 1
        reqs = self.run_reqs[req.run]
        reqs.remove(req)
        if not reqs:
            del self.run_reqs[req.run]

    def set_hint(self, run: int, at_s: float) -> None:
        self.pool.set_hint(run, at_s, self._tail(run))

    def forget_run(self, run: int, now: float) -> None:
        self.unpin(run, now=now)
        self.paused.discard(run)
        self.pool.forget_run(run, self._tail(run))
        self.run_path.pop(run, None)
        self.prefetched.pop(run, None)

    def plan(self, now: float) -> float | None:
        """Schedule the next step (or decode jump) starting at `now`; returns its end time, or
        None when there is nothing runnable."""
        pool = self.pool
        bs = self.bs
        preempted = False
        if pool.tiers is not None:
            pool.tiers.now = now
        self.stall_until = now
        while True:
            budget = self.max_tokens - self.n_dec
            need = self.phase[(-self.d) % bs]  # decode blocks for one step
            chunks: list[tuple[SimRequest, int]] = []
            for r in self.prefilling:
                c = min(r.prefill_target - r.computed, budget)
                if c <= 0:
                    continue
                budget -= c
                chunks.append((r, c))
                need += -(-(r.computed + c) // bs) - (-(-r.computed // bs))
            if need <= pool.available:
                break
            if self.yield_pins(need, now):
                continue  # idle pins give way before a running request is preempted
            victim = fewest_output(self) if self.fewest_output_first else pop_victim(self)
            if victim is None:
                raise AssertionError("KV pool too small for a single request")
            evict_running(self, victim, now)
            self.stats.preemptions += 1
            preempted = True
        pool.allocate(need)  # this step's chunks and one decode step, before any admission
        if preempted and self.reserve is not None:
            self.reserve.retracted(self.running, self.generated_running())
        if not preempted:
            budget = admit(self, now, budget, chunks)
        if self.n_dec == 0 and not chunks:
            return None
        k = 1 if chunks else self._jump_len()
        if k > 1:
            pool.allocate(self._decode_demand(self.d, k) - self._decode_demand(self.d, 1))
        ctx = self.sum_a + self.n_dec * (self.d + 1)
        if chunks:
            attn = float(ctx)
            kv = float(ctx)
            toks = self.n_dec
            for r, c in chunks:
                o = r.computed
                attn += c * o + c * (c + 1) / 2
                kv += o + c
                toks += c
            dt = self.cost.step_time(toks, attn, kv)
            self.exposed_s = max(0.0, self.cost.compute_s(toks, attn) - self.cost.memory_s(kv))
        else:
            dt = self.cost.decode_run_time(self.n_dec, ctx, k)
            self.exposed_s = 0.0
        if self.stall_until > now:
            self.stats.load_stall_s += self.stall_until - now
            dt += self.stall_until - now
        self.in_flight = True
        self.t0, self.t_end, self.k = now, now + dt, k
        self.chunks = chunks
        self.ctx0, self.n_flight = ctx, self.n_dec
        self.in_use0 = pool.used - pool.evictable
        self.version += 1
        if self.check_mode:
            self.check()
        return self.t_end

    def truncate(self, now: float) -> float | None:
        """An outside event at `now` reached the replica mid-jump: end the jump at the first step
        boundary at or after `now`. Returns the new end time if it moved."""
        if not self.in_flight or self.k <= 1 or now >= self.t_end:
            return None
        j = self.cost.decode_steps_until(self.n_flight, self.ctx0, self.k, now - self.t0)
        if j >= self.k:
            return None
        self.pool.free(self._decode_demand(self.d, self.k) - self._decode_demand(self.d, j))
        self.k = j
        self.t_end = self.t0 + self.cost.decode_run_time(self.n_flight, self.ctx0, j)
        self.version += 1
        return self.t_end

    def complete(self, now: float) -> list[SimRequest]:
        """Apply the step in flight (ending at `now`); returns the requests that finished."""
        self.in_flight = False
        step_s = self.t_end - self.t0
        self.stats.busy_s += step_s
        self.stats.decoding_s += self.n_flight * step_s
        self.stats.in_use_block_s += self.in_use0 * step_s
        self.stats.prefill_exposed_s += self.exposed_s
        self.stats.steps += self.k
        self.d += self.k
        if self.reserve is not None and self.n_flight:
            self.reserve.decoded(self.k)
        done: list[SimRequest] = []
        fin = self._fin
        while fin and fin[0][0] <= self.d:
            _, _, dver, r = heapq.heappop(fin)
            if dver == r.dver and r.state == DECODE:
                self.leave_decode(r)
                self._finish(r, r.prompt_len + r.out_len - 1, now)
                done.append(r)
        for r, c in self.chunks:
            if r.state != PREFILL:
                continue
            r.computed += c
            self.stats.prefill_tokens += c
            new, r.cidx = self.pool.commit(r.nodes, r.cidx, r.computed)
            r.tree_blocks += new  # committed blocks move from private to cached: `used` unchanged
            if r.computed >= r.prefill_target:
                self.prefilling.remove(r)
                r.generated += 1
                if r.generated >= r.out_len:
                    self._finish(r, r.computed, now)
                    done.append(r)
                else:
                    self._enter_decode(r)
        self.chunks = []
        if self.check_mode:
            self.check()
        return done

    def _finish(self, r: SimRequest, computed: int, now: float) -> None:
        self.release_blocks(r, computed, now)
        r.state = DONE
        r.vver += 1
        reqs = self.run_reqs[r.run]
        reqs.remove(r)
        if not reqs:
            del self.run_reqs[r.run]
