"""`legato demo`: the side-by-side comparison at a tiny size (the real one takes about a minute)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from legato.cli import app
from legato.demo import (
    BASELINE,
    DemoSettings,
    render_comparison,
    run_comparison,
    tct_speedup,
)
from tests.tiny_model import tiny_model_config

TINY = tiny_model_config(max_position_embeddings=4096)
SMALL = DemoSettings(
    programs=3, steps_min=2, steps_max=3, token_scale=1 / 32, time_scale=0.01, timeout_s=120.0
)
OTHER = "thunderagent"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def test_legato_completes_the_tiny_demo() -> None:
    quick = dataclasses.replace(SMALL, timeout_s=20.0)  # the tiny replay takes ~1 s when it works
    result = run_comparison(quick, (BASELINE, "legato"), model_config=TINY)
    assert result.report["policies"]["legato"]["programs"] == 3


def test_both_policies_complete_every_program_under_real_kv_pressure() -> None:
    progress: list[tuple[str, int, int]] = []
    mine = OTHER  # the demo path with a second policy; `legato` is covered above
    result = run_comparison(
        SMALL, (BASELINE, mine), model_config=TINY, progress=lambda *a: progress.append(a)
    )
    report = result.report
    assert report["policy_order"] == [BASELINE, mine]
    for name in (BASELINE, mine):
        m = report["policies"][name]
        assert m["programs"] == 3 and m["llm_calls"] == report["llm_calls"]
        for key in ("mean_tct_s", "p50_tct_s", "p99_tct_s", "steps_per_min"):
            assert m[key] > 0
        for key in ("prefix_hit_rate", "prefill_tokens_computed", "preemptions", "pauses"):
            assert m[key] >= 0
        assert (name, 3, 3) in progress  # the bar reached the end for each policy
        assert len(result.tcts[name]) == 3
    assert result.kv_demand_blocks > result.kv_blocks  # the programs' KV does not fit: pressure
    assert tct_speedup(report, BASELINE) == pytest.approx(1.0)
    assert tct_speedup(report, mine) > 0
    table = render_comparison(report)
    assert table.columns[0].header == "policy" and table.row_count == 2


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="programs must be >= 1"):
        run_comparison(DemoSettings(programs=0))
    result = CliRunner().invoke(app, ["demo", "--programs", "0"])
    assert result.exit_code == 2 and "--programs must be >= 1" in result.output


def test_demo_help_lists_the_options() -> None:
    result = CliRunner().invoke(app, ["demo", "--help"])
    assert result.exit_code == 0
    for option in ("--plot", "--json", "--programs", "--examples"):
        assert option in result.output


def test_report_json_round_trips(tmp_path: Path) -> None:
    from legato.bench.report import write_json

    result = run_comparison(SMALL, ("fcfs-lru",), model_config=TINY)
    path = tmp_path / "demo.json"
    write_json(result.report, path)
    data = json.loads(path.read_text())
    assert data["engine"] == "torch" and data["demo"]["token_scale"] == pytest.approx(1 / 32)
