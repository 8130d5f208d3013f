"""A rollout's record and how one generation's chunks become per-sample outputs.

Why a record server-side: multi-turn RL needs the whole trajectory with a loss mask (model tokens
1, tool / environment tokens 0), the logprob the sampler used for every model token, and the
weight version each token came from (a rollout kept across a weight update spans two versions).
The frameworks each rebuild this from per-turn answers; keeping it here means one
implementation, and `GET /v1/rollouts/{id}` hands it back ready for the trainer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from legato.engine_adapter.base import TokenChunk, TopLogprobs


@dataclass(slots=True)
class SampleOutput:
    """What one sample of one generation produced, token by token."""

    index: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[TopLogprobs] = field(default_factory=list)
    weight_versions: list[str | None] = field(default_factory=list)
    finish_reason: str = "abort"
    prompt_tokens: int = 0
    cached_tokens: int = 0

    @property
    def weight_version(self) -> str | None:
        """The version of the last token (the one that ended the turn)."""
        return self.weight_versions[-1] if self.weight_versions else None


def assemble_outputs(chunks: Sequence[TokenChunk], n: int) -> list[SampleOutput]:
    """Chunks of one (possibly n > 1) generation, split by sample, versions per token."""
    outs = [SampleOutput(index=i) for i in range(n)]
    for chunk in chunks:
        if not 0 <= chunk.index < n:
            continue
        out = outs[chunk.index]
        out.token_ids.extend(chunk.token_ids)
        if chunk.logprobs is not None:
            out.logprobs.extend(chunk.logprobs)
        if chunk.top_logprobs is not None:
            out.top_logprobs.extend(chunk.top_logprobs)
        out.weight_versions.extend([chunk.weight_version] * len(chunk.token_ids))
        if chunk.finish_reason is not None:
            out.finish_reason = chunk.finish_reason
        out.prompt_tokens = max(out.prompt_tokens, chunk.prompt_tokens)
        out.cached_tokens = max(out.cached_tokens, chunk.cached_tokens)
    return outs


@dataclass(slots=True)
class Rollout:
    """One trajectory: `prompt_ids`, then `response_ids` (every later token, model and env) with
    `response_mask` 1 for model tokens and 0 for env tokens; `response_logprobs` and
    `weight_versions` line up with `response_ids` (0.0 / None at env tokens)."""

    rollout_id: str
    tenant: str
    prompt_ids: list[int]
    group_id: str | None = None
    response_ids: list[int] = field(default_factory=list)
    response_mask: list[int] = field(default_factory=list)
    response_logprobs: list[float] = field(default_factory=list)
    weight_versions: list[str | None] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    num_turns: int = 0
    running: str | None = None  # the call id of the turn in flight
    created: float = field(default_factory=time.monotonic)

    @property
    def context(self) -> tuple[int, ...]:
        """What the next turn's prompt is: everything so far."""
        return (*self.prompt_ids, *self.response_ids)

    @property
    def status(self) -> str:
        if self.running is not None:
            return "running"
        if not self.finish_reasons:
            return "new"
        return "aborted" if self.finish_reasons[-1] == "abort" else "idle"

    def add_env(self, token_ids: Sequence[int]) -> None:
        """Tool or environment tokens: part of the context, not trained on (mask 0)."""
        self.response_ids.extend(token_ids)
        self.response_mask.extend([0] * len(token_ids))
        self.response_logprobs.extend([0.0] * len(token_ids))
        self.weight_versions.extend([None] * len(token_ids))

    def add_model(self, out: SampleOutput) -> None:
        """A turn's model tokens (mask 1). A turn aborted part-way keeps its partial tokens, so
        a later turn resumes after them."""
        ids = out.token_ids
        self.response_ids.extend(ids)
        self.response_mask.extend([1] * len(ids))
        lps = out.logprobs if len(out.logprobs) == len(ids) else [0.0] * len(ids)
        self.response_logprobs.extend(lps)
        self.weight_versions.extend(out.weight_versions)
        self.finish_reasons.append(out.finish_reason)
        self.num_turns += 1
