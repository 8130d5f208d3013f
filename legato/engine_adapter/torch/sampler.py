"""Next-token sampling for a batch of sequences.

Greedy rows are decided by one batched argmax. Sampled rows use the request's own
`torch.Generator` (seeded from `SamplingParams.seed`), so a seeded request draws the same tokens
whatever else shares its batch. Reported logprobs are log-softmax values of the *unmodified*
model distribution at the sampled token (as vLLM reports by default), not of the distribution
after temperature / top-k / top-p.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import torch
from torch import Tensor

from legato.engine_adapter.base import SamplingParams


def filter_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """Apply temperature, top-k and top-p to one row of logits (returns a new tensor)."""
    out = logits / params.temperature
    if params.top_k > 0 and params.top_k < out.shape[-1]:
        kth = torch.topk(out, params.top_k).values[-1]
        out = out.masked_fill(out < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(out, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Keep the smallest set whose mass reaches top_p: drop a token when the mass before it
        # already reaches top_p (the top token is always kept).
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def sample(
    logits: Tensor,
    params: Seq[SamplingParams],
    generators: Seq[torch.Generator | None],
    default_generator: torch.Generator,
    allowed: Tensor | None = None,
) -> tuple[list[int], list[float] | None]:
    """Sample one token per row of `logits` `[B, vocab]` (float32), among the tokens `allowed`
    marks (`[B, vocab]` bool from the rows' grammars; None: any token).

    Returns the token ids and, when any row asked for them, the logprob of each sampled token.
    """
    choose = logits if allowed is None else logits.masked_fill(~allowed.to(logits.device), float("-inf"))
    greedy = choose.argmax(dim=-1).tolist()
    tokens: list[int] = [int(t) for t in greedy]
    for row, p in enumerate(params):
        if p.temperature == 0.0 or p.top_k == 1:
            continue
        probs = torch.softmax(filter_logits(choose[row], p), dim=-1)
        gen = generators[row] or default_generator
        tokens[row] = int(torch.multinomial(probs.cpu(), 1, generator=gen).item())
    if not any(p.logprobs for p in params):
        return tokens, None
    logprobs = torch.log_softmax(logits, dim=-1)
    index = torch.tensor(tokens, device=logits.device).unsqueeze(1)
    picked = logprobs.gather(1, index).squeeze(1).tolist()
    return tokens, [float(x) for x in picked]
