"""Step scheduler: continuous batching with chunked prefill under a token budget.

Each step, running sequences are served first in priority order (lower value first, then older):
a decoding sequence takes 1 token of the budget, a sequence still in prefill takes the next
chunk of its prompt that fits. Whatever budget is left admits waiting sequences (again in
priority order), each starting after its longest cached prefix. When a running sequence needs a
block and none can be had, the lowest-priority / newest running sequence is preempted: its blocks
are released (they stay in the prefix cache, so recomputation is mostly a cache hit) and it goes
back to the waiting queue.

The samples of an `n > 1` request share their prompt's blocks (forked by the engine core after
the prompt's prefill). Before a sequence appends to a shared, partly filled block it gets its own
copy: the copy is listed in `SchedulerOutput.copies` and made before the step's forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from legato.cache.block_hash import salt_of
from legato.engine_adapter.torch.block_manager import BlockManager
from legato.engine_adapter.torch.sequence import SeqStatus, Sequence


@dataclass(slots=True)
class ScheduledChunk:
    seq: Sequence
    num_tokens: int  # tokens of this sequence processed this step, from seq.num_computed_tokens

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the end of the known tokens, so a new token is sampled."""
        return self.seq.num_computed_tokens + self.num_tokens == self.seq.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)  # (src, dst) block KV, in order

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


@dataclass(slots=True)
class Scheduler:
    blocks: BlockManager
    max_num_batched_tokens: int
    max_num_seqs: int
    enable_prefix_caching: bool = True
    waiting: list[Sequence] = field(default_factory=list)
    running: list[Sequence] = field(default_factory=list)
    num_preemptions: int = 0
    prefix_hit_tokens: int = 0
    prefix_hit_requests: int = 0
    prompt_tokens_admitted: int = 0
    prefill_tokens: int = 0  # prompt tokens run through the model (not served by the prefix cache)

    @property
    def block_size(self) -> int:
        return self.blocks.block_size

    def add(self, seq: Sequence) -> None:
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out (finished or aborted) and release its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self._free_blocks(seq)
        seq.status = SeqStatus.FINISHED

    def _free_blocks(self, seq: Sequence) -> None:
        # Release suffix blocks first so, on equal access time, they are evicted first.
        self.blocks.release(list(reversed(seq.block_table)))
        seq.block_table = []
        seq.num_registered_blocks = 0

    def _blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        total = -(-(seq.num_computed_tokens + num_tokens) // self.block_size)
        return max(0, total - len(seq.block_table))

    def _shared_block(self, seq: Sequence) -> int | None:
        """Index in `seq.block_table` of the shared, partly filled block its next token would be
        written to (so it needs a private copy first); None when its next write is private."""
        p = seq.num_computed_tokens
        i = p // self.block_size
        if p % self.block_size == 0 or i >= len(seq.block_table):
            return None
        return i if self.blocks.is_shared(seq.block_table[i]) else None

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self._free_blocks(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)
        self.num_preemptions += 1
        out.preempted.append(seq)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        self.blocks.expire_pins()
        budget = self.max_num_batched_tokens
        self.running.sort(key=lambda s: s.sort_key)
        scheduled: set[int] = set()
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            need = self._blocks_needed(seq, n)
            cow = self._shared_block(seq)
            extra = need + (cow is not None)
            new_blocks = self.blocks.allocate(extra) if extra else []
            while new_blocks is None:
                victim = self.running[-1]
                if id(victim) in scheduled:  # never take blocks back from this step's batch
                    break
                self._preempt(victim, out)
                if victim is seq:
                    break
                cow = self._shared_block(seq)  # the victim may have been the other sharer
                new_blocks = self.blocks.allocate(need + (cow is not None))
            if new_blocks is None:
                if seq.status is SeqStatus.RUNNING:  # blocked on pinned blocks: wait a step
                    i += 1
                continue
            if cow is not None:
                src, dst = seq.block_table[cow], new_blocks.pop()
                seq.block_table[cow] = dst
                self.blocks.release([src])  # still held by the sequences it is shared with
                out.copies.append((src, dst))
            seq.block_table.extend(new_blocks)
            out.chunks.append(ScheduledChunk(seq, n))
            scheduled.add(id(seq))
            budget -= n
            i += 1
        if not out.preempted:
            self._admit(out, budget)
        return out

    def _admit(self, out: SchedulerOutput, budget: int) -> None:
        self.waiting.sort(key=lambda s: s.sort_key)
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            # a request that forks into n samples once prefilled needs room for all of them
            slots = seq.sampling.n if seq.index == 0 and not seq.forked else 1
            if self.running and len(self.running) + slots > self.max_num_seqs:
                break
            cached_ids: list[int] = []
            if self.enable_prefix_caching:
                hashes = seq.full_block_hashes(seq.num_tokens, self.block_size)
                cached_ids = self.blocks.lookup(hashes)
                if len(cached_ids) * self.block_size >= seq.num_tokens:
                    cached_ids = cached_ids[:-1]  # always compute at least the last token
            cached = len(cached_ids) * self.block_size
            n = min(seq.num_tokens - cached, budget)
            total_blocks = -(-(cached + n) // self.block_size)
            need = total_blocks - len(cached_ids)
            if need > self.blocks.num_free - self.blocks.count_unreferenced(cached_ids):
                break  # head-of-line: a lower-priority request must not overtake this one
            self.blocks.acquire(cached_ids)
            new_blocks = self.blocks.allocate(need)
            assert new_blocks is not None
            self.waiting.pop(0)
            seq.block_table = cached_ids + new_blocks
            seq.num_registered_blocks = len(cached_ids)
            seq.num_computed_tokens = cached
            if seq.cached_tokens is None:
                seq.cached_tokens = cached
                self.prompt_tokens_admitted += seq.num_prompt_tokens
                if cached:
                    self.prefix_hit_requests += 1
                    self.prefix_hit_tokens += cached
                    self.blocks.stats.prefix_hit_blocks += len(cached_ids)
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            out.chunks.append(ScheduledChunk(seq, n))
            budget -= n

    def commit(self, chunk: ScheduledChunk) -> None:
        """After the forward pass: advance progress and publish newly full blocks to the cache."""
        seq = chunk.seq
        self.prefill_tokens += max(0, min(seq.num_prompt_tokens - seq.num_computed_tokens, chunk.num_tokens))
        seq.num_computed_tokens += chunk.num_tokens
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        full = seq.num_computed_tokens // bs
        if full <= seq.num_registered_blocks:
            return
        hashes = seq.full_block_hashes(full * bs, bs)
        for i in range(seq.num_registered_blocks, full):
            parent = hashes[i - 1] if i else None
            tokens = seq.token_ids[i * bs : (i + 1) * bs]
            self.blocks.register(seq.block_table[i], hashes[i], parent, i, tokens, salt_of(seq.extra_keys))
        seq.num_registered_blocks = full
