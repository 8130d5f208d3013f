"""`EngineCore`: the synchronous engine (scheduler + model runner + sampler + detokenizer).

One `step()` schedules a batch, runs one forward pass, samples, and returns what each request
produced. A request with `n > 1` is prefilled once: when its prompt is done, its sequence forks
into `n` samples sharing the prompt's KV blocks (`_fork`), each drawing its first token from the
same logits and then decoding on its own in the batch.

It is single-threaded and clock-free apart from pin TTLs and next-use hints, so the benchmark and
the simulator's calibration drive it directly; `TorchEngine` (engine.py) runs it in a worker
thread for asyncio callers.

The core coordinates; its parts live beside it: request checks (`request_checks.py`), sampling a
step's tokens (`step_sampling.py`), per-token detokenization, stops and outputs
(`token_output.py`), and the KV tiers below the device with block export / import
(`kv_tiers.py`, `KVTierLink`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence

import torch

from legato.cache.block_hash import ExtraKeys, cache_extra_keys, prefix_block_hashes
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
from legato.engine_adapter.torch.block_manager import BlockManager
from legato.engine_adapter.torch.checkpoint import model_fingerprint, torch_dtype
from legato.engine_adapter.torch.config import EngineConfig
from legato.engine_adapter.torch.draft_model import load_draft_model
from legato.engine_adapter.torch.guided import GrammarCompiler
from legato.engine_adapter.torch.kv_tiers import KVTierLink
from legato.engine_adapter.torch.model import LlamaForCausalLM
from legato.engine_adapter.torch.model_runner import KV_LAYOUT, ModelRunner
from legato.engine_adapter.torch.outputs import EngineStats, PrefillPhase, RequestOutput
from legato.engine_adapter.torch.parallel_sampling import fork_samples
from legato.engine_adapter.torch.request_checks import validate_request
from legato.engine_adapter.torch.scheduler import Scheduler
from legato.engine_adapter.torch.sequence import Sequence as Seq
from legato.engine_adapter.torch.speculator import Speculator
from legato.engine_adapter.torch.step_sampling import draw
from legato.engine_adapter.torch.token_output import append_token, request_output
from legato.engine_adapter.torch.tokenizer import ByteTokenizer, HFTokenizer
from legato.spec.drafter import MODEL_DRAFTER


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
        self.prefill_phase = PrefillPhase()
        self._arrivals = itertools.count()
        self._default_gen = torch.Generator().manual_seed(config.seed)
        self._stop_ids = frozenset(tokenizer.stop_token_ids)
        self.steps = 0
        self.generated_tokens = 0
        self.last_step_tokens = 0
        self.last_spans: list[tuple[int, int]] = []  # token spans the last step computed
        # Tiers below the device (host RAM, Redis): see attach_tiers.
        self.kv = KVTierLink(
            self.blocks,
            self.runner,
            config.block_size,
            self.dtype_name,
            self.fingerprint,
            config.enable_prefix_caching,
        )
        self.prefill_cost = PrefillCostModel()
        self._grammars: GrammarCompiler | None = None  # built on the first constrained request
        self.speculator: Speculator | None = None  # opt-in speculative decoding (speculator.py)
        # What a step costs the back-off: on the CPU the engine thread's CPU time (on a shared
        # machine the wall time of identical steps varies several-fold with other processes'
        # load, which says nothing about what a bigger step costs); elsewhere the wall time.
        self._step_clock = time.thread_time if config.device == "cpu" else time.perf_counter
        self.draft_model: LlamaForCausalLM | None = None  # the `draft-model` drafter's (draft_model.py)
        if config.draft_model is not None:
            self.draft_model = load_draft_model(config.draft_model, model, config.device, self.dtype_name)
        if config.speculative_drafter is not None:
            self.speculator = self._new_speculator(config.speculative_drafter)

    def _new_speculator(self, drafter: str | None) -> Speculator:
        return Speculator(drafter, self.config.num_speculative_tokens, draft_model=self.draft_model)

    # --- tiers (kv_tiers.py) -------------------------------------------------------------

    @property
    def tiers(self) -> TierManager | None:
        return self.kv.tiers

    @property
    def kv_format(self) -> KVFormat:
        """What this engine's KV blocks are, as tiers store and check them."""
        return self.kv.kv_format

    def attach_tiers(self, tiers: TierManager) -> None:
        """Offload evicted blocks and write prefilled prompts through `tiers` from now on."""
        self.kv.attach(tiers)

    def export_blocks(self, block_hashes: Sequence[bytes]) -> list[KVBlock]:
        return self.kv.export_blocks(block_hashes)

    def import_blocks(self, blocks: Sequence[KVBlock]) -> int:
        """Install blocks as cached prefix-cache entries (see `KVTierLink.import_blocks`)."""
        return self.kv.import_blocks(blocks)

    # --- requests -------------------------------------------------------------------------

    def extra_keys(self, cache_salt: str | None) -> ExtraKeys:
        """Keys mixed into every block hash: weights, dtype, layout, adapter, tenant salt."""
        return cache_extra_keys(self.fingerprint, self.dtype_name, KV_LAYOUT, cache_salt)

    def validate(self, request: GenerateRequest) -> None:
        """Raise EngineError for a request this engine can never serve. Reads only immutable
        state, so it is safe from any thread (TorchEngine calls it before queueing)."""
        validate_request(
            request, self.model.config.vocab_size, self.max_model_len, self.config.block_size, self.num_blocks
        )
        spec = request.sampling.speculative
        if spec is not None and spec.drafter == MODEL_DRAFTER and self.draft_model is None:
            raise EngineError(
                f"request {request.request_id!r}: speculative drafter {MODEL_DRAFTER!r} needs an engine "
                "started with a draft model (EngineConfig.draft_model, `--draft-model`)"
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
            arrived_s=self.clock(),
            extra_keys=self.extra_keys(request.cache_salt),
            stop_token_ids=frozenset(stop_ids),
            generator=gen,
            grammar=grammar,
        )
        self._seqs[request.request_id] = [seq]
        if sp.speculative is not None and self.speculator is None:  # asked for: off by default
            self.speculator = self._new_speculator(None)
        self._unfinished[request.request_id] = sp.n
        if preload and self.config.enable_prefix_caching:
            self.kv.preload(seq, preload)
        self.scheduler.add(seq)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request and free its blocks; returns its final output (None if unknown)."""
        seqs = self._seqs.pop(request_id, None)
        self._unfinished.pop(request_id, None)
        if not seqs:
            return None
        self.kv.forget(request_id)
        for seq in seqs:
            self.scheduler.remove(seq)
        seq = seqs[0]
        seq.finish_reason = "abort"
        return request_output(seq, (), "", None, None, finished=True)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        """Run one engine step; returns one output per request that produced something."""
        if self.speculator is None:
            return self._step()
        started = self._step_clock()
        outputs = self._step()
        if self.last_spans:  # the whole step's time: the cost a verify step adds to is all of it
            self.speculator.observe_step(self.last_spans, self._step_clock() - started)
        return outputs

    def _step(self) -> list[RequestOutput]:
        spec = self.speculator
        if spec is not None:
            spec.propose(
                self.scheduler.running,
                self.config.max_num_batched_tokens,
                self.max_model_len,
                self._step_clock,
            )
        plan = self.scheduler.schedule()
        if spec is not None:
            spec.after_schedule(plan)
        if self.kv.held:
            self.kv.release_held(self._seqs)
        self.last_step_tokens = plan.num_tokens
        for c in plan.chunks:
            if c.seq.scheduled_s is None:
                c.seq.scheduled_s = self.clock()
        self.last_spans = spans = [
            (c.seq.num_computed_tokens, c.seq.num_computed_tokens + c.num_tokens) for c in plan.chunks
        ]
        if not plan.chunks:
            return []
        self.steps += 1
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
        self.kv.write_through(plan.chunks)
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
        drawn = draw(seqs, logits, self._default_gen)
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

    # --- per-token postprocessing (token_output.py) --------------------------------------

    def _append_token(
        self, seq: Seq, token: int, logprob: float | None, top: TopLogprobs | None
    ) -> RequestOutput:
        reason, delta = append_token(self.tokenizer, seq, token, logprob, top)
        if seq.num_output_tokens == 1 and seq.index == 0:  # the request's first token
            self.prefill_phase.record(seq, self.clock())
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
                self.kv.forget(rid)
        return request_output(seq, (token,), delta, logprob, top, finished)

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
            tier_loaded_tokens=self.kv.tier_loaded_tokens,
            offloaded_blocks=self.kv.offloaded_blocks,
            prefill_tokens=s.prefill_tokens,
            prefilled_requests=self.prefill_phase.requests,
            prefill_time_s=self.prefill_phase.seconds,
            prefill_queue_time_s=self.prefill_phase.queued_s,
            prefill_computed_tokens=self.prefill_phase.computed_tokens,
            forked_samples=self.forked_samples,
            spec_drafts=self.speculator.verify_steps if self.speculator else 0,
            spec_draft_tokens=self.speculator.drafted if self.speculator else 0,
            spec_accepted_tokens=self.speculator.accepted if self.speculator else 0,
            spec_drafted_by_position=tuple(self.speculator.drafted_by_position) if self.speculator else (),
            spec_accepted_by_position=tuple(self.speculator.accepted_by_position) if self.speculator else (),
        )

    def active_request_ids(self) -> list[str]:
        return list(self._seqs)
