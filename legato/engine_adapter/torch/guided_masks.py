"""One step's grammar masks and the vetting of its sampled tokens (see `guided.py`).

Each constrained sequence keeps the tokens its grammar allows next as one Python integer (bit t:
token t; `SequenceGrammar.mask`), computed right after its previous token was vetted. A step
then needs, per row, only integer operations, and for the batch one join of the rows' bytes and
one numpy `unpackbits` into the `[B, vocab]` bool mask the sampler applies: on a loaded machine
each numpy or torch call that runs once per step after a forward pass costs tens of
microseconds (its code and data evicted), so the step pays for as few as possible.

A row whose grammar allows exactly one token (a key's next byte, a literal, `:` after a key) is
*forced*: the masked distribution puts all its mass on that token whatever the logits,
temperature, top-k or top-p, so the sampler takes it without a draw (no softmax, no random
number). When every constrained row of a step is forced, no mask tensor is built at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class StepMasks:
    """One step's grammar masks: `allowed` `[B, vocab]` bool (every token for unconstrained
    rows; None when every constrained row is forced), and `forced` the rows whose grammar allows
    exactly one token, with that token."""

    allowed: Tensor | None
    forced: dict[int, int]


def grammar_masks(seqs: Sequence[Seq], vocab_size: int) -> StepMasks | None:
    """The tokens each sequence's grammar allows next; None when no row is constrained."""
    if all(s.grammar is None for s in seqs):
        return None
    nbytes = (vocab_size + 31) // 32 * 4
    rows: list[bytes] = []
    forced: dict[int, int] = {}
    drawn = 0  # constrained rows that are not forced
    for row, s in enumerate(seqs):
        g = s.grammar
        if g is None:
            rows.append(b"\xff" * nbytes)
            continue
        bits = g.mask()
        if bits.bit_count() == 1:
            forced[row] = bits.bit_length() - 1
        else:
            drawn += 1
        rows.append(bits.to_bytes(nbytes, "little"))
    if not drawn:
        return StepMasks(None, forced)
    unpacked = np.unpackbits(np.frombuffer(b"".join(rows), dtype=np.uint8), bitorder="little")
    allowed = torch.from_numpy(unpacked).view(torch.bool).view(len(seqs), -1)[:, :vocab_size]
    return StepMasks(allowed, forced)


def vet_tokens(seqs: Sequence[Seq], tokens: list[int], logprobs: list[float] | None, logits: Tensor) -> None:
    """Move each constrained sequence's matcher on its sampled token, replacing a token that
    would leave it unable to close within its budget (a replaced token's logprob is read from
    `logits`), and compute its next mask while llguidance's tables are still in cache."""
    for i, seq in enumerate(seqs):
        g = seq.grammar
        if g is None:
            continue
        budget = seq.sampling.max_tokens - seq.num_output_tokens
        token = g.vet(tokens[i], budget)
        if token != tokens[i]:
            tokens[i] = token
            if logprobs is not None:
                logprobs[i] = float(torch.log_softmax(logits[i].float(), dim=-1)[token])
        if budget > 1 and token not in g.stops:  # the sequence goes on: its next step's mask
            g.mask()
