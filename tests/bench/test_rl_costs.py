"""`legato bench rl`'s CPU bound: the prompt work no policy can skip, the bound's arithmetic on
hand-made runs, the summary that carries it, and the cost measurement on the real torch engine
(tiny sizes: both costs positive, a decoded token dearer than a prompt token riding a step)."""

from __future__ import annotations

import pytest

from legato.bench.rl_bench import RLBenchConfig, RLRun, summary
from legato.bench.rl_costs import StepCosts, cpu_bound, last_context, measure_step_costs, prefill_floor

CFG = RLBenchConfig(groups=2, n=4, turns=3, prompt_tokens=100, max_tokens=8, env_tokens=20)


def test_prefill_floor_counts_each_prompt_once_and_every_tool_output() -> None:
    # shared half once, each group's own half once, then per rollout and later turn 20 + 1 tokens
    assert prefill_floor(CFG) == 50 + 2 * 50 + 8 * 2 * 21
    assert last_context(CFG) == 100 + 3 * 8 + 2 * 20  # where the dearest recomputed token sits


def _run(policy: str, prefill: float, preemptions: float, cpu_s: float) -> RLRun:
    work = {"prefill_tokens": prefill, "preemptions": preemptions}
    return RLRun(policy, 0, tokens=192, seconds=2.0, work=work, cpu_s=cpu_s)


def test_bound_from_the_baselines_work() -> None:
    costs = StepCosts(prefill_s_per_token=1e-3, decode_s_per_token=4e-3)
    runs = [_run("legato", 600, 0, 9.0), _run("passthrough", 1486, 2, 10.0)]
    bound = cpu_bound(CFG, costs, runs, "passthrough")
    assert bound is not None
    # 1486 - 486 prompt tokens above the floor + 2 preemptions * 8 generated tokens
    assert bound.avoidable_tokens == 1016
    assert bound.avoidable_cpu_s == pytest.approx(1.016)
    assert bound.avoidable_fraction == pytest.approx(0.1016)
    assert bound.max_ratio == pytest.approx(10.0 / (10.0 - 1.016))
    engine_s = (1486 + 16) * 1e-3 + 192 * 4e-3
    assert bound.engine_only_max_ratio == pytest.approx(engine_s / (engine_s - 1.016))
    assert cpu_bound(CFG, costs, runs, "nobody") is None


def test_summary_reports_costs_ratio_per_cpu_second_and_the_bound() -> None:
    runs = [_run("legato", 600, 0, 8.0), _run("passthrough", 1486, 2, 10.0)]
    out = summary(runs, CFG, [StepCosts(1e-3, 4e-3)])
    assert out["ratio_per_cpu_s"] == {"legato/passthrough": 1.25}
    assert out["step_costs"]["decode_over_prefill"] == 4.0
    assert out["cpu_bound"]["baseline"] == "passthrough"
    assert out["cpu_bound"]["max_ratio"] == pytest.approx(10.0 / (10.0 - 1.016), abs=1e-4)


def test_costs_measured_on_the_torch_engine() -> None:
    cfg = RLBenchConfig(groups=1, n=4, prompt_tokens=48, max_tokens=4, num_blocks=64)
    costs = measure_step_costs(cfg, rounds=1)
    assert costs.prefill_s_per_token >= 0  # a difference of two CPU times: tiny sizes may round to 0
    assert costs.decode_s_per_token > 0
