"""One request's state inside the engine: tokens, KV blocks, progress, and output bookkeeping."""

from __future__ import annotations

import codecs
import enum
from dataclasses import dataclass, field

import torch

from legato.cache.block_hash import ExtraKeys, block_hash
from legato.engine_adapter.base import SamplingParams, TopLogprobs
from legato.engine_adapter.torch.guided import SequenceGrammar


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False, slots=True)
class Sequence:
    """One sample of a request being served. `token_ids` is prompt + generated tokens; KV exists
    for the first `num_computed_tokens` of them. After a preemption everything is recomputed
    (mostly from the prefix cache), so `num_computed_tokens` goes back to 0 but the generated
    tokens are kept. A request with `n > 1` starts as one sequence (sample 0) and forks into `n`
    when its prompt is prefilled (`index` tells them apart; they share the prompt's blocks)."""

    request_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    sampling: SamplingParams
    priority: int
    arrival: int  # admission order; ties in priority go to the older request
    extra_keys: ExtraKeys
    stop_token_ids: frozenset[int]
    generator: torch.Generator | None = None
    grammar: SequenceGrammar | None = None  # structured output: the per-sequence matcher
    index: int = 0  # sample index within its request (0 .. n-1)
    forked: bool = False  # sample 0 of an n > 1 request, once its siblings exist
    status: SeqStatus = SeqStatus.WAITING
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # chain over full blocks of token_ids
    num_registered_blocks: int = 0  # leading blocks of block_table already in the prefix cache
    cached_tokens: int | None = None  # prefix-cache hit at first admission
    arrived_s: float | None = None  # engine clock when it was queued (SGLang's queue start)
    scheduled_s: float | None = None  # engine clock at its first admission (vLLM's scheduled_ts)
    num_preemptions: int = 0
    num_draft: int = 0  # unverified draft tokens at the end of token_ids (speculator.py; 0 between steps)
    spec_drafted: int = 0  # draft tokens verified for this sequence so far
    spec_accepted: int = 0  # ... of which accepted
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[TopLogprobs] = field(default_factory=list)
    finish_reason: str | None = None
    # incremental detokenization (see engine.py)
    text: str = ""
    emitted_text_len: int = 0
    prefix_offset: int = 0
    read_offset: int = 0
    utf8: codecs.IncrementalDecoder | None = None  # byte-level tokenizers' detokenizer

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def sort_key(self) -> tuple[int, int]:
        """Scheduling order: lower priority value first, then older first."""
        return (self.priority, self.arrival)

    def full_block_hashes(self, num_tokens: int, block_size: int) -> list[bytes]:
        """Chained hashes of the full blocks among the first `num_tokens` tokens (memoized)."""
        want = num_tokens // block_size
        while len(self.block_hashes) < want:
            i = len(self.block_hashes)
            parent = self.block_hashes[-1] if self.block_hashes else None
            chunk = self.token_ids[i * block_size : (i + 1) * block_size]
            self.block_hashes.append(block_hash(parent, chunk, self.extra_keys))
        return self.block_hashes[:want]
