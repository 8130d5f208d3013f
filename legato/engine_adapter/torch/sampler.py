"""Next-token sampling for a batch of sequences.

The order per row is vLLM's: `logit_bias`, then the presence / frequency penalties (over the
tokens the sequence generated so far, as OpenAI defines them), then the grammar mask of
structured output, then greedy argmax or temperature, top-k and top-p before drawing. Sampled
rows use the request's own `torch.Generator` (seeded from `SamplingParams.seed`), so a seeded
request draws the same tokens whatever else shares its batch.

Reported logprobs, and the `top_logprobs` alternatives, are log-softmax values of the *raw* model
logits (vLLM's default `raw_logprobs` mode): not of the distribution after bias, penalties,
temperature, top-k or top-p. So they are the model's own probabilities, comparable across
requests and checkable against a plain forward pass, whatever the sampling settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch
from torch import Tensor

from legato.engine_adapter.base import SamplingParams, TopLogprobs


@dataclass(frozen=True, slots=True)
class SampleOutput:
    """One step's draw: a token per row, and the logprobs the rows asked for (else None)."""

    tokens: list[int]
    logprobs: list[float] | None
    top_logprobs: list[TopLogprobs] | None


def apply_penalties(logits: Tensor, params: SamplingParams, output_ids: Seq[int]) -> Tensor:
    """One row of logits with `logit_bias` and OpenAI's penalties applied (a new tensor):
    `logit[t] += bias[t] - frequency_penalty * count(t) - presence_penalty * (count(t) > 0)`,
    `count(t)` being how often t appears among the generated tokens `output_ids`."""
    out = logits.clone()
    if params.logit_bias:
        ids = torch.tensor([t for t, _ in params.logit_bias], dtype=torch.long, device=out.device)
        bias = torch.tensor([b for _, b in params.logit_bias], dtype=out.dtype, device=out.device)
        out.index_add_(0, ids, bias)
    if (params.presence_penalty or params.frequency_penalty) and output_ids:
        ids = torch.tensor(list(output_ids), dtype=torch.long, device=out.device)
        counts = torch.bincount(ids, minlength=out.shape[-1])[: out.shape[-1]].to(out.dtype)
        out -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).to(out.dtype)
    return out


def needs_processing(params: SamplingParams) -> bool:
    """Whether `apply_penalties` changes anything for these params (else the raw logits serve)."""
    return bool(params.logit_bias) or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0


def filter_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """Apply temperature, top-k and top-p to one row of logits (returns a new tensor). The row is
    shifted by its maximum before the division (softmax does not change): a temperature as
    small as the API allows (any float above 0) would otherwise overflow the logits to inf, and
    one below the dtype's smallest normal number is its limit, the top tokens only (else it
    rounds to 0 and the division gives NaN)."""
    out = logits - logits.max()
    if params.temperature < torch.finfo(out.dtype).tiny:
        out = out.masked_fill(out < 0, float("-inf"))
    else:
        out = out / params.temperature
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
        drop_sorted[0] = False  # even where top_p rounds to 0 in float32 (5e-324 does)
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def top_logprobs(logprobs: Tensor, ks: Seq[int]) -> list[TopLogprobs]:
    """The `ks[row]` most likely (token, logprob) pairs of each row of `logprobs` `[B, vocab]`."""
    k_max = max(ks, default=0)
    if k_max == 0:
        return [() for _ in ks]
    values, ids = torch.topk(logprobs, min(k_max, logprobs.shape[-1]), dim=-1)
    vals, idx = values.tolist(), ids.tolist()
    return [
        tuple((int(t), float(v)) for t, v in zip(idx[row][:k], vals[row][:k], strict=True))
        for row, k in enumerate(ks)
    ]


def sample(
    logits: Tensor,
    params: Seq[SamplingParams],
    generators: Seq[torch.Generator | None],
    default_generator: torch.Generator,
    output_ids: Seq[Seq[int]] | None = None,
    allowed: Tensor | None = None,
    forced: Mapping[int, int] | None = None,
) -> SampleOutput:
    """Sample one token per row of `logits` `[B, vocab]` (float32). `output_ids[row]`: the tokens
    that row's sequence generated so far (for the penalties; only read when one is set).
    `allowed` (`[B, vocab]` bool from the rows' grammars; None: any token) masks the processed
    logits last, so no bias or penalty can bring back a token the grammar forbids. `forced`:
    rows whose mask allows one token, and that token: it has all the masked probability
    whatever the sampling settings, so it is taken without a draw (the row's generator does
    not move: its later draws are still independent uniforms, the distribution unchanged)."""
    forced = forced or {}
    # Each hook runs only when some row of the batch uses it: plain greedy rows pay for none.
    penalised = [row for row, p in enumerate(params) if needs_processing(p) and row not in forced]
    drawn = [
        row for row, p in enumerate(params) if p.temperature != 0.0 and p.top_k != 1 and row not in forced
    ]
    processed = logits
    if penalised:
        processed = logits.clone()
        for row in penalised:
            processed[row] = apply_penalties(logits[row], params[row], output_ids[row] if output_ids else ())
    if allowed is not None:
        processed = torch.where(allowed.to(processed.device), processed, float("-inf"))
    tokens: list[int] = processed.argmax(dim=-1).tolist()
    for row, token in forced.items():
        tokens[row] = token
    for row in drawn:
        p = params[row]
        probs = torch.softmax(filter_logits(processed[row], p), dim=-1)
        gen = generators[row] or default_generator
        tokens[row] = int(torch.multinomial(probs.cpu(), 1, generator=gen).item())
    if not any(p.logprobs for p in params):
        return SampleOutput(tokens, None, None)
    logprobs = torch.log_softmax(logits, dim=-1)
    index = torch.tensor(tokens, device=logits.device).unsqueeze(1)
    picked = [float(x) for x in logprobs.gather(1, index).squeeze(1).tolist()]
    ks = [p.top_logprobs if p.logprobs else 0 for p in params]
    top = top_logprobs(logprobs, ks) if any(ks) else None
    return SampleOutput(tokens, picked, top)
