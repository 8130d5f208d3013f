"""The sampler skips the hooks no row of the batch uses (penalties, random draws, grammar masks,
logprobs): a plain request decodes to the same tokens and logprobs whether its batch takes the
fast path (alone) or the full one (beside requests that use every hook)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from legato.engine_adapter.base import GenerateRequest, SamplingParams
from legato.engine_adapter.chat.grammar import json_schema_grammar
from legato.engine_adapter.torch import EngineCore
from legato.engine_adapter.torch.sampler import sample

PROMPT = tuple(b"The agent called a tool and")
SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}


def _run(core: EngineCore, requests: list[GenerateRequest]) -> dict[str, tuple[list[int], list[float]]]:
    outs = core.run_to_completion(requests)
    return {
        rid: ([t for o in out for t in o.token_ids], [lp for o in out for lp in (o.logprobs or [])])
        for rid, out in outs.items()
    }


def _hooked_neighbours() -> list[GenerateRequest]:
    return [
        GenerateRequest(
            "pen",
            tuple(b"other prompt"),
            SamplingParams(
                max_tokens=24, temperature=0.8, seed=3, presence_penalty=1.0, logit_bias=((65, 2.0),)
            ),
        ),
        GenerateRequest(
            "json",
            tuple(b"json please"),
            SamplingParams(
                max_tokens=24, temperature=1.0, seed=4, top_p=0.9, grammar=json_schema_grammar(SCHEMA)
            ),
        ),
    ]


@pytest.mark.parametrize("logprobs", [False, True])
def test_plain_request_same_on_fast_and_full_path(
    make_core: Callable[..., EngineCore], logprobs: bool
) -> None:
    plain = SamplingParams(max_tokens=20, ignore_eos=True, logprobs=logprobs)
    alone = _run(make_core(), [GenerateRequest("p", PROMPT, plain)])["p"]
    mixed = _run(make_core(), [GenerateRequest("p", PROMPT, plain), *_hooked_neighbours()])["p"]
    assert mixed[0] == alone[0] and len(alone[0]) == 20
    # A batch of other rows changes the float reduction order of the forward pass (a few 1e-6 on
    # some CPUs); 1e-4 is the logprob tolerance the API promises against a dense recompute.
    assert mixed[1] == pytest.approx(alone[1], abs=1e-4)
    assert len(alone[1]) == (20 if logprobs else 0)


def test_sample_fast_path_equals_argmax() -> None:
    """A batch of plain greedy rows: just the argmax, no logprobs."""
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    out = sample(logits, [SamplingParams()] * 4, [None] * 4, torch.Generator())
    assert out.tokens == logits.argmax(dim=-1).tolist()
    assert out.logprobs is None and out.top_logprobs is None
