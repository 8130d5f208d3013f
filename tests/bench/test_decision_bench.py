"""`legato bench decide`: the decision-cost microbenchmark runs and reports sane numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from legato.bench.decision_bench import (
    DecideInputError,
    FakeCluster,
    measure_policy,
    run_decide,
    verdict,
)
from legato.cli import app
from legato.scheduler.baselines import Continuum, FcfsLru, ThunderAgent
from legato.scheduler.policy import ClusterView


def test_fake_cluster_is_a_cluster_view() -> None:
    view = FakeCluster(replicas=2, total_blocks=100, max_num_seqs=4)
    assert isinstance(view, ClusterView)
    r = view.replica(1)
    assert (r.replica, r.total_blocks, r.free_blocks, r.running, r.waiting) == (1, 100, 100, 0, 0)
    assert view.cached_prefix_tokens(0, "nope") == 0 and view.resident_tokens(0, "nope") == 0


@pytest.mark.parametrize("policy", [FcfsLru, Continuum, ThunderAgent])
def test_measure_policy_times_every_kind_of_event(policy: type[FcfsLru]) -> None:
    r = measure_policy(policy(), programs=50, events=3000, replicas=2)
    assert r.events == 3000
    assert 0 < r.p50_us <= r.p99_us <= r.max_us
    assert r.p50_us <= r.max_us and r.mean_us > 0
    assert r.active_programs == 50  # a finished run is replaced: the load stays put
    assert r.finished_programs > 0  # runs went through to the end in the timed window
    kinds = {"CallArrived", "CallFinished", "ToolStarted", "ToolFinished", "RunFinished", "RunStarted"}
    assert kinds <= set(r.mean_us_by_kind)
    if policy.traits.tick_s is not None:
        assert "Tick" in r.mean_us_by_kind
    assert r.decisions_per_event >= 0.2  # every call gets at least its dispatch


def test_run_decide_report_and_verdict() -> None:
    report = run_decide(["fcfs-lru", "legato"], programs=40, events=500, replicas=2)
    assert list(report["policies"]) == ["fcfs-lru", "legato"]
    assert report["target"]["policy"] == "legato" and isinstance(report["target"]["pass"], bool)
    assert "measured with 40 programs" in verdict(report)
    no_target = run_decide(["fcfs-lru"], programs=10, events=100)
    assert "not measured" in verdict(no_target)


def test_bad_arguments_name_what_to_fix() -> None:
    with pytest.raises(DecideInputError, match="unknown policy nope"):
        run_decide(["nope"], programs=10, events=10)
    with pytest.raises(DecideInputError, match="--programs must be >= 1"):
        run_decide(["fcfs-lru"], programs=0, events=10)


def test_cli_decide_writes_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "decide.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "decide",
            "--policies",
            "fcfs-lru,continuum",
            "-n",
            "30",
            "--events",
            "400",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "fcfs-lru" in result.output and "continuum" in result.output and "not measured" in result.output
    data = json.loads(out.read_text())
    assert data["programs"] == 30 and data["policies"]["continuum"]["events"] == 400
    bad = CliRunner().invoke(app, ["bench", "decide", "--policies", "nope", "-n", "5"])
    assert bad.exit_code == 2 and "unknown policy nope" in bad.output
