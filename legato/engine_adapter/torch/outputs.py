"""What the engine core reports: per-step request outputs (streamed as `TokenChunk`s) and the
counters behind metrics and tests."""

from __future__ import annotations

from dataclasses import dataclass

from legato.engine_adapter.base import TokenChunk, TopLogprobs
from legato.engine_adapter.torch.sequence import Sequence as Seq


@dataclass(frozen=True, slots=True)
class RequestOutput:
    """What one request produced in one step (a delta), or its final state."""

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[float, ...] | None
    finished: bool  # the request is over (all its samples)
    finish_reason: str | None  # set when this sample ended
    prompt_tokens: int
    cached_tokens: int
    index: int = 0
    top_logprobs: tuple[TopLogprobs, ...] | None = None
    weight_version: str | None = None  # the weights of the step that made these tokens
    spec_drafted: int = 0  # speculative tokens drafted for the request so far
    spec_accepted: int = 0

    def to_chunk(self) -> TokenChunk:
        return TokenChunk(
            token_ids=self.token_ids,
            text=self.text,
            logprobs=self.logprobs,
            finished=self.finished,
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            cached_tokens=self.cached_tokens,
            index=self.index,
            top_logprobs=self.top_logprobs,
            weight_version=self.weight_version,
            spec_drafted=self.spec_drafted,
            spec_accepted=self.spec_accepted,
        )


@dataclass(slots=True)
class PrefillPhase:
    """The prefill-phase metrics of vLLM (`vllm:request_prefill_time_seconds`,
    `vllm:request_prefill_kv_computed_tokens`) and SGLang (`sglang:queue_time_seconds`, the
    wait that its `time_to_first_token_seconds` adds to the prefill phase), summed: per request,
    the time from its first admission to its first token, the time it waited before that
    admission, and the prompt tokens the prefix cache did not serve. A scheduler reading them
    through either server's API learns this engine's prefill cost."""

    requests: int = 0
    seconds: float = 0.0
    queued_s: float = 0.0
    computed_tokens: int = 0

    def record(self, seq: Seq, now: float) -> None:
        if seq.scheduled_s is None or seq.cached_tokens is None:
            return
        self.requests += 1
        self.seconds += max(0.0, now - seq.scheduled_s)
        if seq.arrived_s is not None:
            self.queued_s += max(0.0, seq.scheduled_s - seq.arrived_s)
        self.computed_tokens += max(0, seq.num_prompt_tokens - seq.cached_tokens)


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Counters for metrics and tests. Blocks: `free` = allocatable now (free + evictable)."""

    total_blocks: int
    free_blocks: int
    used_blocks: int
    cached_blocks: int
    pins: int
    running: int
    waiting: int
    steps: int
    preemptions: int
    evictions: int
    prefix_hit_requests: int
    prefix_hit_tokens: int
    prompt_tokens: int
    generated_tokens: int
    tier_loaded_tokens: int = 0  # prompt tokens imported from the host tier / Redis before prefill
    offloaded_blocks: int = 0  # evicted blocks handed to the host tier
    prefill_tokens: int = 0  # prompt tokens run through the model (cache hits and forks excluded)
    # the prefill phase (`PrefillPhase`), summed over requests that reached their first token:
    # seconds from first admission to first token, and prompt tokens not served by the prefix
    # cache then
    prefilled_requests: int = 0
    prefill_time_s: float = 0.0
    prefill_queue_time_s: float = 0.0  # ... and their seconds from queued to first admission
    prefill_computed_tokens: int = 0
    forked_samples: int = 0  # samples of n > 1 requests that started from a forked prompt
    spec_drafts: int = 0  # verify steps that checked a draft (speculator.py)
    spec_draft_tokens: int = 0  # tokens drafted
    spec_accepted_tokens: int = 0  # drafted tokens the target accepted
    # per draft position i: verify steps whose draft reached i, and those that accepted its token
    spec_drafted_by_position: tuple[int, ...] = ()
    spec_accepted_by_position: tuple[int, ...] = ()
