"""The online prefill cost fit recovers a known per-token and per-context cost."""

from __future__ import annotations

import random

from legato.cache.prefill_model import PrefillCostModel


def test_fit_recovers_linear_and_attention_terms() -> None:
    a, b = 3e-5, 2e-8
    model = PrefillCostModel()
    rng = random.Random(0)
    for _ in range(60):
        start = rng.randrange(0, 4000)
        n = rng.randrange(1, 512)
        seconds = a * n + b * n * (2 * start + n) / 2
        model.observe([(start, start + n)], seconds)
    assert abs(model.per_token_s - a) / a < 1e-3
    assert abs(model.per_token_context_s - b) / b < 1e-3
    assert model(1000, 1000) == 0.0
    assert model(0, 4000) > model(0, 2000) * 2  # attention makes long prefixes super-linear


def test_degenerate_observations_keep_a_positive_estimate() -> None:
    model = PrefillCostModel()
    for _ in range(5):
        model.observe([(0, 100)], 0.01)
    assert model.per_token_s > 0
    assert 0.005 < model(0, 100) < 0.02
