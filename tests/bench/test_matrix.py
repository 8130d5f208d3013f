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


def test_missing_trace_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "matrix", "--quick", "--miniswe", str(tmp_path / "no.gz")])
    assert result.exit_code == 2 and "trace file for miniswe not found" in result.output
