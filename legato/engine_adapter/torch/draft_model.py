"""`draft-model`: drafts from a smaller causal LM that shares the target's vocabulary, the
drafter of the original speculative decoding (Leviathan et al. 2023; vLLM's `draft_model`).

The draft is the small model's greedy continuation: one deterministic proposal, so the
verifier's rules apply unchanged (greedy: longest prefix equal to the target's argmax; sampled:
accept with p(x), q = 1 on the drafted token, resample from the residual), and output stays
lossless whatever the draft model says. Each drafted token's estimate is the draft model's own
probability of the whole prefix so far, which the back-off's acceptance calibration corrects like
any drafter's.

The draft model keeps a dense KV cache per context (the request's text), so a draft costs the
tokens verified since the last one plus one forward per drafted token, not the context. Before a
draft the cache is cut back to the longest prefix it shares with the text: rejected draft tokens
fall off, accepted ones stay. Its forward is the model's own paged forward with slot i holding
position i, so it runs the same code (and CPU kernels) as the target.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from legato.engine_adapter.torch.checkpoint import CheckpointError, load_model
from legato.engine_adapter.torch.model import AttentionContext, LlamaForCausalLM, PrefillSlice
from legato.spec.context import ProgramContext
from legato.spec.drafter import MODEL_DRAFTER
from legato.spec.suffix_index import Draft


@dataclass(slots=True)
class _Cache:
    """The draft model's KV of one context: positions [0, len(tokens)) hold `tokens`, which
    are the context's tokens from `start` on up to `verified`, then the last draft's."""

    kv: Tensor  # [layers, capacity, kv_heads, 2 * head_dim]
    start: int  # the context position of cache position 0 (> 0 once the text outgrew the model)
    tokens: list[int] = field(default_factory=list)
    verified: int = 0  # how many of `tokens` were the context's own when the last draft began


class DraftModelDrafter:
    """A `Drafter` over `model` (eval mode, on the target's device, any dtype)."""

    name = MODEL_DRAFTER

    def __init__(self, model: LlamaForCausalLM) -> None:
        self.model = model
        self.max_positions = model.config.max_position_embeddings
        weight = model.lm_head.weight
        self._device, self._dtype = weight.device, weight.dtype
        self._caches: weakref.WeakKeyDictionary[ProgramContext, _Cache] = weakref.WeakKeyDictionary()

    @torch.inference_mode()
    def propose(self, ctx: ProgramContext, max_len: int) -> Draft:
        n = len(ctx)
        max_len = min(max_len, self.max_positions - 1)
        if max_len <= 0 or n == 0:
            return Draft()
        cache = self._cache_for(ctx, n, max_len)
        new = ctx.index.tokens(cache.start + cache.verified)
        keep = cache.verified + _common_prefix(cache.tokens[cache.verified :], new)
        keep = min(keep, n - cache.start - 1)  # the last token is fed again: its logits are needed
        feed = ctx.index.tokens(cache.start + keep)
        del cache.tokens[keep:]
        logits = self._forward(cache, feed)
        cache.verified = len(cache.tokens)
        tokens: list[int] = []
        probs: list[float] = []
        joint = 1.0
        for i in range(max_len):
            dist = torch.softmax(logits, dim=-1)
            token = int(dist.argmax())
            joint *= float(dist[token])
            tokens.append(token)
            probs.append(joint)
            if i + 1 < max_len:
                logits = self._forward(cache, [token])
        return Draft(tuple(tokens), tuple(probs))

    def _cache_for(self, ctx: ProgramContext, n: int, max_len: int) -> _Cache:
        """The context's cache, started over where the text and a draft no longer fit the model's
        positions (then from the text's tail, half of the room a draft leaves, so that the next
        start-over is that many tokens away)."""
        cache = self._caches.get(ctx)
        if (
            cache is not None
            and n - cache.start + max_len <= self.max_positions
            and n >= cache.start + cache.verified
        ):
            return cache
        room = self.max_positions - max_len  # positions the text may take (>= 1: max_len is capped)
        start = 0 if n <= room else n - max(1, room // 2)
        cfg = self.model.config
        capacity = min(self.max_positions, max(64, 2 * (n - start + max_len)))
        kv = torch.zeros(
            cfg.num_hidden_layers,
            capacity,
            cfg.num_key_value_heads,
            2 * cfg.head_dim,
            device=self._device,
            dtype=self._dtype,
        )
        cache = self._caches[ctx] = _Cache(kv, start)
        return cache

    def _forward(self, cache: _Cache, tokens: list[int]) -> Tensor:
        """Run `tokens` after the cached ones; the logits `[vocab]` after the last of them."""
        past, count = len(cache.tokens), len(tokens)
        end = past + count
        if end > cache.kv.shape[1]:  # grow the cache (doubling: amortised O(1) per token)
            grown = cache.kv.new_zeros(
                cache.kv.shape[0],
                min(self.max_positions, max(end, 2 * cache.kv.shape[1])),
                *cache.kv.shape[2:],
            )
            grown[:, :past] = cache.kv[:, :past]
            cache.kv = grown
        dev = self._device
        positions = torch.arange(past, end, device=dev)
        slots = mask = None
        if past:
            slots = torch.arange(end, device=dev)
            mask = slots.unsqueeze(0) <= positions.unsqueeze(1)
        attention = AttentionContext(
            slot_mapping=positions,
            num_decode=0,
            decode_slots=None,
            decode_len=0,
            decode_mask=None,
            prefills=[PrefillSlice(0, count, end, slots, mask)],
        )
        ids = torch.tensor(tokens, dtype=torch.long, device=dev)
        hidden = self.model(ids, positions, attention, cache.kv)
        cache.tokens.extend(tokens)
        return self.model.logits(hidden[-1:])[0]


def load_draft_model(path: str, target: LlamaForCausalLM, device: str, dtype: str) -> LlamaForCausalLM:
    """The draft model from a checkpoint directory, on the target's device and dtype; it must
    have the target's vocabulary (the drafts are the target's token ids)."""
    try:
        is_dir = Path(path).is_dir()
    except (OSError, ValueError) as exc:  # a name too long, a NUL, an unencodable character
        raise CheckpointError(f"draft model directory {path!r} cannot be read: {exc}") from None
    if not is_dir:
        raise CheckpointError(f"draft model directory {path!r} does not exist or is not a directory")
    model = load_model(Path(path), device, dtype)
    if model.config.vocab_size != target.config.vocab_size:
        raise CheckpointError(
            f"draft model {path!r} has vocab_size {model.config.vocab_size} but the target has "
            f"{target.config.vocab_size}: a draft model must share the target's vocabulary"
        )
    return model


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


__all__ = ["DraftModelDrafter", "load_draft_model"]
