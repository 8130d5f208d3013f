"""Lossless verification of a drafted continuation against the target model's logits.

A verify step runs the target on the last token plus g drafted tokens and gets g + 1 rows of
logits: row i is the target's distribution for the token after draft[:i]. Both rules emit
between 1 and g + 1 tokens and leave the output distribution exactly that of decoding without
speculation (Leviathan et al. 2023, Chen et al. 2023):

- greedy: accept the longest prefix of the draft equal to the row-wise argmax, then emit the
  target's own argmax at the first mismatch (or after the last draft token: the bonus token);
- sampled: with draft distribution q, accept draft token x with probability min(1, p(x) / q(x));
  on rejection sample from norm(max(0, p - q)); if all are accepted sample the bonus token from
  the last row. Tree and n-gram drafts are deterministic, q = a point mass on the drafted token,
  so acceptance is p(x) and the residual is p with x removed.

p is the distribution the sampler would draw from: temperature, top-k and top-p applied by the
sampler's own `filter_logits`. The engine's hooks (KV rollback of rejected positions, no prefix
caching of unverified tokens) are not here: this file is the rule, with its statistical test.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from legato.engine_adapter.base import SamplingParams
from legato.engine_adapter.torch.sampler import filter_logits


def _check(draft: Sequence[int], logits: Tensor) -> None:
    if logits.dim() != 2 or logits.shape[0] != len(draft) + 1:
        raise ValueError(
            f"need {len(draft) + 1} rows of logits for a draft of {len(draft)}, got {tuple(logits.shape)}"
        )


def verify_greedy(draft: Sequence[int], logits: Tensor) -> list[int]:
    """Tokens to emit: the accepted draft prefix and the target's next token."""
    _check(draft, logits)
    target = logits.argmax(dim=-1).tolist()
    out: list[int] = []
    for i, tok in enumerate(draft):
        if tok != target[i]:
            break
        out.append(tok)
    out.append(int(target[len(out)]))
    return out


def verify_sampled(
    draft: Sequence[int], logits: Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> list[int]:
    """Tokens to emit for a deterministic draft (q = point mass), rejection sampling."""
    _check(draft, logits)
    if params.temperature == 0.0 or params.top_k == 1:
        return verify_greedy(draft, logits)
    out: list[int] = []
    for i, tok in enumerate(draft):
        p = torch.softmax(filter_logits(logits[i].float(), params), dim=-1).cpu()
        if float(torch.rand((), generator=generator)) < float(p[tok]):
            out.append(tok)
            continue
        residual = p.clone()
        residual[tok] = 0.0
        if float(residual.sum()) <= 0.0:  # p was a point mass on tok: rejection has probability 0
            out.append(tok)
            continue
        out.append(int(torch.multinomial(residual / residual.sum(), 1, generator=generator).item()))
        return out
    p = torch.softmax(filter_logits(logits[len(draft)].float(), params), dim=-1).cpu()
    out.append(int(torch.multinomial(p, 1, generator=generator).item()))
    return out
