"""`EngineCore`: the synchronous engine (scheduler + model runner + sampler + detokenizer).

One `step()` schedules a batch, runs one forward pass, samples, and returns what each request
produced. A request with `n > 1` is prefilled once: when its prompt is done, its sequence forks
into `n` samples sharing the prompt's KV blocks (`_fork`), each drawing its first token from the
same logits and then decoding on its own in the batch.

It is single-threaded and clock-free apart from pin TTLs and next-use hints, so the benchmark and
the simulator's calibration drive it directly; `TorchEngine` (engine.py) runs it in a worker
thread for asyncio callers.
"""

from __future__ import annotations

import codecs
import itertools
import math
import time
from collections.abc import Callable, Sequence

import torch

from legato.cache.block_hash import ExtraKeys, cache_extra_keys, prefix_block_hashes, salt_of
from legato.cache.kv_codec import KVFormat
from legato.cache.prefill_model import PrefillCostModel
from legato.cache.tier_manager import TierManager
from legato.engine_adapter.base import (
    EngineCapacity,
    EngineError,
    GenerateRequest,
    KVBlock,
    TopLogprobs,
)
from legato.engine_adapter.torch.block_manager import Block, BlockManager
from legato.engine_adapter.torch.checkpoint import model_fingerprint, torch_dtype
from legato.engine_adapter.torch.config import EngineConfig
from legato.engine_adapter.torch.guided import GrammarCompiler, grammar_masks, vet_tokens
from legato.engine_adapter.torch.model import LlamaForCausalLM
from legato.engine_adapter.torch.model_runner import KV_LAYOUT, ModelRunner
from legato.engine_adapter.torch.outputs import EngineStats, RequestOutput
from legato.engine_adapter.torch.parallel_sampling import fork_samples
from legato.engine_adapter.torch.sampler import needs_processing, sample
from legato.engine_adapter.torch.scheduler import Scheduler
from legato.engine_adapter.torch.sequence import SeqStatus
from legato.engine_adapter.torch.sequence import Sequence as Seq
from legato.engine_adapter.torch.speculator import Speculator
from legato.engine_adapter.torch.tokenizer import ByteTokenizer, HFTokenizer


class EngineCore:
    """Synchronous engine. Not thread-safe: use it from one thread (TorchEngine's worker)."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        tokenizer: ByteTokenizer | HFTokenizer,
        config: EngineConfig,
        model_name: str = "legato-default",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model.fuse().eval()
        self.tokenizer = tokenizer
        self.config = config
        self.model_name = model_name
        self.clock = clock
        mc = model.config
        self.max_model_len = min(
            config.max_model_len or mc.max_position_embeddings, mc.max_position_embeddings
        )
        self.num_blocks = config.resolved_num_blocks
        self.dtype_name = config.resolved_dtype
        self.fingerprint = model_fingerprint(model)
        self.blocks = BlockManager(self.num_blocks, config.block_size, clock)
        self.scheduler = Scheduler(
            self.blocks, config.max_num_batched_tokens, config.max_num_seqs, config.enable_prefix_caching
        )
        self.runner = ModelRunner(model, self.num_blocks, config.block_size, torch_dtype(self.dtype_name))
        self._seqs: dict[str, list[Seq]] = {}  # request id -> its live samples (sample 0 first)
        self._unfinished: dict[str, int] = {}  # request id -> samples not finished yet
        self.forked_samples = 0
        self._arrivals = itertools.count()
        self._default_gen = torch.Generator().manual_seed(config.seed)
        self._stop_ids = frozenset(tokenizer.stop_token_ids)
        self.steps = 0
        self.generated_tokens = 0
        self.last_step_tokens = 0
        # Tiers below the device (host RAM, Redis): see attach_tiers.
        self.tiers: TierManager | None = None
        self.prefill_cost = PrefillCostModel()
        self.tier_loaded_tokens = 0
        self.offloaded_blocks = 0
        self._held: dict[str, list[int]] = {}  # imported blocks held until their request is admitted
        self._tier_written: set[str] = set()  # requests whose prompt chunks went to Redis
        self._grammars: GrammarCompiler | None = None  # built on the first constrained request
        self.speculator: Speculator | None = None  # opt-in speculative decoding (speculator.py)
        if config.speculative_drafter is not None:
            self.speculator = Speculator(config.speculative_drafter, config.num_speculative_tokens)

    # --- tiers ----------------------------------------------------------------------------

    @property
    def kv_format(self) -> KVFormat:
        """What this engine's KV blocks are, as tiers store and check them."""
        shape = self.runner.block_shape
        nbytes = torch.empty((), dtype=torch_dtype(self.dtype_name)).element_size()
        for d in shape:
            nbytes *= d
        return KVFormat(self.fingerprint, KV_LAYOUT, self.dtype_name, shape, nbytes)

    def attach_tiers(self, tiers: TierManager) -> None:
        """Offload evicted blocks and write prefilled prompts through `tiers` from now on."""
        if tiers.fmt != self.kv_format or tiers.block_size != self.config.block_size:
            raise EngineError("tier manager was built for another KV format or block size")
        self.tiers = tiers
        self.blocks.on_evict = self._on_evict

    def _kv_block(self, block_id: int, block_hash: bytes, token_ids: tuple[int, ...]) -> KVBlock:
        return KVBlock(
            block_hash=block_hash,
            token_ids=token_ids,
            layout=KV_LAYOUT,
            dtype=self.dtype_name,
            shape=self.runner.block_shape,
            data=self.runner.read_block(block_id),
        )

    def _on_evict(self, block: Block) -> None:
        """A cached block is about to be reused: copy it to the host tier if worth keeping.
        The copy is one block read; the tier write itself happens on the tier writer thread."""
        tiers = self.tiers
        if tiers is None or block.block_hash is None or not tiers.wants_host(block.next_use):
            return
        kv = self._kv_block(block.block_id, block.block_hash, block.token_ids)
        if tiers.offload(kv, block.parent_hash, block.depth, block.tenant, block.next_use):
            self.offloaded_blocks += 1

    def _write_through(self, seq: Seq) -> None:
        """The prompt of `seq` is computed: hand its whole chunks not yet in Redis to the tier
        writer, so another engine process can load instead of recomputing."""
        assert self.tiers is not None
        bs = self.config.block_size
        full = min(seq.num_prompt_tokens // bs, len(seq.block_table))
        hashes = seq.full_block_hashes(full * bs, bs)
        todo = self.tiers.chunks_to_write(hashes)
        if not todo:
            return
        c = self.tiers.redis.chunk_blocks if self.tiers.redis is not None else 1
        blocks = [
            self._kv_block(seq.block_table[i], hashes[i], tuple(seq.token_ids[i * bs : (i + 1) * bs]))
            for chunk in todo
            for i in range(chunk * c, (chunk + 1) * c)
        ]
        self.tiers.write_chunks(blocks, todo[0] * c, salt_of(seq.extra_keys), math.inf)

    def _release_held(self) -> None:
        """Drop the hold on imported blocks of requests the scheduler has admitted (it took its
        own references) or that are gone."""
        for rid in list(self._held):
            seqs = self._seqs.get(rid)
            if not seqs or seqs[0].status is not SeqStatus.WAITING:
                self.blocks.release(self._held.pop(rid))

    def _forget(self, request_id: str) -> None:
        self._tier_written.discard(request_id)
        held = self._held.pop(request_id, None)
        if held:
            self.blocks.release(held)

    # --- requests -------------------------------------------------------------------------

    def extra_keys(self, cache_salt: str | None) -> ExtraKeys:
        """Keys mixed into every block hash: weights, dtype, layout, adapter, tenant salt."""
        return cache_extra_keys(self.fingerprint, self.dtype_name, KV_LAYOUT, cache_salt)

    def validate(self, request: GenerateRequest) -> None:
        """Raise EngineError for a request this engine can never serve. Reads only immutable
        state, so it is safe from any thread (TorchEngine calls it before queueing)."""
        n = len(request.prompt_token_ids)
        if n == 0:
            raise EngineError(f"request {request.request_id!r}: prompt_token_ids is empty")
        vocab = self.model.config.vocab_size
        for i, t in enumerate(request.prompt_token_ids):
            if not 0 <= t < vocab:
                raise EngineError(
                    f"request {request.request_id!r}: prompt_token_ids[{i}] = {t} is outside the vocabulary "
                    f"[0, {vocab})"
                )
        bad = [t for t, _ in request.sampling.logit_bias if not 0 <= t < vocab]
        if bad:
            raise EngineError(
                f"request {request.request_id!r}: logit_bias token ids {bad[:5]} are outside the "
                f"vocabulary [0, {vocab})"
            )
        total = n + request.sampling.max_tokens
        if total > self.max_model_len:
            raise EngineError(
                f"request {request.request_id!r}: prompt ({n} tokens) + max_tokens "
                f"({request.sampling.max_tokens}) = {total} exceeds the model's maximum length "
                f"{self.max_model_len}; shorten the prompt or lower max_tokens"
            )
        blocks = -(-total // self.config.block_size)
        if blocks > self.num_blocks:
            raise EngineError(
                f"request {request.request_id!r}: prompt + max_tokens = {total} tokens needs {blocks} "
                f"KV blocks "
                f"but the cache has only {self.num_blocks}; lower max_tokens or raise num_blocks"
            )

    def add_request(self, request: GenerateRequest, preload: Sequence[KVBlock] = ()) -> None:
        """Queue a request. `preload`: blocks fetched from a tier for its prompt, continuing the
        prefix the device holds; they are installed and held until the request is admitted."""
        self.validate(request)
        if request.request_id in self._seqs:
            raise EngineError(f"request id {request.request_id!r} is already running")
        sp = request.sampling
        stop_ids = set(sp.stop_token_ids)
        if not sp.ignore_eos:
            stop_ids |= self._stop_ids
        gen = torch.Generator().manual_seed(sp.seed) if sp.seed is not None else None
        grammar = None
        if sp.grammar is not None:
            if self._grammars is None:
                self._grammars = GrammarCompiler(
                    self.tokenizer, self.model.config.vocab_size, self.config.max_num_seqs
                )
            grammar = self._grammars.sequence(sp.grammar, sorted(stop_ids), sp.max_tokens)
        seq = Seq(
            request_id=request.request_id,
            token_ids=list(request.prompt_token_ids),
            num_prompt_tokens=len(request.prompt_token_ids),
            sampling=sp,
            priority=request.priority,
            arrival=next(self._arrivals),
            extra_keys=self.extra_keys(request.cache_salt),
            stop_token_ids=frozenset(stop_ids),
            generator=gen,
            grammar=grammar,
        )
        self._seqs[request.request_id] = [seq]
        self._unfinished[request.request_id] = sp.n
        if preload and self.config.enable_prefix_caching:
            self._preload(seq, preload)
        self.scheduler.add(seq)

    def _preload(self, seq: Seq, blocks: Sequence[KVBlock]) -> None:
        """Install tier blocks that continue `seq`'s cached prefix. Each must be the request's
        own next block (same chained hash: same tokens, weights, tenant), else it is ignored."""
        hashes = seq.full_block_hashes(seq.num_prompt_tokens, self.config.block_size)
        first = len(self.blocks.lookup(hashes))
        chain: list[KVBlock] = []
        for i, kv in enumerate(blocks):
            if first + i >= len(hashes) or kv.block_hash != hashes[first + i]:
                break
            chain.append(kv)
        if not chain:
            return
        ids = self._install(chain, hashes[first - 1] if first else None, first, salt_of(seq.extra_keys))
        if ids:
            self._held[seq.request_id] = ids
            self.tier_loaded_tokens += len(ids) * self.config.block_size

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request and free its blocks; returns its final output (None if unknown)."""
        seqs = self._seqs.pop(request_id, None)
        self._unfinished.pop(request_id, None)
        if not seqs:
            return None
        self._forget(request_id)
        for seq in seqs:
            self.scheduler.remove(seq)
        seq = seqs[0]
        seq.finish_reason = "abort"
        return self._output(seq, (), "", None, None, finished=True)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        """Run one engine step; returns one output per request that produced something."""
        spec = self.speculator
        if spec is not None:
            spec.propose(self.scheduler.running, self.config.max_num_batched_tokens, self.max_model_len)
        plan = self.scheduler.schedule()
        if spec is not None:
            spec.after_schedule(plan)
        if self._held:
            self._release_held()
        self.last_step_tokens = plan.num_tokens
        if not plan.chunks:
            return []
        self.steps += 1
        spans = [(c.seq.num_computed_tokens, c.seq.num_computed_tokens + c.num_tokens) for c in plan.chunks]
        for src, dst in plan.copies:  # copy-on-write of blocks shared by forked samples
            self.runner.copy_block(src, dst)
        started = time.perf_counter()
        sampled, logits = self.runner.run(plan.chunks)
        self.prefill_cost.observe(spans, time.perf_counter() - started)
        spec_step = spec is not None and logits is not None and any(c.seq.num_draft for c in sampled)
        if spec is not None and spec_step and logits is not None:  # commits verified tokens only
            sampled, logits = spec.verify_and_commit(self, plan.chunks, sampled, logits)
        else:
            for chunk in plan.chunks:
                self.scheduler.commit(chunk)
        if self.tiers is not None and self.tiers.redis is not None and self.config.enable_prefix_caching:
            for chunk in plan.chunks:
                seq = chunk.seq
                if (
                    seq.num_computed_tokens >= seq.num_prompt_tokens
                    and seq.request_id not in self._tier_written
                ):
                    self._tier_written.add(seq.request_id)
                    self._write_through(seq)
        spec_outputs = spec.emit(self) if spec is not None and spec_step else []
        if logits is None:
            return spec_outputs
        seqs = [c.seq for c in sampled]
        rows = list(range(len(seqs)))
        for row in range(len(sampled)):
            seq = seqs[row]
            if seq.sampling.n > 1 and seq.index == 0 and not seq.forked:
                children = self._fork(seq)
                seqs.extend(children)
                rows.extend([row] * len(children))
        if len(rows) > len(sampled):  # the forked samples draw from their parent's logits
            logits = logits[torch.tensor(rows, device=logits.device)]
        # After the fork: each forked sample masks with its own grammar clone.
        allowed = grammar_masks(seqs, logits.shape[-1])
        drawn = sample(
            logits,
            [s.sampling for s in seqs],
            [s.generator for s in seqs],
            self._default_gen,
            [s.output_ids if needs_processing(s.sampling) else () for s in seqs],
            allowed,
        )
        if allowed is not None:  # last: nothing may change a sampled token after its vetting
            vet_tokens(seqs, drawn.tokens, drawn.logprobs, logits)
        outputs: list[RequestOutput] = spec_outputs
        for i, seq in enumerate(seqs):
            want = seq.sampling.logprobs
            lp = drawn.logprobs[i] if want and drawn.logprobs is not None else None
            top = drawn.top_logprobs[i] if want and drawn.top_logprobs is not None else None
            outputs.append(self._append_token(seq, drawn.tokens[i], lp, top))
        self.generated_tokens += len(seqs)
        return outputs

    def _fork(self, seq: Seq) -> list[Seq]:
        """Samples 1..n-1 of `seq`'s request (see `fork_samples`), running from now on."""
        children = fork_samples(seq, self.blocks, self._arrivals)
        self.scheduler.running.extend(children)
        self._seqs[seq.request_id].extend(children)
        self.forked_samples += len(children)
        return children

    def run_to_completion(self, requests: Sequence[GenerateRequest]) -> dict[str, list[RequestOutput]]:
        """Convenience for benchmarks and tests: add requests, step until all finish."""
        for r in requests:
            self.add_request(r)
        outputs: dict[str, list[RequestOutput]] = {r.request_id: [] for r in requests}
        while self.has_unfinished():
            for out in self.step():
                outputs.setdefault(out.request_id, []).append(out)
        return outputs

    # --- per-token postprocessing ---------------------------------------------------------

    def _append_token(
        self, seq: Seq, token: int, logprob: float | None, top: TopLogprobs | None
    ) -> RequestOutput:
        seq.token_ids.append(token)
        if logprob is not None:
            seq.logprobs.append(logprob)
        if top is not None:
            seq.top_logprobs.append(top)
        reason: str | None = None
        if token in seq.stop_token_ids:
            reason = "stop"
        elif seq.num_output_tokens >= seq.sampling.max_tokens:
            reason = "length"
        old_len = len(seq.text)
        self._detokenize(seq, flush=reason is not None)
        stops = seq.sampling.stop
        if stops and len(seq.text) > old_len:
            longest = max(len(s) for s in stops)
            window_start = max(0, old_len - longest + 1)
            hits = [i for i in (seq.text.find(s, window_start) for s in stops if s) if i >= 0]
            if hits:
                seq.text = seq.text[: min(hits)]
                reason = "stop"
        upto = len(seq.text) - _held_back(seq.text, stops) if reason is None else len(seq.text)
        upto = max(upto, seq.emitted_text_len)
        delta = seq.text[seq.emitted_text_len : upto]
        seq.emitted_text_len = upto
        finished = False
        if reason is not None:
            seq.finish_reason = reason
            self.scheduler.remove(seq)
            rid = seq.request_id
            left = self._unfinished.get(rid, 1) - 1
            self._unfinished[rid] = left
            finished = left <= 0
            if finished:
                self._seqs.pop(rid, None)
                self._unfinished.pop(rid, None)
                self._forget(rid)
        return self._output(seq, (token,), delta, logprob, top, finished)

    def _detokenize(self, seq: Seq, flush: bool) -> None:
        """Incremental decoding: decode a small window of recent tokens and append only what is
        new, waiting while the text ends in an incomplete character (U+FFFD). Byte tokens go
        through a UTF-8 incremental decoder instead, which gives exactly the one-shot decoding
        of all the bytes (Python guarantees it) at a fraction of the cost."""
        if isinstance(self.tokenizer, ByteTokenizer):
            if seq.utf8 is None:
                seq.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
            token = seq.token_ids[-1]
            seq.text += seq.utf8.decode(bytes((token,)) if 0 <= token < 256 else b"", final=flush)
            return
        base = seq.num_prompt_tokens  # offsets count output tokens
        ids = seq.token_ids
        prefix_text = self.tokenizer.decode(ids[base + seq.prefix_offset : base + seq.read_offset])
        new_text = self.tokenizer.decode(ids[base + seq.prefix_offset :])
        if len(new_text) > len(prefix_text) and (flush or not new_text.endswith("\ufffd")):
            seq.text += new_text[len(prefix_text) :]
            seq.prefix_offset = seq.read_offset
            seq.read_offset = len(ids) - base

    def _output(
        self,
        seq: Seq,
        tokens: tuple[int, ...],
        text: str,
        logprob: float | None,
        top: TopLogprobs | None,
        finished: bool,
    ) -> RequestOutput:
        want_lp = seq.sampling.logprobs
        want_top = want_lp and seq.sampling.top_logprobs > 0
        return RequestOutput(
            request_id=seq.request_id,
            token_ids=tokens,
            text=text,
            logprobs=((logprob,) if logprob is not None else ()) if want_lp else None,
            finished=finished,
            finish_reason=seq.finish_reason,
            prompt_tokens=seq.num_prompt_tokens,
            cached_tokens=seq.cached_tokens or 0,
            index=seq.index,
            top_logprobs=((top,) if top is not None else ()) if want_top else None,
        )

    # --- cache hooks ----------------------------------------------------------------------

    def _hashes(self, token_ids: Sequence[int], cache_salt: str | None) -> list[bytes]:
        return prefix_block_hashes(list(token_ids), self.config.block_size, self.extra_keys(cache_salt))

    def cached_prefix_tokens(self, token_ids: Sequence[int], cache_salt: str | None = None) -> int:
        if not self.config.enable_prefix_caching:
            return 0
        return len(self.blocks.lookup(self._hashes(token_ids, cache_salt))) * self.config.block_size

    def pin(self, token_ids: Sequence[int], cache_salt: str | None, ttl_s: float) -> str:
        """Pin the cached leading blocks of `token_ids` for `ttl_s` seconds."""
        if not ttl_s > 0 or math.isnan(ttl_s):
            raise EngineError(f"pin ttl_s must be > 0, got {ttl_s}")
        pin_id, _ = self.blocks.pin(self._hashes(token_ids, cache_salt), ttl_s)
        return pin_id

    def unpin(self, pin_id: str) -> None:
        self.blocks.unpin(pin_id)

    def set_next_use(self, token_ids: Sequence[int], cache_salt: str | None, next_use_s: float) -> int:
        if math.isnan(next_use_s) or next_use_s < 0:
            raise EngineError(f"next_use_s must be >= 0 (or inf), got {next_use_s}")
        deadline = self.clock() + next_use_s
        hashes = self._hashes(token_ids, cache_salt)
        if self.tiers is not None:
            self.tiers.set_next_use(hashes, deadline)
        return self.blocks.set_next_use(hashes, deadline)

    def prefetch(self, token_ids: Sequence[int], cache_salt: str | None, next_use_s: float) -> bool:
        """Ask the tier manager to pull the prefix's Redis chunks into the host tier (a background
        job: the step loop does no network I/O). False without tiers or when the job is dropped."""
        if self.tiers is None:
            return False
        hashes = self._hashes(token_ids, cache_salt)
        return self.tiers.prefetch(hashes, cache_salt or "", self.clock() + max(0.0, next_use_s))

    def export_blocks(self, block_hashes: Sequence[bytes]) -> list[KVBlock]:
        out: list[KVBlock] = []
        for h in block_hashes:
            block_id = self.blocks.cached.get(h)
            if block_id is None:
                continue
            block = self.blocks.blocks[block_id]
            out.append(
                KVBlock(
                    block_hash=h,
                    token_ids=block.token_ids,
                    layout=KV_LAYOUT,
                    dtype=self.dtype_name,
                    shape=self.runner.block_shape,
                    data=self.runner.read_block(block_id),
                )
            )
        return out

    def import_blocks(self, blocks: Sequence[KVBlock]) -> int:
        """Install blocks as cached (unreferenced) prefix-cache entries. Blocks are expected in
        prefix order (as `export_blocks` returns a chain); each one's parent is taken to be the
        previous block of the list when it chains, so eviction stays suffix-first."""
        ids = self._install(blocks, None, 0)
        self.blocks.release(ids)
        return len(ids)

    def _install(
        self, blocks: Sequence[KVBlock], parent: bytes | None, depth: int, tenant: str = ""
    ) -> list[int]:
        """Write blocks into fresh device blocks and register them; returns the new block ids,
        each holding one reference (the caller releases or keeps them). Blocks already cached
        are skipped; stops when the pool is full."""
        for kv in blocks:
            if (
                kv.layout != KV_LAYOUT
                or kv.dtype != self.dtype_name
                or tuple(kv.shape) != self.runner.block_shape
            ):
                raise EngineError(
                    f"KV block layout mismatch: got layout={kv.layout!r} dtype={kv.dtype!r} "
                    f"shape={kv.shape}, "
                    f"this engine uses layout={KV_LAYOUT!r} dtype={self.dtype_name!r} "
                    f"shape={self.runner.block_shape}"
                )
            if len(kv.token_ids) != self.config.block_size:
                raise EngineError(
                    f"KV block has {len(kv.token_ids)} token ids, expected {self.config.block_size}"
                )
        ids: list[int] = []
        prev = parent
        for i, kv in enumerate(blocks):
            if kv.block_hash in self.blocks.cached:
                prev = kv.block_hash
                continue
            new = self.blocks.allocate(1)
            if new is None:
                break
            self.runner.write_block(new[0], kv.data)
            self.blocks.register(new[0], kv.block_hash, prev, depth + i, kv.token_ids, tenant)
            ids.append(new[0])
            prev = kv.block_hash
        return ids

    # --- introspection --------------------------------------------------------------------

    def capacity(self) -> EngineCapacity:
        return EngineCapacity(self.config.block_size, self.num_blocks, self.blocks.num_free)

    def stats(self) -> EngineStats:
        s = self.scheduler
        return EngineStats(
            total_blocks=self.num_blocks,
            free_blocks=self.blocks.num_free,
            used_blocks=self.blocks.num_used,
            cached_blocks=self.blocks.num_cached,
            pins=self.blocks.num_pins,
            running=len(s.running),
            waiting=len(s.waiting),
            steps=self.steps,
            preemptions=s.num_preemptions,
            evictions=self.blocks.stats.evictions,
            prefix_hit_requests=s.prefix_hit_requests,
            prefix_hit_tokens=s.prefix_hit_tokens,
            prompt_tokens=s.prompt_tokens_admitted,
            generated_tokens=self.generated_tokens,
            tier_loaded_tokens=self.tier_loaded_tokens,
            offloaded_blocks=self.offloaded_blocks,
            prefill_tokens=s.prefill_tokens,
            forked_samples=self.forked_samples,
            spec_drafts=self.speculator.verify_steps if self.speculator else 0,
            spec_draft_tokens=self.speculator.drafted if self.speculator else 0,
            spec_accepted_tokens=self.speculator.accepted if self.speculator else 0,
        )

    def active_request_ids(self) -> list[str]:
        return list(self._seqs)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that could still grow into a stop string: that much
    is not streamed yet, so a stop string is never partly emitted before it is cut."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
