"""Drafters: what proposes the tokens a verify step checks. One protocol, a registry by name.

- `suffix`: SuffixDecoding's draft (see suffix_index.py) from two sources, the program's own
  context and the agent's earlier outputs; the higher-scoring draft wins, as SuffixDecoding
  chooses between its per-request and global trees.
- `ngram`: prompt lookup (ngram.py), the baseline.
- `draft-model`: a smaller model's greedy continuation. It runs a model, so the torch engine
  builds it from its configured draft model (`engine_adapter/torch/draft_model.py`); these
  drafters work on text alone.

Parameters default to vLLM's SuffixDecoding defaults (`suffix_decoding_max_tree_depth` 24,
`max_spec_factor` 1.0, `min_token_prob` 0.1), not to values searched on our traces.
"""

from __future__ import annotations

from typing import Protocol

from legato.spec.context import ProgramContext
from legato.spec.ngram import NgramDrafter
from legato.spec.suffix_index import Draft

MODEL_DRAFTER = "draft-model"


class Drafter(Protocol):
    name: str

    def propose(self, ctx: ProgramContext, max_len: int) -> Draft:
        """At most `max_len` tokens likely to follow the context."""
        ...


class SuffixDrafter:
    name = "suffix"

    def __init__(
        self,
        *,
        local: bool = True,
        agent: bool = True,
        max_depth: int = 24,
        spec_factor: float = 1.0,
        min_prob: float = 0.1,
    ) -> None:
        if not (local or agent):
            raise ValueError("a suffix drafter needs at least one source (local or agent)")
        if max_depth < 2 or spec_factor <= 0 or not 0.0 <= min_prob <= 1.0:
            raise ValueError("need max_depth >= 2, spec_factor > 0 and 0 <= min_prob <= 1")
        self.local = local
        self.agent = agent
        self.max_depth = max_depth
        self.spec_factor = spec_factor
        self.min_prob = min_prob

    def propose(self, ctx: ProgramContext, max_len: int) -> Draft:
        if max_len <= 0:
            return Draft()
        q = ctx.tail(self.max_depth)
        best = Draft()
        sources = []
        if self.local:
            sources.append(ctx.index)
        if self.agent and ctx.history is not None:
            idx = ctx.history.index(ctx.agent)
            if idx is not None:
                sources.append(idx)
        for idx in sources:
            d = idx.draft(
                q, max_len, max_depth=self.max_depth, spec_factor=self.spec_factor, min_prob=self.min_prob
            )
            if d.score > best.score:
                best = d
        return best


def make_drafter(name: str) -> Drafter:
    """A drafter by name; ValueError (listing the valid names) for an unknown one."""
    if name == "suffix":
        return SuffixDrafter()
    if name == "suffix-local":
        return SuffixDrafter(agent=False)
    if name == "suffix-agent":
        return SuffixDrafter(local=False)
    if name == "ngram":
        return NgramDrafter()
    if name == MODEL_DRAFTER:
        raise ValueError(f"the {name!r} drafter runs a model: an engine builds it from its draft model")
    raise ValueError(f"unknown drafter {name!r}; valid: {', '.join(DRAFTER_NAMES)}")


DRAFTER_NAMES = ("suffix", "suffix-local", "suffix-agent", "ngram")  # the text drafters
ENGINE_DRAFTERS = (*DRAFTER_NAMES, MODEL_DRAFTER)  # what an engine's config or a request may name
