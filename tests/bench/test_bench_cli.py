"""`legato bench` through typer's CliRunner: bad input, and a small end-to-end run."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from legato.bench.report import report_json
from legato.bench.runner import execute_bench, run_bench
from legato.cli import app

SMALL = [
    "--workload",
    "swe",
    "--programs",
    "6",
    "--concurrency",
    "3",
    "-p",
    "steps_min=2",
    "-p",
    "steps_max=4",
]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workload", "nope"], "unknown workload 'nope'; valid: swe, multiagent"),
        (["--policies", "fcfs-lru,bogus"], "unknown policy bogus; valid: fcfs-lru"),
        (["--gpu", "v100"], "unknown gpu 'v100'; valid choices: a10, h100, t4"),
        (["--model", "gpt"], "unknown model 'gpt'"),
        (["--tiers", "disk"], "unknown tier 'disk'"),
        (["--tiers", "redis,host"], "tiers go fastest first"),
        (["--programs", "0"], "programs must be > 0"),
        (["--concurrency", "-1"], "concurrency must be > 0"),
        (["--jobs", "0"], "jobs must be > 0"),
        (["--sweep", "concurrency=4,x"], "--sweep values must be integers"),
        (["--sweep", "replicas=1,2"], "--sweep must look like concurrency=32,64,128"),
        (["--param", "steps_max"], "--param must look like key=value"),
        (["--param", "bogus=1"], "unknown parameter(s) bogus"),
        (["--engine", "torch", "--policies", "fcfs-lru,oracle-evict"], "needs future knowledge"),
        (["--engine", "gpu"], "unknown engine 'gpu'; valid: sim, torch"),
        (["--gpu", "t4", "--model", "llama-3.1-70b"], "does not fit on T4"),
        (["--gpu", "a10", "-p", "steps_min=60"], "tokens of KV but one replica of llama-3.1-8b on a10 holds"),
        (["-p", "max_num_batched_tokens=0"], "--param max_num_batched_tokens must be > 0"),
        (["-p", "max_num_batched_tokens=inf"], "--param max_num_batched_tokens must be > 0 and finite"),
        (["-p", "max_num_batched_tokens=512.5"], "--param max_num_batched_tokens must be an integer"),
        (["-p", "max_num_batched_tokens=lots"], "--param max_num_batched_tokens must be a number"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_help_lists_subcommands() -> None:
    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0
    for word in ("--workload", "--sweep", "engine", "calibrate"):
        assert word in result.output


def test_small_bench_end_to_end(tmp_path: Path) -> None:
    out, plot, page = tmp_path / "r.json", tmp_path / "r.png", tmp_path / "r.html"
    args = ["bench", *SMALL, "--policies", "fcfs-lru,infinite-kv", "--json", str(out), "--plot", str(plot)]
    args += ["--sweep", "concurrency=1,3", "--html", str(page)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert (
        doc["programs"] == 6
        and doc["concurrency"] == 3
        and doc["policy_order"] == ["fcfs-lru", "infinite-kv"]
    )
    assert [p["concurrency"] for p in doc["sweep"]["points"]] == [1, 3]
    assert doc["sweep"]["points"][1]["policies"] == doc["policies"], "the main run is the sweep point"
    for row in doc["policies"].values():
        assert row["programs"] == 6 and row["llm_calls"] == doc["llm_calls"]
    assert doc["policies"]["infinite-kv"]["prefix_hit_rate"] >= doc["policies"]["fcfs-lru"]["prefix_hit_rate"]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "steps/min ×" in result.output
    text = page.read_text()  # one self-contained page: tables, the plot inline, the JSON
    assert text.count('src="data:image/png;base64,iVBORw0KGgo') == 1
    assert "fcfs-lru" in text and "infinite-kv" in text and "steps/min ×" in text
    assert "&quot;policy_order&quot;" in text
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing to fetch when opened


def _report(seed: int, jobs: int = 1, sweep: tuple[int, ...] = ()) -> str:
    doc = run_bench(
        "swe",
        ["fcfs-lru", "oracle-evict"],
        programs=5,
        concurrency=2,
        seed=seed,
        workload_params={"steps_max": "12"},
        sweep=sweep,
        jobs=jobs,
    )
    return report_json(doc)


def test_same_seed_gives_byte_identical_report() -> None:
    assert _report(11) == _report(11)
    assert _report(11) != _report(12)


def test_parallel_jobs_give_the_same_report() -> None:
    assert _report(3, jobs=2, sweep=(1, 2)) == _report(3, jobs=1, sweep=(1, 2))


def test_calibrate_rejects_bad_request_count() -> None:
    result = CliRunner().invoke(app, ["bench", "calibrate", "--requests", "0"])
    assert result.exit_code == 2 and "--requests must be > 0" in result.output


def test_every_policy_replays_the_same_arrivals() -> None:
    run = execute_bench(
        "chat",
        ["fcfs-lru", "oracle-evict", "infinite-kv"],
        programs=6,
        concurrency=6,
        workload_params={"arrival_rate": "0.5", "turns_max": "3"},
    )
    arrivals = {
        name: sorted((p.program_id, p.arrival_s) for p in o.programs) for name, o in run.outcomes.items()
    }
    first = arrivals["fcfs-lru"]
    assert len(first) == 6 and first[-1][1] > 0
    assert all(a == first for a in arrivals.values())


def test_the_simulated_engine_takes_its_step_budget_from_a_param() -> None:
    """`-p max_num_batched_tokens=N` sets the simulated engine's token budget per step (vLLM's
    flag of that name): a smaller budget cuts long prompts into more, smaller prefill chunks,
    so more steps run and less prefill is left outside the memory-bound decode steps."""
    runs = {
        budget: execute_bench(
            "swe",
            ["fcfs-lru"],
            programs=4,
            concurrency=4,
            workload_params={"steps_min": "2", "steps_max": "3", "max_num_batched_tokens": str(budget)},
        )
        for budget in (8192, 1024)
    }
    small, large = runs[1024].outcomes["fcfs-lru"], runs[8192].outcomes["fcfs-lru"]
    assert runs[1024].report["engine_params"] == {"max_num_batched_tokens": 1024, "max_num_seqs": 1024}
    assert small.extra["engine_steps"] > large.extra["engine_steps"]
    assert small.extra["prefill_exposed_s"] < large.extra["prefill_exposed_s"]
    assert "max_num_batched_tokens" not in runs[1024].report["workload_params"]


@pytest.mark.parametrize(("gpu", "limits"), [("h100", (8192, 1024)), ("a10", (2048, 256))])
def test_the_simulated_engine_defaults_to_what_vllm_serve_picks_on_the_gpu(
    gpu: str, limits: tuple[int, int]
) -> None:
    """Without `-p max_num_batched_tokens`, the step budget and seats are `vllm serve`'s for the
    GPU (8192 / 1024 on an H100, 2048 / 256 on an A10), and the report says which ran."""
    run = execute_bench(
        "swe",
        ["fcfs-lru"],
        programs=2,
        concurrency=2,
        gpu=gpu,
        workload_params={"steps_min": "2", "steps_max": "2"},
    )
    assert run.report["engine_params"] == {"max_num_batched_tokens": limits[0], "max_num_seqs": limits[1]}


def test_bound_command_prints_and_writes_the_bound(tmp_path: Path) -> None:
    out = tmp_path / "bound.json"
    args = ["bench", "bound", "-w", "multiagent", "-n", "8", "--baseline", "10", "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "ratio vs 10.0 steps/min (at most)" in result.output
    data = json.loads(out.read_text())
    assert data["workload"] == "multiagent" and data["total_calls"] > 8
    assert data["makespan_s"] == pytest.approx(data["kv_read_s"] + data["min_steps"] * data["step_fixed_s"])


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--baseline", "0"], "--baseline is a policy's steps/min and must be > 0"), (["-n", "0"], "programs")],
)
def test_bound_command_rejects_bad_input(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", "bound", *args])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize(
    ("option", "make", "message"),
    [
        ("--json", lambda tmp: tmp / "report.json", "is a folder; give a file name"),
        ("--json", lambda tmp: tmp / "file.txt" / "report.json", "is a file, not a folder"),
        ("--plot", lambda tmp: tmp / "file.txt" / "plot.png", "is a file, not a folder"),
    ],
)
def test_output_paths_are_checked_before_the_run(
    tmp_path: Path, option: str, make: Callable[[Path], Path], message: str
) -> None:
    (tmp_path / "report.json").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for command in (["bench", *SMALL], ["bench", "bound", "-n", "2"]):
        if option == "--plot" and command[1] == "bound":
            continue
        result = CliRunner().invoke(app, [*command, option, str(make(tmp_path))])
        assert result.exit_code == 2
        assert message in " ".join(result.output.replace("│", " ").split())  # unwrap rich's box


def test_a_missing_output_folder_is_created(tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "bound.json"
    result = CliRunner().invoke(app, ["bench", "bound", "-n", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["programs"] == 2
