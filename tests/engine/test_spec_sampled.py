"""Sampled speculative decoding in the engine keeps the output distribution: outputs at
temperature 1, top-p 0.9 with and without speculation pass a two-sample chi-square test (fixed
seeds), while drafts are really proposed and accepted."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from legato.engine_adapter.base import GenerateRequest, SamplingParams
from legato.engine_adapter.torch import EngineCore
from legato.engine_adapter.torch.engine import build_core
from legato.engine_adapter.torch.speculator import Speculator
from legato.spec.backoff import StepCostModel
from tests.tiny_model import TINY

N = 300


class _PlainPriced(StepCostModel):
    """Plain decoding taken as priced at every batch size, so drafting starts at the first decode
    step (the speculator otherwise measures a plain step of the batch first, and these requests
    decode only three tokens): this test is about the distribution, not the back-off."""

    def covers(self, tokens: int) -> bool:
        return True


def _core(drafter: str | None) -> EngineCore:
    core = build_core(model_config=TINY, num_blocks=256, max_num_batched_tokens=256)
    with torch.no_grad():  # a peakier model: drafts of its own loop get accepted often
        core.model.lm_head.weight.mul_(4.0)
    if drafter is not None:
        # draft-model: the target itself, drafting its greedy path (sampling departs from it)
        core.speculator = Speculator(drafter, 4, draft_model=core.model)
        core.speculator.decode_cost = _PlainPriced()
    return core


def _homogeneity_p(a: Counter[int], b: Counter[int]) -> float:
    """Two-sample chi-square p-value; categories with fewer than 10 draws in all are pooled."""
    keys = sorted(set(a) | set(b))
    big = [k for k in keys if a[k] + b[k] >= 10]
    rows = [[a[k], b[k]] for k in big]
    rows.append([sum(a[k] for k in keys if k not in big), sum(b[k] for k in keys if k not in big)])
    table = torch.tensor([r for r in rows if sum(r) > 0], dtype=torch.float64)
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    chi2 = float(((table - expected) ** 2 / expected).sum())
    dof = table.shape[0] - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0), torch.tensor(chi2 / 2.0)))


@pytest.mark.slow
@pytest.mark.parametrize("drafter", ["suffix", "draft-model"])
def test_sampled_outputs_have_the_same_distribution_with_speculation(drafter: str) -> None:
    base = tuple(range(40, 48))
    loop = _core(None).run_to_completion(
        [GenerateRequest("g", base, SamplingParams(max_tokens=24, ignore_eos=True))]
    )
    prompt = base + tuple(t for o in loop["g"] for t in o.token_ids) * 2  # the model's own text
    outs = {}
    for speculate in (False, True):
        core = _core(drafter if speculate else None)
        sp = [
            SamplingParams(max_tokens=4, temperature=1.0, top_p=0.9, seed=i, ignore_eos=True)
            for i in range(N)
        ]
        got = core.run_to_completion([GenerateRequest(f"r{i}", prompt, sp[i]) for i in range(N)])
        outs[speculate] = [tuple(t for o in got[f"r{i}"] for t in o.token_ids) for i in range(N)]
        if speculate:
            assert core.speculator is not None
            assert core.speculator.accepted > N / 4  # the rejection path and the accept path both ran
            assert core.speculator.accepted < core.speculator.drafted
    assert all(len(o) == 4 for o in outs[True])
    for position in (1, 2, 3):  # the tokens drafts decide
        p = _homogeneity_p(
            Counter(o[position] for o in outs[False]), Counter(o[position] for o in outs[True])
        )
        assert p > 1e-3, (position, p)
