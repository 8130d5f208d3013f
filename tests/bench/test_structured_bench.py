"""`legato bench structured --quick`: one run measures both sides, and every constrained output
is complete, valid JSON within its budget."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from legato.cli import app


def test_structured_bench_quick_reports_both_sides(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    result = CliRunner().invoke(app, ["bench", "structured", "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["batch"] == 8
    assert data["unconstrained_tok_s"] > 0 and data["constrained_tok_s"] > 0
    assert data["ratio"] == data["constrained_tok_s"] / data["unconstrained_tok_s"]
    assert data["constrained_valid"] == 8
    assert "ratio" in result.output
