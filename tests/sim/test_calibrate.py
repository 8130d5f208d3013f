import random

import pytest

from legato.sim.calibrate import CPU, StepSample, fit
from legato.sim.cost_model import CostModel
from legato.sim.models import ModelSpec

TINY = ModelSpec("tiny", 3.1e6, 4, 256, 8, 4, 32, dtype_bytes=4)


def test_fit_recovers_known_coefficients() -> None:
    truth = CostModel(TINY, CPU, eff_compute=0.3, eff_mem=0.05, overhead_s=2e-3)
    rng = random.Random(0)
    samples = []
    for _ in range(200):
        if rng.random() < 0.5:  # prefill chunk
            c, o = rng.randint(16, 512), rng.randint(0, 2000)
            shape = (c, c * o + c * (c + 1) / 2, o + c)
        else:  # decode batch
            n, ctx = rng.randint(1, 32), rng.randint(10, 3000)
            shape = (n, n * ctx, n * ctx)
        samples.append(StepSample(*shape, seconds=truth.step_time(*shape)))
    cal = fit(samples, TINY)
    assert cal.cost.eff_compute == pytest.approx(0.3, rel=1e-3)
    assert cal.cost.eff_mem == pytest.approx(0.05, rel=1e-3)
    assert cal.cost.overhead_s == pytest.approx(2e-3, rel=1e-3)
    assert cal.mean_rel_error < 1e-6


def test_fit_needs_samples() -> None:
    with pytest.raises(ValueError):
        fit([StepSample(1, 1, 1, 0.1)], TINY)
