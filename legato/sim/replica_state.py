"""The state of one simulated replica (`ReplicaState`, which `SimEngine` in `sim/engine.py`
extends with its ops and step loop) and the primitives every part of the replica shares: the wait
queue and parked runs, the decode batch kept as aggregates (count, summed context, positions
modulo the block size, a heap of finish steps) with the closed-form block demand and jump length
of a run of decode steps, pins and their yielding, block release, and the invariant check.
`sim/admission.py` and `sim/preemption.py` act on it."""

from __future__ import annotations

import heapq

from legato.sim.cost_model import CostModel
from legato.sim.kv_pool import KVPool, Node
from legato.sim.output_reserve import OutputReserve
from legato.sim.sim_request import DECODE, PARKED, PREFILL, WAITING, SimRequest, StepStats
from legato.sim.workload import Segment


class ReplicaState:
    """A replica's queues, running requests, decode aggregates, pins and step in flight."""

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
        self.waiting: list[tuple[int, int, int, SimRequest]] = []
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
        self.victims: list[tuple[int, int, int, SimRequest]] = []
        self._seq = 0
        self.admit_count = 0
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
        self.n_flight = 0  # sequences decoding in the flight
        self.in_use0 = 0  # blocks referenced by requests or pins when the flight started
        self.exposed_s = 0.0  # the flight's prefill compute beyond its memory time (`StepStats`)
        self.version = 0  # bumped when the flight's end moves
        # KV tiers (pool.tiers): loads planned this step stall it until `_stall_until`
        self.stall_until = 0.0
        self.prefetched: dict[int, float] = {}  # run -> when its prefetched KV lands

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

    def _tail(self, run: int) -> list[Node]:
        path = self.run_path.get(run)
        return path[1] if path is not None else []

    def push_victim(self, r: SimRequest) -> None:
        """An admitted request becomes a preemption candidate. Entries of requests that finished,
        were cancelled or were preempted stay in the heap (lazy deletion) until a preemption pops
        them, and without KV pressure none does: the heap then held every request ever admitted
        (and, through them, their radix-tree paths). So it is rebuilt from its live entries once
        it is twice the larger of the running requests and `max_seqs`: the geometric-growth
        argument (amortised O(1) per push), any factor above 1 works, 2 caps the waste at what is
        needed. Pop order is unchanged (keys are unique: `admit_seq` counts admissions)."""
        heapq.heappush(self.victims, (-r.priority, -r.admit_seq, r.vver, r))
        if len(self.victims) > 2 * max(self.running, self.max_seqs):
            self.victims = [v for v in self.victims if v[2] == v[3].vver and v[3].state in (PREFILL, DECODE)]
            heapq.heapify(self.victims)

    def enqueue(self, r: SimRequest) -> None:
        r.state = WAITING
        r.qver += 1
        self.n_waiting += 1
        heapq.heappush(self.waiting, (r.priority, r.seq, r.qver, r))

    def park(self, r: SimRequest) -> None:
        r.state = PARKED
        r.qver += 1
        self.n_parked += 1
        self._parked.setdefault(r.run, []).append(r)

    def unpin(self, run: int, version: int | None = None, now: float | None = None) -> None:
        pin = self.pins.get(run)
        if pin is None or (version is not None and pin[0] != version):
            return
        del self.pins[run]
        self.pool.release(pin[1], now)

    def yield_pins(self, need: int, now: float) -> bool:
        """With `pin_yield`: release whole pins, latest-submitted run first (runs are numbered
        in submission order), one at a time until `need` blocks are available or no pin is left
        (Continuum's unpinning under memory pressure). False when there was no pin to release."""
        if not self.pin_yield or not self.pins:
            return False
        while self.pins and need > self.pool.available:
            self.unpin(max(self.pins), now=now)
            self.stats.pin_yields += 1
        return True

    def prefill_s(self, start: int, end: int) -> float:
        """Marginal compute of prefilling tokens [start, end) with [0, start) cached: what a
        load from a tier saves (the step's weight reads and overhead are paid anyway)."""
        c = end - start
        return self.cost.compute_s(c, c * start + c * (c + 1) / 2)

    def running_requests(self) -> list[SimRequest]:
        live = [r for _, _, dver, r in self._fin if dver == r.dver and r.state == DECODE]
        return [*self.prefilling, *live]

    def generated_running(self) -> int:
        """Output tokens generated so far by the running requests."""
        dec = self.sum_a + self.n_dec * (self.d + 1) - self.sum_prompt_dec
        return dec + sum(r.generated for r in self.prefilling)

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

    def leave_decode(self, r: SimRequest) -> None:
        r.computed = r.a + self.d
        r.generated = r.computed - r.prompt_len + 1
        self.n_dec -= 1
        self.sum_a -= r.a
        self.sum_prompt_dec -= r.prompt_len
        self.phase[r.a % self.bs] -= 1

    def release_blocks(self, r: SimRequest, computed: int, now: float) -> None:
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

    def prune_pool(self) -> list[int]:
        """`KVPool.prune`, keeping every node a request of this replica or a run's last path
        still points at (a queued request holds no reference yet but will acquire its path).
        Returns the seg ids removed."""
        keep = {id(n) for _, nodes in self.run_path.values() for n in nodes}
        keep.update(id(n) for reqs in self.run_reqs.values() for r in reqs for n in r.nodes)
        keep.update(id(n) for _, nodes in self.pins.values() for n in nodes)
        removed = self.pool.prune(keep)
        self.pool.compact_heap()
        return removed

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
