"""Every example runs to completion with `legato run` on the embedded torch engine."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner

from legato.cli import app
from legato.demo import run_examples

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def legato_run(name: str, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["run", str(EXAMPLES / name), *args])
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    assert summary["status"] == "succeeded", summary
    return summary


def test_react_coder_fixes_the_bug_through_ten_tool_calls_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run's environment root is a `tempfile.mkdtemp` directory: made in a temp dir of this
    # test's own, so other runs sharing /tmp cannot change what is compared.
    own_tmp = tmp_path / "tmp"
    own_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(own_tmp))
    output = legato_run("react_coder.py")["output"]
    assert output["tests_passed"] is True
    assert output["tool_calls"] >= 10
    assert list(own_tmp.glob("legato-envs-*")) == []  # the run's workspace (and its root) are gone


def test_map_reduce_workers_share_the_prefix() -> None:
    runs, counters = anyio.run(lambda: run_examples([EXAMPLES / "map_reduce.py"]))
    assert [r.status for r in runs] == ["succeeded"]
    assert runs[0].steps == 2  # the fan-out (six workers, joined) and the reducer
    # Six workers and the reducer start with the same long prefix part: all but the first hit it.
    assert counters["prefix_hit_tokens"] > 0


def test_map_reduce_json_spec_matches_the_python_program() -> None:
    summary = legato_run("map_reduce.json", "--inputs-json", '{"topics": ["latency", "fairness"]}')
    assert len(summary["output"]["findings"]) == 2
    assert isinstance(summary["output"]["report"], str)


def test_text_to_sql_executes_sql_and_takes_the_repair_route() -> None:
    summary = legato_run("text_to_sql.py")
    result = summary["output"]["result"]
    assert result["ok"] is True and result["rows"], result  # a real query ran on the SQLite database
    # The seeded model writes no valid SQL: generate ran 3 times (2 repairs), then the fallback.
    assert summary["steps"] >= 8


def test_tree_of_thought_forks_the_expected_proposals() -> None:
    output = legato_run("tree_of_thought.py")["output"]
    # depth 0: 1 line x 3 proposals; depths 1 and 2: beam 2 x 3 proposals.
    assert output["proposals"] == 3 + 6 + 6
    assert 0.0 <= output["best_score"] <= 10.0
