"""The trainer side of a toy RL loop on Legato's own model class: which tensors to optimise and
the per-token logprobs of a sequence with gradients.

Why not `model.parameters()`: the model fuses q/k/v (and gate/up) into one tensor each and makes
the per-projection parameters views into it; the forward pass reads the fused tensors, so those
are what get gradients. The views keep Hugging Face's names, so `state_dict()` after a step holds
the new weights under the names `legato serve` checks an update against.
"""

from __future__ import annotations

import torch

from legato.engine_adapter.torch.model import LlamaForCausalLM

_FUSED = ("qkv_weight", "qkv_bias", "gate_up_weight")
_VIEWS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")


def trainable_tensors(model: LlamaForCausalLM) -> list[torch.Tensor]:
    """Every tensor the forward pass reads, once, set to require gradients."""
    views: set[int] = set()
    out: list[torch.Tensor] = []
    for module in model.modules():
        for name in _FUSED:
            t = getattr(module, name, None)
            if isinstance(t, torch.Tensor):
                out.append(t)
        for name in _VIEWS:
            lin = getattr(module, name, None)
            if isinstance(lin, torch.nn.Linear):
                views.add(id(lin.weight))
                if lin.bias is not None:
                    views.add(id(lin.bias))
    seen = {id(t) for t in out}
    for p in model.parameters():
        if id(p) not in views and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    for t in out:
        t.requires_grad_(True)
    return out


def token_logprobs(model: LlamaForCausalLM, token_ids: list[int], start: int) -> torch.Tensor:
    """log p(token_ids[i] | token_ids[:i]) for i >= `start` (a dense causal forward pass: with
    gradients when the model's tensors require them, under whatever grad mode the caller set)."""
    device = model.lm_head.weight.device
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=device)
    positions = torch.arange(ids.shape[0], device=device)
    logits = model.logits(model.forward(ids, positions))
    logp = torch.log_softmax(logits[start - 1 : -1], dim=-1)
    return logp.gather(1, ids[start:].unsqueeze(1)).squeeze(1)
