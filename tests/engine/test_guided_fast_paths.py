"""Guided decoding's fast paths change no output. The engine keeps each sequence's next-token mask
from the moment its previous token was vetted, and takes a forced token (the only one its grammar
allows) without a draw. Reference: masks computed afresh from the matcher at every step, none
forced, every sampled row drawn. Greedy decoding gives the same tokens either way (the masked
argmax of a one-token mask is that token); sampled rows keep the masked distribution, and a
forced row leaves its generator alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from legato.engine_adapter.base import GenerateRequest, SamplingParams
from legato.engine_adapter.chat.grammar import json_schema_grammar
from legato.engine_adapter.torch import EngineCore, step_sampling
from legato.engine_adapter.torch.guided_masks import StepMasks, grammar_masks
from legato.engine_adapter.torch.sampler import sample

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "n": {"type": "integer"},
        "tags": {"type": "array", "items": {"enum": ["x", "yy"]}},
    },
    "required": ["name", "n", "tags"],
}


def _fresh_masks(seqs: Sequence[Any], vocab_size: int) -> StepMasks | None:
    """The reference: each constrained row's mask straight from llguidance (one byte a token),
    no forced rows. Also checks that the mask the sequence kept is this state's."""
    if all(s.grammar is None for s in seqs):
        return None
    rows = []
    for s in seqs:
        g = s.grammar
        allowed = torch.ones(vocab_size, dtype=torch.bool)
        if g is not None:
            m = g.matcher
            allowed[:] = False
            if not m.is_error():
                allowed = (
                    torch.frombuffer(bytearray(m.compute_logit_bias()), dtype=torch.uint8)[:vocab_size] > 0
                )
            if m.is_accepting() or m.is_error():
                allowed[list(g.stops)] = True
            assert g.mask() == sum(1 << t for t in allowed.nonzero().flatten().tolist())
        rows.append(allowed)
    return StepMasks(torch.stack(rows), {})


def _requests(temperature: float) -> list[GenerateRequest]:
    grammar = json_schema_grammar(SCHEMA)
    reqs = [
        GenerateRequest(
            f"g{i}",
            tuple(f"record {i}:".encode()),
            SamplingParams(
                max_tokens=40 + 15 * i, temperature=temperature, top_p=0.9, seed=i, grammar=grammar
            ),
        )
        for i in range(4)
    ]
    plain = SamplingParams(max_tokens=30, temperature=temperature, seed=9, ignore_eos=True)
    return [*reqs, GenerateRequest("plain", tuple(b"no grammar"), plain)]


def _tokens(core: EngineCore, requests: list[GenerateRequest]) -> dict[str, list[int]]:
    outs = core.run_to_completion(requests)
    return {rid: [t for o in out for t in o.token_ids] for rid, out in outs.items()}


def test_greedy_output_is_the_same_with_and_without_the_fast_paths(
    make_core: Callable[..., EngineCore], monkeypatch: pytest.MonkeyPatch
) -> None:
    forced_rows: list[int] = []

    def counted(seqs: Sequence[Any], vocab_size: int) -> StepMasks | None:
        masks = grammar_masks(seqs, vocab_size)
        forced_rows.extend(masks.forced if masks else ())
        return masks

    monkeypatch.setattr(step_sampling, "grammar_masks", counted)
    fast = _tokens(make_core(num_blocks=256), _requests(0.0))
    assert forced_rows  # the fast path ran (keys and punctuation are forced)
    monkeypatch.setattr(step_sampling, "grammar_masks", _fresh_masks)
    assert _tokens(make_core(num_blocks=256), _requests(0.0)) == fast


def test_kept_masks_are_each_states_own_while_sampling(
    make_core: Callable[..., EngineCore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sampled (temperature, top-p) constrained rows: at every step the mask a sequence kept
    equals a fresh one from its matcher (`_fresh_masks` asserts it)."""
    monkeypatch.setattr(step_sampling, "grammar_masks", _fresh_masks)
    out = _tokens(make_core(num_blocks=256), _requests(1.0))
    assert all(out[f"g{i}"] for i in range(4))


def test_a_forced_row_takes_its_token_without_a_draw() -> None:
    """Whatever the row's temperature, top-k or top-p, a forced row gets its token and its
    generator does not move; the other rows draw exactly what they draw without it."""
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    params = [
        SamplingParams(temperature=0.7, top_k=5, top_p=0.8, seed=1),
        SamplingParams(temperature=1.0, seed=2),
        SamplingParams(),
    ]
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    allowed = torch.ones(3, 40, dtype=torch.bool)
    allowed[0] = False
    allowed[0, 17] = True
    state = gens[0].get_state()
    out = sample(logits, params, gens, torch.Generator(), allowed=allowed, forced={0: 17})
    assert out.tokens[0] == 17 and torch.equal(gens[0].get_state(), state)
    again = sample(logits[1:], params[1:], [torch.Generator().manual_seed(1), None], torch.Generator())
    assert out.tokens[1:] == again.tokens
