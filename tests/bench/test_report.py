"""Report JSON (canonical, byte-identical), the table and the plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from legato.bench.metrics import summarize
from legato.bench.plots import plot_bench
from legato.bench.report import (
    build_report,
    render_sweep_table,
    render_table,
    report_json,
    rounded,
    write_json,
)
from tests.bench.outcomes import outcome


def _report(sweep: bool = False) -> dict[str, Any]:
    policies = {"fcfs-lru": summarize(outcome("fcfs-lru", 2.0)), "legato": summarize(outcome("legato", 1.0))}
    return build_report(
        workload="swe",
        engine="sim",
        model="llama-3.1-8b",
        gpu="h100",
        seed=1,
        programs=4,
        llm_calls=20,
        concurrency=2,
        replicas=2,
        tiers=("host",),
        workload_params={"steps_max": 60, "rate": 1 / 3},
        policies=policies,
        sweep={1: policies, 2: policies} if sweep else None,
    )


def test_json_shape_and_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_json(_report(), a)
    write_json(_report(), b)
    assert a.read_bytes() == b.read_bytes()
    doc = json.loads(a.read_text())
    for key in ("workload", "engine", "model", "gpu", "seed", "programs", "concurrency", "policies"):
        assert key in doc
    assert doc["policy_order"] == ["fcfs-lru", "legato"]
    row = doc["policies"]["legato"]
    for key in (
        "mean_tct_s",
        "p50_tct_s",
        "p99_tct_s",
        "steps_per_min",
        "prefill_tokens_computed",
        "prefix_hit_rate",
        "preemptions",
        "pauses",
        "engine_busy_frac",
        "jain_index",
        "per_tenant",
    ):
        assert key in row
    assert row["per_tenant"]["a"]["mean_tct_s"] == 15.0
    assert doc["workload_params"]["rate"] == 0.333333
    assert list(doc) == sorted(doc), "keys sorted"


def test_rounding_is_canonical() -> None:
    assert rounded({"x": [0.1 + 0.2, -0.0000001], "y": (1,)}) == {"x": [0.3, 0.0], "y": [1]}
    assert report_json({"b": 1, "a": 0.30000000000000004}) == '{\n  "a": 0.3,\n  "b": 1\n}\n'


def test_table_has_ratios_against_first_policy() -> None:
    console = Console(record=True, width=200)
    console.print(render_table(_report()))
    text = console.export_text()
    assert "legato" in text and "fcfs-lru" in text
    assert "0.50×" in text  # legato's TCT is half of the baseline's
    assert render_sweep_table(_report()) is None
    sweep_console = Console(record=True, width=200)
    sweep_table = render_sweep_table(_report(sweep=True))
    assert sweep_table is not None
    sweep_console.print(sweep_table)
    assert "c=1" in sweep_console.export_text()


def test_plots_are_written(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    plot_bench(path, {"a": [1.0, 2.0, 3.0], "b": [2.0, 4.0]}, _report(sweep=True))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
