"""`legato bench matrix --quick`: the whole command on a few small cells (the full matrix is a
bench run, not a test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from legato.bench import matrix
from legato.cli import app
from tests.bench.shared_traces import shared_trace

MINISWE = shared_trace("miniswe_deepseek.jsonl.gz")


def test_policies_come_from_the_registry() -> None:
    from legato.scheduler.baselines import POLICIES

    peers, bounds = matrix.roles()
    assert "legato" not in peers and "infinite-kv" in bounds
    assert {"fcfs-lru", "lpm", "continuum", "thunderagent", "autellix"} <= set(peers)
    assert set(peers) | set(bounds) <= set(POLICIES)
    full = matrix.plan()
    assert len(full) == 7 * 2 * 2 * 2 and len({c.key for c in full}) == len(full)


@pytest.mark.skipif(MINISWE is None, reason="shared traces not present")
def test_quick_matrix_end_to_end(tmp_path: Path) -> None:
    out, png = tmp_path / "m.json", tmp_path / "m.png"
    args = ["bench", "matrix", "--quick", "--jobs", "1", "--miniswe", str(MINISWE), "--json", str(out)]
    result = CliRunner().invoke(app, [*args, "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "worst cell:" in result.output and png.stat().st_size > 0
    doc = json.loads(out.read_text())
    assert [c["cell"] for c in doc["cells"]] == [c.key for c in matrix.plan(quick=True)]
    for cell in doc["cells"]:
        assert set(cell["policies"]) == {"legato", *doc["peers"], *doc["bounds"]}
        best = cell["policies"][cell["best_peer_steps"]]["steps_per_min"]
        assert cell["steps_ratio"] == pytest.approx(cell["policies"]["legato"]["steps_per_min"] / best)
    again = matrix.run_cell(matrix.plan(quick=True)[0], doc["paths"])
    assert again["policies"] == doc["cells"][0]["policies"], "deterministic"
    assert doc["seed"] == 0 and doc["passed"] == sum(matrix.passes(c) for c in doc["cells"])
    assert f"{doc['passed']}/{len(doc['cells'])} cells pass" in result.output
    other = matrix.run_cell(matrix.plan(quick=True)[0], doc["paths"], seed=1)  # other programs
    assert other["policies"] != doc["cells"][0]["policies"]


def test_the_variants_suite_runs_the_generators_with_other_params(tmp_path: Path) -> None:
    variants = matrix.plan(suite="variants")
    assert len(variants) == len(matrix.VARIANTS) * 2 * 2 * 2 and len({c.key for c in variants}) == len(
        variants
    )
    assert not {c.key for c in variants} & {c.key for c in matrix.plan()}
    out = tmp_path / "v.json"
    args = ["bench", "matrix", "--suite", "variants", "--cells", "support/h100/c16/none", "--jobs", "1"]
    result = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["suite"] == "variants" and [c["cell"] for c in doc["cells"]] == ["support/h100/c16/none"]
    assert "variants" in result.output
    bad = CliRunner().invoke(app, ["bench", "matrix", "--suite", "held-out"])
    assert bad.exit_code == 2 and "unknown suite 'held-out'" in bad.output


def test_missing_trace_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "matrix", "--quick", "--miniswe", str(tmp_path / "no.gz")])
    assert result.exit_code == 2 and "trace file for miniswe not found" in result.output


def test_cells_picks_cells_by_glob_and_a_glob_matching_none_is_a_usage_error() -> None:
    chat_a10 = matrix.plan(patterns=["chat/a10/*"])
    assert [c.key for c in chat_a10] == [
        "chat/a10/c16/none",
        "chat/a10/c16/host+redis",
        "chat/a10/c64/none",
        "chat/a10/c64/host+redis",
    ]
    both = matrix.plan(patterns=["chat/a10/c16/none", "swe/*/c64/host+redis"])
    assert [c.key for c in both] == ["swe/h100/c64/host+redis", "swe/a10/c64/host+redis", "chat/a10/c16/none"]
    result = CliRunner().invoke(app, ["bench", "matrix", "--cells", "chat/a10/*", "--cells", "chat/a11/*"])
    assert result.exit_code == 2 and "'chat/a11/*' matches no cell" in result.output


@pytest.mark.skipif(MINISWE is None, reason="shared traces not present")
def test_a_cell_reports_what_explains_its_ratios() -> None:
    cell = matrix.run_cell(matrix.plan(quick=True)[0], {"miniswe": str(MINISWE)})
    for numbers in cell["policies"].values():
        assert numbers["makespan_s"] > 0 and numbers["prefill_tokens_computed"] > 0
        assert numbers["preemptions"] >= 0
        calls_per_min = numbers["steps_per_min"] * numbers["makespan_s"] / 60.0
        assert calls_per_min == pytest.approx(cell["llm_calls"])
        phases = [numbers[k] for k in ("mean_policy_wait_s", "mean_engine_queue_s", "mean_run_s")]
        assert min(phases) >= 0.0 and numbers["mean_run_s"] > 0.0
        assert numbers["mean_decode_batch"] > 0.0
        assert 0.0 <= numbers["kv_in_use_share"] <= 1.0
    assert 0.0 <= cell["legato_gated_share"] <= 1.0


def test_call_phases_are_means_of_each_interval() -> None:
    from legato.sim.driver import CallTrace

    trace = [CallTrace("a", 0.0, 1.0, 3.0, 7.0, 0), CallTrace("b", 2.0, 2.0, 2.0, 4.0, 0)]
    assert matrix.call_phases(trace) == {
        "mean_policy_wait_s": 0.5,
        "mean_engine_queue_s": 1.0,
        "mean_run_s": 3.0,
    }
    assert matrix.call_phases([])["mean_run_s"] == 0.0


def _run(seed: int, cells: dict[str, tuple[float, float]]) -> dict[str, object]:
    return {
        "seed": seed,
        "cells": [{"cell": k, "steps_ratio": s, "tct_ratio": t} for k, (s, t) in cells.items()],
    }


def test_matrix_diff_lists_flips_and_moves_of_the_same_seed(tmp_path: Path) -> None:
    from legato.bench import matrix_diff

    before = _run(1, {"a": (1.00, 0.95), "b": (0.96, 0.99), "c": (1.05, 0.90), "gone": (1.0, 1.0)})
    after = _run(1, {"a": (1.00, 0.952), "b": (0.98, 0.99), "c": (1.05, 1.02), "new": (1.0, 1.0)})
    diff = matrix_diff.compare(before, after)
    assert (diff.passed_before, diff.passed_after, diff.common) == (2, 2, 3)
    # a moved by 0.002 only; b flipped to pass; c flipped to fail.
    assert [(c.cell, c.passed_before, c.passed_after) for c in diff.changes] == [
        ("b", False, True),
        ("c", True, False),
    ]
    assert diff.only_before == ["gone"] and diff.only_after == ["new"]
    assert [c.cell for c in matrix_diff.compare(before, after, min_change=0.001).changes] == ["a", "b", "c"]

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(before))
    b.write_text(json.dumps(after))
    result = CliRunner().invoke(app, ["bench", "matrix-diff", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert "2 -> 2 of 3 cells pass; 2 flipped" in result.output
    assert "only in BEFORE (not compared): gone" in result.output


def test_matrix_diff_refuses_other_seeds_and_other_files(tmp_path: Path) -> None:
    a, b, junk = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "junk.json"
    a.write_text(json.dumps(_run(0, {"x": (1.0, 1.0)})))
    b.write_text(json.dumps(_run(2, {"x": (1.0, 1.0)})))
    junk.write_text("[1, 2]")
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "matrix-diff", str(a), str(b)])
    assert result.exit_code == 2 and "different seeds (0 and 2)" in result.output
    result = runner.invoke(app, ["bench", "matrix-diff", str(a), str(junk)])
    assert result.exit_code == 2 and "is not a `legato bench matrix --json` file" in result.output
    result = runner.invoke(app, ["bench", "matrix-diff", str(a), str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "cannot read" in result.output
    (tmp_path / "bad.json").write_text("{")
    result = runner.invoke(app, ["bench", "matrix-diff", str(a), str(tmp_path / "bad.json")])
    assert result.exit_code == 2 and "is not JSON" in result.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"seed": "x", "cells": []}', "seed must be an integer"),
        ('{"seed": 99999999999999999999999, "cells": []}', "seed must be an integer"),
        ('{"seed": 0, "cells": [1]}', "cells[0] is not an object"),
        ('{"seed": 0, "cells": [{"cell": "a"}]}', "needs a finite number `steps_ratio`, got None"),
        ('{"seed": 0, "cells": [{"cell": "a", "steps_ratio": NaN, "tct_ratio": 1}]}', "got nan"),
        ('{"seed": 0, "cells": [{"cell": "a", "steps_ratio": 1, "tct_ratio": 1e999}]}', "got inf"),
        ('{"seed": 0, "cells": [{"cell": "\\ud800", "steps_ratio": 1, "tct_ratio": 1}]}', "printable `cell`"),
    ],
)
def test_matrix_diff_refuses_malformed_cells(tmp_path: Path, text: str, message: str) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_run(0, {"a": (1.0, 1.0)})))
    bad.write_text(text)
    result = CliRunner().invoke(app, ["bench", "matrix-diff", str(good), str(bad)])
    assert result.exit_code == 2 and message in result.output, result.output


def test_specs_of_one_workload_with_other_params_build_their_own_workloads() -> None:
    # The per-process workload cache once keyed on name, programs and seed alone: a second
    # spec of `chat` with another think time got the first one's sessions.
    fast = matrix.WorkloadSpec("chat-fast", "chat", 4, (("think_median_s", "3"),))
    slow = matrix.WorkloadSpec("chat-slow", "chat", 4, (("think_median_s", "40"),))
    a, b = matrix._workload(fast, {}, 0), matrix._workload(slow, {}, 0)
    assert a.params["think_median_s"] == 3.0
    assert b.params["think_median_s"] == 40.0
    assert matrix._workload(fast, {}, 0) is a  # still built once per spec
