"""`legato bench --engine torch`: workloads replayed on the real torch engine through the runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from legato.bench.runner import BenchInputError, execute_bench
from legato.bench.torch_replay import choose_kv_blocks, replay_on_torch, segment_tokens
from legato.bench.workloads import build_workload
from legato.cli import app
from legato.scheduler.runtime import UnsupportedPolicyError
from tests.tiny_model import tiny_model_config

TINY = tiny_model_config(max_position_embeddings=4096)
SMALL = {"steps_min": 2, "steps_max": 3}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def test_segment_tokens_are_deterministic_and_distinct() -> None:
    assert segment_tokens(5, 40) == segment_tokens(5, 40)
    assert segment_tokens(5, 40) != segment_tokens(6, 40)
    assert all(0 <= t < 256 for t in segment_tokens(7, 100))


@pytest.mark.parametrize(
    "policy", ["fcfs-lru", "lpm", "continuum", "thunderagent", "autellix", "infinite-kv"]
)
def test_replay_completes_every_program(policy: str) -> None:
    w = build_workload("swe", 3, 0, SMALL)
    o = replay_on_torch(w, policy, concurrency=2, token_scale=1 / 32, time_scale=0.01, model_config=TINY)
    assert o.policy == policy
    assert [p.program_id for p in o.programs] == sorted(p.program_id for p in w.programs)
    assert sum(p.calls for p in o.programs) == w.total_calls
    assert all(p.finish_s >= p.arrival_s >= 0 for p in o.programs)
    assert 0 < o.cached_prompt_tokens < o.prompt_tokens  # the shared system prompt hits, at least
    assert o.prefill_tokens_computed == o.prompt_tokens - o.cached_prompt_tokens
    assert o.extra["bad_decisions"] == o.extra["policy_errors"] == o.extra["control_errors"] == 0
    assert o.makespan_s > 0 and 0 < o.engine_busy_s <= o.makespan_s * 1.05
    if policy == "infinite-kv":
        assert o.extra["evicted_blocks"] == 0
    else:
        w_blocks = choose_kv_blocks(w, 2, 1 / 32, 16, 0.5, unlimited=False)
        assert o.extra["kv_blocks"] == w_blocks


def test_oracle_evict_is_rejected_on_torch() -> None:
    w = build_workload("swe", 1, 0, SMALL)
    with pytest.raises(UnsupportedPolicyError, match="future knowledge"):
        replay_on_torch(w, "oracle-evict", concurrency=1, model_config=TINY)
    with pytest.raises(BenchInputError, match="oracle-evict needs future knowledge"):
        execute_bench("swe", ["fcfs-lru", "oracle-evict"], engine="torch", programs=1, concurrency=1)
    with pytest.raises(BenchInputError, match="token_scale must be > 0"):
        execute_bench(
            "swe",
            ["fcfs-lru"],
            engine="torch",
            programs=1,
            concurrency=1,
            workload_params={"token_scale": "0"},
        )


def test_bench_cli_engine_torch_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--workload",
            "swe",
            "--engine",
            "torch",
            "--policies",
            "fcfs-lru,continuum",
            "--programs",
            "2",
            "--concurrency",
            "2",
            "--param",
            "steps_min=2",
            "--param",
            "steps_max=2",
            "--param",
            "token_scale=0.02",
            "--param",
            "time_scale=0.01",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "fcfs-lru" in result.output and "continuum" in result.output
    report = json.loads(out.read_text())
    assert report["engine"] == "torch" and report["model"] == "legato-default"
    assert set(report["policies"]) == {"fcfs-lru", "continuum"}
    assert (
        report["engine_params"]["token_scale"] == 0.02 and report["engine_params"]["deterministic"] is False
    )
    for metrics in report["policies"].values():
        for key in (
            "mean_tct_s",
            "p50_tct_s",
            "p99_tct_s",
            "steps_per_min",
            "prefix_hit_rate",
            "preemptions",
        ):
            assert key in metrics
        assert metrics["mean_tct_s"] > 0
