"""Sampling one step's tokens in the torch engine: grammar masks for constrained sequences, the
sampler over the batch's logits (each sequence's own generator and penalties), and vetting of
the drawn tokens against their grammars. `EngineCore.step` (core.py) calls `draw` once per step,
after forked samples have taken their rows of their parent's logits.

A batch that uses no grammar skips the mask and vetting steps, and the sampler skips whatever
hook (penalties, random draws, logprobs) no row of the batch uses: plain greedy decoding pays
for none of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from legato.engine_adapter.torch.guided_masks import grammar_masks, vet_tokens
from legato.engine_adapter.torch.sampler import SampleOutput, needs_processing, sample
from legato.engine_adapter.torch.sequence import Sequence as Seq


def draw(seqs: Sequence[Seq], logits: torch.Tensor, default_gen: torch.Generator) -> SampleOutput:
    """One token per sequence (row i of `logits` is `seqs[i]`'s)."""
    # After the fork: each forked sample masks with its own grammar clone.
    masks = grammar_masks(seqs, logits.shape[-1])
    params = [s.sampling for s in seqs]
    drawn = sample(
        logits,
        params,
        [s.generator for s in seqs],
        default_gen,
        [s.output_ids if needs_processing(p) else () for s, p in zip(seqs, params, strict=True)],
        None if masks is None else masks.allowed,
        None if masks is None else masks.forced,
    )
    if masks is not None:  # last: nothing may change a sampled token after its vetting
        vet_tokens(seqs, drawn.tokens, drawn.logprobs, logits)
    return drawn
