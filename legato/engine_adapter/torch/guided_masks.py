"""One step's grammar masks and the vetting of its sampled tokens (see `guided.py`).

llguidance writes each constrained row's next-token bitmask (bit i of word j allows token
32 j + i) straight into one int32 buffer for the batch; one numpy `unpackbits` of its
little-endian bytes expands every row at once into the `[B, vocab]` bool mask the sampler
applies, instead of several torch ops per step on a tensor of a few hundred bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from legato.engine_adapter.base import SamplingParams
from legato.engine_adapter.torch.guided import SequenceGrammar


class Seq(Protocol):
    """What the mask and vetting steps read of an engine sequence (`torch.sequence.Sequence`,
    which imports `guided.py`)."""

    @property
    def grammar(self) -> SequenceGrammar | None: ...
    @property
    def sampling(self) -> SamplingParams: ...
    @property
    def num_output_tokens(self) -> int: ...


def grammar_masks(seqs: Sequence[Seq], vocab_size: int) -> Tensor | None:
    """`[B, vocab]` bool: the tokens each sequence's grammar allows next (every token for
    unconstrained rows); None when no row is constrained. An accepting (or failed) matcher
    also allows its sequence's stop tokens."""
    if all(s.grammar is None for s in seqs):
        return None
    words = (vocab_size + 31) // 32
    bits = np.full((len(seqs), words), -1, dtype="<i4")
    base = bits.ctypes.data
    stops: list[int] = []
    for row, s in enumerate(seqs):
        g = s.grammar
        if g is None:
            continue
        m = g.matcher
        if m.is_error():
            bits[row] = 0
        else:
            m.unsafe_compute_mask_ptr(base + row * words * 4, words * 4)
        if m.is_accepting() or m.is_error():
            stops.extend(row * words * 32 + t for t in g.stops)
    allowed = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")
    allowed.reshape(-1)[stops] = 1
    return torch.from_numpy(allowed).view(torch.bool)[:, :vocab_size]


def vet_tokens(seqs: Sequence[Seq], tokens: list[int], logprobs: list[float] | None, logits: Tensor) -> None:
    """Move each constrained sequence's matcher on its sampled token, replacing a token that
    would leave it unable to close within its budget (a replaced token's logprob is read from
    `logits`)."""
    for i, seq in enumerate(seqs):
        if seq.grammar is None:
            continue
        token = seq.grammar.vet(tokens[i], seq.sampling.max_tokens - seq.num_output_tokens)
        if token != tokens[i]:
            tokens[i] = token
            if logprobs is not None:
                logprobs[i] = float(torch.log_softmax(logits[i].float(), dim=-1)[token])
