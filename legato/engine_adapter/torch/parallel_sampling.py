"""Parallel sampling (`n > 1`): one prefill, then `n` sequences sharing the prompt's KV blocks.

The request runs as one sequence (sample 0) until its prompt is prefilled. Then `fork_samples`
makes samples 1..n-1: copies of its state that take a reference on each of its blocks instead of
computing the prompt again (nano-vllm-style refcounted sharing). Full blocks stay shared; the
partly filled last block is copied by the scheduler the first time a sample appends to it
(copy-on-write). Every sample draws its first token from the parent's last logits row and then
decodes on its own: preempted, recomputed (mostly from the prefix cache) and finished like any
sequence. A structured-output request's samples each get a clone of sample 0's grammar matcher.
"""

from __future__ import annotations

import itertools

import torch

from legato.engine_adapter.torch.block_manager import BlockManager
from legato.engine_adapter.torch.sequence import SeqStatus, Sequence


def fork_samples(seq: Sequence, blocks: BlockManager, arrivals: itertools.count[int]) -> list[Sequence]:
    """Samples 1..n-1 of `seq`'s request, sharing its blocks; `seq` stays sample 0. Seeded
    requests give sample i the seed `seed + i` (as vLLM does), so each sample is reproducible
    on its own."""
    seq.forked = True
    sp = seq.sampling
    children: list[Sequence] = []
    for i in range(1, sp.n):
        blocks.fork(seq.block_table)
        children.append(
            Sequence(
                request_id=seq.request_id,
                token_ids=list(seq.token_ids),
                num_prompt_tokens=seq.num_prompt_tokens,
                sampling=sp,
                priority=seq.priority,
                arrival=next(arrivals),  # its own decode-workspace row
                extra_keys=seq.extra_keys,
                stop_token_ids=seq.stop_token_ids,
                # wraps at 2^64 (torch's seed range; a seed of 2^64 - 1 with n > 1 overflowed)
                generator=torch.Generator().manual_seed((sp.seed + i) % 2**64)
                if sp.seed is not None
                else None,
                # Its own matcher: a shared one would move on every sibling's tokens (and a
                # missing one would leave the sample unconstrained).
                grammar=None if seq.grammar is None else seq.grammar.fork(),
                index=i,
                forked=True,
                status=SeqStatus.RUNNING,
                num_computed_tokens=seq.num_computed_tokens,
                block_table=list(seq.block_table),
                block_hashes=list(seq.block_hashes),
                num_registered_blocks=seq.num_registered_blocks,
                cached_tokens=seq.cached_tokens,
            )
        )
    return children
