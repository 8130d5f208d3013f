"""Verification rules: greedy emits exactly what greedy decoding would; sampled verification
leaves the output distribution unchanged (chi-square against the exact distribution)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from legato.engine_adapter.base import SamplingParams
from legato.engine_adapter.torch.sampler import filter_logits
from legato.engine_adapter.torch.spec_verify import verify_greedy, verify_sampled

V = 6
_LOGITS = torch.randn(V, V, generator=torch.Generator().manual_seed(3)) * 1.5  # Markov "model"


def _rows(last: int, draft: list[int]) -> torch.Tensor:
    """The target's logits at each verify position: after last, after draft[0], ..."""
    return torch.stack([_LOGITS[t] for t in [last, *draft]])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, V - 1), st.lists(st.integers(0, V - 1), max_size=8))
def test_greedy_verification_equals_greedy_decoding(last: int, draft: list[int]) -> None:
    emitted = verify_greedy(draft, _rows(last, draft))
    plain, t = [], last
    for _ in range(len(emitted)):
        t = int(_LOGITS[t].argmax())
        plain.append(t)
    assert emitted == plain
    assert 1 <= len(emitted) <= len(draft) + 1
    assert emitted[:-1] == draft[: len(emitted) - 1]


def test_wrong_number_of_logit_rows_is_refused() -> None:
    with pytest.raises(ValueError, match="need 3 rows"):
        verify_greedy([1, 2], torch.zeros(2, V))


@pytest.mark.parametrize("draft", [[2, 4], [5, 1]])
def test_sampled_verification_keeps_the_distribution(draft: list[int]) -> None:
    """First two emitted tokens (continuing without speculation if only one is emitted) against
    the exact joint p(x) p(y | x) at temperature 1, top-p 0.9: chi-square, fixed seed."""
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=2)
    probs = torch.stack([torch.softmax(filter_logits(_LOGITS[t], params), dim=-1) for t in range(V)])
    last = 1
    gen = torch.Generator().manual_seed(7)
    n = 5_000
    counts = torch.zeros(V, V)
    for _ in range(n):
        out = verify_sampled(draft, _rows(last, draft), params, gen)
        if len(out) < 2:
            out.append(int(torch.multinomial(probs[out[0]], 1, generator=gen)))
        counts[out[0], out[1]] += 1
    expected = probs[last].unsqueeze(1) * probs * n
    mask = expected > 0
    assert counts[~mask].sum() == 0  # never a token top-p removed
    chi2 = float((((counts - expected) ** 2)[mask] / expected[mask]).sum())
    dof = int(mask.sum()) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(dof / 2.0), torch.tensor(chi2 / 2.0)))
    assert p_value > 1e-3, (chi2, dof)


def test_sampled_verification_detects_a_biased_rule() -> None:
    """Power check: always accepting the draft (a lossy rule) fails the same test."""
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=1)
    p0 = torch.softmax(filter_logits(_LOGITS[1], params), dim=-1)
    n = 12_000
    counts = torch.zeros(V)
    counts[2] = n  # the lossy rule emits draft[0] = 2 every time
    expected = p0 * n
    mask = expected > 0
    chi2 = float((((counts - expected) ** 2)[mask] / expected[mask]).sum())
    p_value = float(
        torch.special.gammaincc(torch.tensor((int(mask.sum()) - 1) / 2.0), torch.tensor(chi2 / 2.0))
    )
    assert p_value < 1e-3


def test_greedy_params_take_the_greedy_rule() -> None:
    draft = [int(_LOGITS[0].argmax())]
    assert verify_sampled(draft, _rows(0, draft), SamplingParams(temperature=0.0)) == verify_greedy(
        draft, _rows(0, draft)
    )
