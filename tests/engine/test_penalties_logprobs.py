"""Sampler fields beyond temperature/top-k/top-p: OpenAI's presence and frequency penalties,
`logit_bias`, and the `top_logprobs` alternatives, checked against the dense forward pass."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from legato.engine_adapter.base import GenerateRequest, SamplingParams
from legato.engine_adapter.torch import EngineCore
from legato.engine_adapter.torch.sampler import apply_penalties

PROMPT = (72, 101, 108, 108, 111, 44, 32, 119)


def test_penalties_follow_openais_formula() -> None:
    logits = torch.linspace(-1.0, 1.0, 10)
    sp = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, logit_bias=((9, -3.0), (0, 2.0)))
    out = apply_penalties(logits, sp, [3, 3, 3, 7])
    want = logits.clone()
    want[3] -= 3 * 0.25 + 0.5
    want[7] -= 1 * 0.25 + 0.5
    want[9] -= 3.0
    want[0] += 2.0
    assert torch.allclose(out, want)
    # negative penalties encourage repetition; tokens never generated are untouched
    enc = apply_penalties(logits, SamplingParams(presence_penalty=-1.0), [5])
    assert float(enc[5] - logits[5]) == pytest.approx(1.0)
    assert torch.equal(enc[:5], logits[:5])


def _reference(core: EngineCore, sp: SamplingParams, steps: int) -> list[int]:
    """Dense greedy decoding with the penalties applied over the generated tokens."""
    seq, out = list(PROMPT), []
    for _ in range(steps):
        logits = apply_penalties(core.model.dense_logits(seq)[-1], sp, out)
        out.append(int(logits.argmax()))
        seq.append(out[-1])
    return out


@pytest.mark.parametrize(
    "sp",
    [
        SamplingParams(max_tokens=24, ignore_eos=True, frequency_penalty=2.0),
        SamplingParams(max_tokens=24, ignore_eos=True, presence_penalty=2.0),
        SamplingParams(max_tokens=24, ignore_eos=True, presence_penalty=-2.0, frequency_penalty=-1.0),
    ],
)
def test_engine_applies_penalties_over_generated_tokens(
    make_core: Callable[..., EngineCore], sp: SamplingParams
) -> None:
    core = make_core()
    plain = core.run_to_completion(
        [GenerateRequest("p", PROMPT, SamplingParams(max_tokens=24, ignore_eos=True))]
    )["p"]
    got = core.run_to_completion([GenerateRequest("r", PROMPT, sp)])["r"]
    tokens = [t for o in got for t in o.token_ids]
    assert tokens == _reference(core, sp, 24)
    assert tokens != [t for o in plain for t in o.token_ids]  # the penalty changed the output
    if sp.presence_penalty > 0:
        # the seeded model repeats itself; a strong presence penalty spreads over more tokens
        assert len(set(tokens)) > len({t for o in plain for t in o.token_ids})


def test_logit_bias_forces_and_bans_tokens(make_core: Callable[..., EngineCore]) -> None:
    core = make_core()
    forced = SamplingParams(max_tokens=5, ignore_eos=True, logit_bias=((65, 100.0),))
    out = core.run_to_completion([GenerateRequest("a", PROMPT, forced)])["a"]
    assert [t for o in out for t in o.token_ids] == [65] * 5
    plain = core.run_to_completion([GenerateRequest("b", PROMPT, SamplingParams(max_tokens=1))])["b"]
    first = plain[0].token_ids[0]
    banned = SamplingParams(max_tokens=1, logit_bias=((first, -100.0),))
    out = core.run_to_completion([GenerateRequest("c", PROMPT, banned)])["c"]
    assert out[0].token_ids[0] != first


def test_top_logprobs_match_the_dense_forward(make_core: Callable[..., EngineCore]) -> None:
    core = make_core()
    sp = SamplingParams(max_tokens=8, temperature=0.7, seed=3, ignore_eos=True, logprobs=True, top_logprobs=3)
    out = core.run_to_completion([GenerateRequest("r", PROMPT, sp)])["r"]
    tokens = [t for o in out for t in o.token_ids]
    picked = [lp for o in out for lp in o.logprobs or ()]
    tops = [top for o in out for top in o.top_logprobs or ()]
    assert len(tops) == len(picked) == len(tokens) == 8
    seq = list(PROMPT)
    for token, lp, top in zip(tokens, picked, tops, strict=True):
        # raw logprobs: log-softmax of the model's logits, before temperature
        ref = torch.log_softmax(core.model.dense_logits(seq)[-1].double(), dim=-1)
        values, ids = torch.topk(ref, 3)
        assert [t for t, _ in top] == ids.tolist()
        for (_, got), want in zip(top, values.tolist(), strict=True):
            assert got == pytest.approx(want, abs=1e-4)
        assert lp == pytest.approx(float(ref[token]), abs=1e-4)
        seq.append(token)


def test_no_top_logprobs_unless_asked(make_core: Callable[..., EngineCore]) -> None:
    core = make_core()
    out = core.run_to_completion([GenerateRequest("r", PROMPT, SamplingParams(max_tokens=3, logprobs=True))])[
        "r"
    ]
    assert all(o.top_logprobs is None for o in out)
    assert all(o.logprobs is not None for o in out)


def test_logit_bias_outside_the_vocabulary_is_refused(make_core: Callable[..., EngineCore]) -> None:
    from legato.engine_adapter.base import EngineError

    core = make_core()
    with pytest.raises(EngineError, match="logit_bias"):
        core.add_request(GenerateRequest("r", PROMPT, SamplingParams(logit_bias=((10_000, 1.0),))))
