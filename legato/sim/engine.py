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

Policy decisions arrive as ops (`add`, `pause`, `resume`, `pin`, `unpin`, `set_priority`,
`set_hint`); the driver applies them only between steps, like a real engine's input queue.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from legato.sim.cost_model import CostModel
from legato.sim.kv_pool import KVPool, Node
from legato.sim.output_reserve import OutputReserve
from legato.sim.workload import Segment

WAITING, PREFILL, DECODE, DONE, PARKED = range(5)


class SimRequest:
    """One LLM call inside the simulated engine."""

    __slots__ = (
        "a",
        "admit_seq",
        "call_id",
        "cidx",
        "computed",
        "dver",
        "first_admit_s",
        "generated",
        "hit_tokens",
        "nodes",
        "out_len",
        "priority",
        "prompt_len",
        "qver",
        "run",
        "seq",
        "state",
        "tree_blocks",
        "vver",
    )

    def __init__(self, call_id: str, run: int, prompt_len: int, out_len: int, priority: int) -> None:
        self.call_id = call_id
        self.run = run
        self.prompt_len = prompt_len
        self.out_len = out_len
        self.priority = priority
        self.nodes: list[Node] = []
        self.seq = 0  # queue order (kept through preemption: a preempted request goes first)
        self.admit_seq = 0
        self.qver = 0
        self.vver = 0
        self.dver = 0
        self.state = WAITING
        self.generated = 0
        self.computed = 0  # prefill phase only; decode phase derives it from the engine counter
        self.a = 0  # decode phase: computed = a + engine.d
        self.cidx = 0
        self.tree_blocks = 0  # blocks of its table owned by the prefix cache
        self.hit_tokens = -1  # prefix-cache hit at first admission (-1: not admitted yet)
        self.first_admit_s = -1.0

    @property
    def prefill_target(self) -> int:
        """Tokens to prefill: the prompt plus anything generated before a preemption."""
        return self.prompt_len + self.generated


@dataclass(slots=True)
class StepStats:
    """Counters the driver turns into a RunOutcome."""

    prefill_tokens: int = 0
    cached_prompt_tokens: int = 0
    preemptions: int = 0
    busy_s: float = 0.0
    steps: int = 0
    load_stall_s: float = 0.0  # step time spent waiting for KV loads from tiers
    pin_yields: int = 0  # pins released early because KV ran out (`pin_yield` engines)


class SimEngine:
    def __init__(
        self,
        index: int,
        cost: CostModel,
        pool: KVPool,
        *,
        max_num_batched_tokens: int,
        max_num_seqs: int,
        check: bool = False,
        pin_yield: bool = False,
        swap: bool = False,
        victim: str = "newest",
        reserve_output: bool = False,
        max_new_tokens: int = 4096,
    ) -> None:
        self.index = index
        self.cost = cost
        self.pool = pool
        self.bs = pool.block_size
        self.max_tokens = max_num_batched_tokens
        self.max_seqs = max_num_seqs
        self.check_mode = check
        self.pin_yield = pin_yield  # pins give way when KV runs out, latest-submitted run first
        self.swap = swap  # preemption swaps the victim's KV to the first tier (vLLM v0 swap)
        if victim not in ("newest", "fewest-output"):
            raise ValueError(f"unknown preemption victim order {victim!r}; valid: newest, fewest-output")
        self.fewest_output_first = victim == "fewest-output"  # SGLang's retract_decode order
        self.reserve = OutputReserve(max_new_tokens) if reserve_output else None
        self.sum_prompt_dec = 0  # summed prompt length of decoding requests
        self.stats = StepStats()
        self._waiting: list[tuple[int, int, int, SimRequest]] = []
        self.n_waiting = 0  # live queued requests (parked ones not included)
        self.n_parked = 0
        self.paused: set[int] = set()
        self._parked: dict[int, list[SimRequest]] = {}
        self.prefilling: list[SimRequest] = []
        # decode aggregates
        self.d = 0
        self.n_dec = 0
        self.sum_a = 0
        self.phase = [0] * self.bs
        self._fin: list[tuple[int, int, int, SimRequest]] = []
        self._victims: list[tuple[int, int, int, SimRequest]] = []
        self._seq = 0
        self._admit_seq = 0
        # per-run state on this replica
        self.run_reqs: dict[int, list[SimRequest]] = {}
        self.run_path: dict[int, tuple[tuple[Segment, ...], list[Node]]] = {}
        self.pins: dict[int, tuple[int, list[Node]]] = {}  # run -> (pin version, nodes)
        self._pin_version = 0
        # the step in flight
        self.in_flight = False
        self.t0 = 0.0
        self.t_end = 0.0
        self.k = 0
        self.chunks: list[tuple[SimRequest, int]] = []
        self.ctx0 = 0  # summed decode context at the first step of the flight
        self.n_flight = 0
        self.version = 0  # bumped when the flight's end moves
        # KV tiers (pool.tiers): loads planned this step stall it until `_stall_until`
        self._stall_until = 0.0
        self.prefetched: dict[int, float] = {}  # run -> when its prefetched KV lands

    # --- views ---------------------------------------------------------------------------

    @property
    def running(self) -> int:
        return self.n_dec + len(self.prefilling)

    def free_blocks(self) -> int:
        return self.pool.available

    def resident_tokens(self, run: int) -> int:
        """Leading tokens of the run's last sequence still cached on this replica."""
        blocks = 0
        for n in self._tail(run):
            blocks += n.cached
            if n.cached < n.nblocks:
                break
        return blocks * self.bs

    # --- ops (applied between steps) -----------------------------------------------------

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
        self._enqueue(req)

    def set_priority(self, run: int, priority: int) -> None:
        for r in self.run_reqs.get(run, ()):
            r.priority = priority
            if r.state == WAITING:
                r.qver += 1
                heapq.heappush(self._waiting, (priority, r.seq, r.qver, r))

    def pause(self, run: int, now: float) -> None:
        if run in self.paused:
            return
        self.paused.add(run)
        for r in list(self.run_reqs.get(run, ())):
            if r.state in (PREFILL, DECODE):
                self._evict_running(r, now, park=True)
        self.pool.set_evict_first(run, True, self._tail(run))

    def resume(self, run: int) -> None:
        if run not in self.paused:
            return
        self.paused.discard(run)
        for r in self._parked.pop(run, []):
            self.n_parked -= 1
            self._enqueue(r)
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

    def unpin(self, run: int, version: int | None = None, now: float | None = None) -> None:
        pin = self.pins.get(run)
        if pin is None or (version is not None and pin[0] != version):
            return
        del self.pins[run]
        self.pool.release(pin[1], now)

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
        plan = tiers.plan(nodes, hit_blocks * self.bs, nodes[-1].end // self.bs, self._prefill_s)
        blocks = (plan.recompute_from - hit_blocks * self.bs) // self.bs
        if plan.loads and 0 < blocks <= pool.available:
            pool.allocate(blocks)
            self.prefetched[run] = tiers.charge(plan, prefetch=True)
            pool.commit(nodes, stop, plan.recompute_from)
        pool.release(nodes, now)

    def _prefill_s(self, start: int, end: int) -> float:
        """Marginal compute of prefilling tokens [start, end) with [0, start) cached: what a
        load from a tier saves (the step's weight reads and overhead are paid anyway)."""
        c = end - start
        return self.cost.compute_s(c, c * start + c * (c + 1) / 2)

    def set_hint(self, run: int, at_s: float) -> None:
        self.pool.set_hint(run, at_s, self._tail(run))

    def forget_run(self, run: int, now: float) -> None:
        self.unpin(run, now=now)
        self.paused.discard(run)
        self.pool.forget_run(run, self._tail(run))
        self.run_path.pop(run, None)
        self.prefetched.pop(run, None)

    def _tail(self, run: int) -> list[Node]:
        path = self.run_path.get(run)
        return path[1] if path is not None else []

    def _enqueue(self, r: SimRequest) -> None:
        r.state = WAITING
        r.qver += 1
        self.n_waiting += 1
        heapq.heappush(self._waiting, (r.priority, r.seq, r.qver, r))

    def _park(self, r: SimRequest) -> None:
        r.state = PARKED
        r.qver += 1
        self.n_parked += 1
        self._parked.setdefault(r.run, []).append(r)

    # --- scheduling ----------------------------------------------------------------------

    def plan(self, now: float) -> float | None:
        """Schedule the next step (or decode jump) starting at `now`; returns its end time, or
        None when there is nothing runnable."""
        pool = self.pool
        bs = self.bs
        preempted = False
        if pool.tiers is not None:
            pool.tiers.now = now
        self._stall_until = now
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
            if self._yield_pins(need, now):
                continue  # idle pins give way before a running request is preempted
            victim = self._fewest_output() if self.fewest_output_first else self._pop_victim()
            if victim is None:
                raise AssertionError("KV pool too small for a single request")
            self._evict_running(victim, now)
            self.stats.preemptions += 1
            preempted = True
        pool.allocate(need)  # this step's chunks and one decode step, before any admission
        if preempted and self.reserve is not None:
            self.reserve.retracted(self.running, self._generated_running())
        if not preempted:
            budget = self._admit(now, budget, chunks)
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
        else:
            dt = self.cost.decode_run_time(self.n_dec, ctx, k)
        if self._stall_until > now:
            self.stats.load_stall_s += self._stall_until - now
            dt += self._stall_until - now
        self.in_flight = True
        self.t0, self.t_end, self.k = now, now + dt, k
        self.chunks = chunks
        self.ctx0, self.n_flight = ctx, self.n_dec
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
        self.stats.busy_s += self.t_end - self.t0
        self.stats.steps += self.k
        self.d += self.k
        if self.reserve is not None and self.n_flight:
            self.reserve.decoded(self.k)
        done: list[SimRequest] = []
        fin = self._fin
        while fin and fin[0][0] <= self.d:
            _, _, dver, r = heapq.heappop(fin)
            if dver == r.dver and r.state == DECODE:
                self._leave_decode(r)
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

    # --- internals -----------------------------------------------------------------------

    def _admit(self, now: float, budget: int, chunks: list[tuple[SimRequest, int]]) -> int:
        pool = self.pool
        bs = self.bs
        waiting = self._waiting
        room = 0.0  # tokens a reserve_output engine may still admit this round
        if self.reserve is not None:
            room = pool.available * bs - self.reserve.running_tokens(self.running, self._generated_running())
        admitted = 0
        while waiting and budget > 0 and self.running < self.max_seqs:
            _, _, qver, r = waiting[0]
            if qver != r.qver or r.state != WAITING:
                heapq.heappop(waiting)
                continue
            if r.run in self.paused:
                heapq.heappop(waiting)
                self.n_waiting -= 1
                self._park(r)
                continue
            hit_blocks, stop = pool.acquire(r.nodes, r.run)
            target = r.prefill_target
            cap = (target - 1) // bs
            hit = min(hit_blocks, cap) * bs
            dev_blocks = hit // bs
            plan = None
            if pool.tiers is not None and hit_blocks < cap:
                plan = pool.tiers.plan(r.nodes, hit, cap, self._prefill_s)
                hit = plan.recompute_from  # loaded blocks count as a prefix hit
            c = min(target - hit, budget)
            need = -(-(hit + c) // bs) - dev_blocks  # loaded blocks need device blocks too
            if need > pool.available:
                self._yield_pins(need, now)
            cost = 0.0
            if self.reserve is not None:
                cost = (target - hit) + self.reserve.new_tokens()
                if cost > room and (self.running or admitted):
                    pool.release(r.nodes, None)
                    break  # SGLang: no room left for this request's output to come
            if need > pool.available:
                pool.release(r.nodes, None)
                break
            room -= cost
            admitted += 1
            heapq.heappop(waiting)
            self.n_waiting -= 1
            pool.allocate(need)
            if plan is not None and plan.loads:
                assert pool.tiers is not None
                self._stall_until = max(self._stall_until, pool.tiers.charge(plan))
                _, stop = pool.commit(r.nodes, stop, hit)
            landed = self.prefetched.pop(r.run, None)
            if landed is not None:
                self._stall_until = max(self._stall_until, landed)
            r.state = PREFILL
            r.computed = hit
            r.tree_blocks = hit // bs
            r.cidx = stop
            if r.hit_tokens < 0:
                r.hit_tokens = min(hit, r.prompt_len)
                r.first_admit_s = now
                self.stats.cached_prompt_tokens += r.hit_tokens
            self._admit_seq += 1
            r.admit_seq = self._admit_seq
            r.vver += 1
            heapq.heappush(self._victims, (-r.priority, -r.admit_seq, r.vver, r))
            self.prefilling.append(r)
            chunks.append((r, c))
            budget -= c
            if r.run in self.pins:
                self.unpin(r.run, now=now)
        return budget

    def _yield_pins(self, need: int, now: float) -> bool:
        """With `pin_yield`: release whole pins, latest-submitted run first (runs are numbered
        in submission order), one at a time until `need` blocks are available or no pin is left
        (Continuum's unpinning under memory pressure). False when there was no pin to release."""
        if not self.pin_yield or not self.pins:
            return False
        while self.pins and need > self.pool.available:
            self.unpin(max(self.pins), now=now)
            self.stats.pin_yields += 1
        return True

    def _running(self) -> list[SimRequest]:
        live = [r for _, _, dver, r in self._fin if dver == r.dver and r.state == DECODE]
        return [*self.prefilling, *live]

    def _generated_running(self) -> int:
        """Output tokens generated so far by the running requests."""
        dec = self.sum_a + self.n_dec * (self.d + 1) - self.sum_prompt_dec
        return dec + sum(r.generated for r in self.prefilling)

    def _fewest_output(self) -> SimRequest | None:
        """SGLang's `retract_decode` victim: the running request with the fewest output tokens
        (ties: the longest prompt)."""
        best: SimRequest | None = None
        best_key = (0, 0)
        for r in self._running():
            gen = r.a + self.d - r.prompt_len + 1 if r.state == DECODE else r.generated
            key = (gen, -r.prompt_len)
            if best is None or key < best_key:
                best, best_key = r, key
        return best

    def _pop_victim(self) -> SimRequest | None:
        v = self._victims
        while v:
            _, _, ver, r = heapq.heappop(v)
            if ver == r.vver and r.state in (PREFILL, DECODE):
                return r
        return None

    def _enter_decode(self, r: SimRequest) -> None:
        # computed = prompt + generated - 1 at every decode step boundary
        r.state = DECODE
        r.a = r.computed - self.d
        self.n_dec += 1
        self.sum_a += r.a
        self.sum_prompt_dec += r.prompt_len
        self.phase[r.a % self.bs] += 1
        r.dver += 1
        heapq.heappush(self._fin, (self.d + r.out_len - r.generated, r.seq, r.dver, r))

    def _leave_decode(self, r: SimRequest) -> None:
        r.computed = r.a + self.d
        r.generated = r.computed - r.prompt_len + 1
        self.n_dec -= 1
        self.sum_a -= r.a
        self.sum_prompt_dec -= r.prompt_len
        self.phase[r.a % self.bs] -= 1

    def _evict_running(self, r: SimRequest, now: float, park: bool = False) -> None:
        """Preemption: free the request's blocks (cached full blocks stay reusable; with `swap`
        they move to the first tier at once, to be loaded back on readmission) and send it back
        to the queue (or park it, for a paused run)."""
        if r.state == DECODE:
            self._leave_decode(r)
        else:
            self.prefilling.remove(r)
        self._release_blocks(r, r.computed, now)
        if self.swap and not park:
            self.pool.swap_out(r.nodes)
        r.computed = 0
        r.cidx = 0
        r.tree_blocks = 0
        r.vver += 1
        if park:
            self._park(r)
        else:
            self._enqueue(r)

    def _finish(self, r: SimRequest, computed: int, now: float) -> None:
        self._release_blocks(r, computed, now)
        r.state = DONE
        r.vver += 1
        reqs = self.run_reqs[r.run]
        reqs.remove(r)
        if not reqs:
            del self.run_reqs[r.run]

    def _release_blocks(self, r: SimRequest, computed: int, now: float) -> None:
        new, r.cidx = self.pool.commit(r.nodes, r.cidx, computed)
        r.tree_blocks += new
        self.pool.free(-(-computed // self.bs) - r.tree_blocks)
        self.pool.release(r.nodes, now)

    def _decode_demand(self, d: int, k: int) -> int:
        """Blocks the decode batch allocates over k steps starting at counter d: a sequence needs
        a new block when the position it computes is a multiple of the block size."""
        if k <= 0 or self.n_dec == 0:
            return 0
        bs = self.bs
        q, rem = divmod(k, bs)
        total = q * self.n_dec
        phase = self.phase
        for j in range(rem):
            total += phase[(-(d + q * bs + j)) % bs]
        return total

    def _jump_len(self) -> int:
        """Decode steps until the first finish or until the pool would run out (the first
        step's blocks are already allocated)."""
        fin = self._fin
        while fin[0][2] != fin[0][3].dver or fin[0][3].state != DECODE:
            heapq.heappop(fin)
        k_fin = max(1, fin[0][0] - self.d)
        n = self.n_dec
        bs = self.bs
        avail = self.pool.available + self._decode_demand(self.d, 1)
        cycles = avail // n
        if cycles * bs >= k_fin:
            return k_fin
        k = cycles * bs
        left = avail - cycles * n
        for _ in range(bs):
            c = self.phase[(-(self.d + k)) % bs]
            if c > left:
                break
            left -= c
            k += 1
        return max(1, min(k, k_fin))

    def check(self) -> None:
        """Assert the pool's invariants, counting every block this replica holds (tests)."""
        bs = self.bs
        private = 0
        if self.in_flight:
            private += self._decode_demand(self.d, self.k)
            for r, c in self.chunks:
                private += -(-(r.computed + c) // bs) - (-(-r.computed // bs))
        for r in self.prefilling:
            private += -(-r.computed // bs) - r.tree_blocks
        n = 0
        for _, _, dver, r in self._fin:
            if dver == r.dver and r.state == DECODE:
                n += 1
                private += -(-(r.a + self.d) // bs) - r.tree_blocks
        assert n == self.n_dec, f"decode count {self.n_dec} != {n}"
        assert self.running <= self.max_seqs, "more running requests than max_num_seqs"
        self.pool.check(private)
