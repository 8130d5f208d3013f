"""`legato bench spec` on a tiny trace excerpt: counts, the shared-index replay, bad input."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from legato.bench.spec_bench import (
    SpecBenchConfig,
    encode_session,
    load_sessions,
    load_tokenizer,
    measure,
    run_spec_bench,
    split,
    write_sim_table,
)
from legato.bench.spec_decode import DecodeConfig
from legato.cli import app
from legato.spec.context import AgentHistory

WORDS = [
    "def",
    "class",
    "return",
    "import",
    "self",
    "value",
    "file",
    "path",
    "test",
    "error",
    "the",
    "a",
    "of",
    "to",
    "in",
    "and",
]


def _write_trace(path: Path, sessions: int = 8, seed: int = 0) -> Path:
    """Copy-heavy agent-like sessions: outputs quote earlier tool output and repeat commands."""
    rng = random.Random(seed)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for s in range(sessions):
            code = "\n".join(" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(12))
            msgs = [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"Fix the bug in module_{s}.py"},
            ]
            for turn in range(4):
                quote = "\n".join(code.splitlines()[turn * 2 : turn * 2 + 3])
                msgs.append(
                    {
                        "role": "assistant",
                        "content": f"Let me look at lines {turn}.\n{quote}",
                        "tool_calls": [
                            {
                                "id": f"c{turn}",
                                "name": "bash",
                                "arguments": json.dumps({"command": f"cat module_{s}.py"}),
                            }
                        ],
                    }
                )
                msgs.append(
                    {"role": "tool", "content": f"<returncode>0</returncode>\n<output>\n{code}\n</output>"}
                )
            f.write(json.dumps({"session_id": f"task-{s}", "messages": msgs}) + "\n")
    return path


def _cfg(tmp_path: Path, **kw: object) -> SpecBenchConfig:
    trace = _write_trace(tmp_path / "trace.jsonl.gz")
    args: dict[str, object] = {
        "trace": trace,
        "draft_lens": (2, 4),
        "sessions": 0,
        "cache_dir": tmp_path / "cache",
    }
    args.update(kw)
    return SpecBenchConfig(**args)  # type: ignore[arg-type]


def test_decode_replay_on_the_torch_engine_is_lossless_and_counted(tmp_path: Path) -> None:
    """The oracle-target replay (tiny model): both modes emit the trace's real output tokens."""
    tiny = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
    }
    decode = DecodeConfig(batches=(1, 2), max_output=16, repeats=1, min_requests=2, model=tiny)
    cfg = _cfg(tmp_path, adaptive=False, ablations=(), draft_lens=(4,), decode=decode)
    report = run_spec_bench(cfg, lambda _: None)["decode"]
    assert [r["batch"] for r in report["results"]] == [1, 2]
    for r in report["results"]:
        assert r["tok_s_off"] > 0 and r["tok_s_on"] > 0
        assert r["accepted"] <= r["drafted"]
    assert sum(r["accepted"] for r in report["results"]) > 0  # copy-heavy text: drafts land


def test_report_counts_every_output_token_under_every_configuration(tmp_path: Path) -> None:
    report = run_spec_bench(_cfg(tmp_path), lambda _: None)
    results = report["results"]
    assert {(r["drafter"], r["draft_len"], r["adaptive"]) for r in results} >= {
        ("suffix", 2, False),
        ("ngram", 4, False),
        ("suffix", 4, True),
        ("suffix-local", 4, False),
    }
    for r in results:
        assert r["output_tokens"] == report["output_tokens"] > 0
        assert 1.0 <= r["tokens_per_step"] <= r["draft_len"] + 1
        assert r["accepted"] <= r["drafted"]
        assert sum(r["accepted_by_position"]) == r["accepted"]
    suffix4 = next(
        r for r in results if (r["drafter"], r["draft_len"], r["adaptive"]) == ("suffix", 4, False)
    )
    assert suffix4["tokens_per_step"] > 1.5  # the outputs quote the tool output


def test_shared_index_replay_equals_one_configuration_at_a_time(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    train, test = split(load_sessions(cfg.trace))
    assert train and test and not {s.session_id for s in train} & {s.session_id for s in test}
    tok, _ = load_tokenizer(train, cfg.cache_dir)
    encoded = [encode_session(tok, s) for s in test]
    history = AgentHistory()
    for s in train:
        for is_out, ids in encode_session(tok, s):
            if is_out:
                history.add_output("mini-swe-agent", ids)
    configs = [("suffix", 4, False), ("ngram", 2, False), ("suffix", 4, True)]
    together = measure(encoded, history, configs)
    alone = [measure(encoded, history, [c])[0] for c in configs]
    assert together == alone


def test_sim_table_keeps_its_provenance(tmp_path: Path) -> None:
    report = run_spec_bench(_cfg(tmp_path, adaptive=False, ablations=()), lambda _: None)
    path = tmp_path / "acceptance.json"
    write_sim_table(report, path)
    entry = json.loads(path.read_text())["workloads"]["swe"]
    assert entry["source"]["trace"] == "trace.jsonl.gz" and entry["source"]["trace_sha256"]
    assert set(entry["tokens_per_step"]) == {"suffix", "ngram"}
    assert set(entry["tokens_per_step"]["suffix"]) == {"2", "4"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--draft-lens", "-1"], "draft length must be between 0 and 64, got -1"),
        (["--draft-lens", "4,1000"], "got 1000"),
        (["--draft-lens", "four"], "comma list of integers"),
        (["--draft-lens", "0"], "draft lengths must be >= 1"),
        (["--drafters", "eagle"], "unknown drafter eagle"),
        (["--ablations", "suffix,medusa"], "unknown drafter medusa"),
        (["--sessions", "-2"], "--sessions must be >= 0"),
        (["--trace", "/nonexistent/trace.jsonl.gz"], "not found"),
        (["--decode-batches", "1,x"], "--decode-batches must be a comma list"),
        (["--decode-batches", "0"], "batch sizes must be >= 1"),
        (["--decode-max-draft", "100"], "--decode-max-draft must be between 0 and 64"),
    ],
)
def test_bad_input_is_a_usage_error(tmp_path: Path, args: list[str], message: str) -> None:
    trace = _write_trace(tmp_path / "t.jsonl.gz", sessions=2)
    result = CliRunner().invoke(app, ["bench", "spec", "--trace", str(trace), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--spec", "eagle"], "unknown --spec 'eagle'"),
        (["--spec", "suffix", "--workload", "multiagent"], "no acceptance measured on real text"),
        (["--spec", "suffix,suffix"], "listed twice"),
        (["--spec", "suffix", "--engine", "torch"], "--engine sim only"),
    ],
)
def test_bad_spec_option_is_a_usage_error(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", "--policies", "legato", "-n", "2", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_bench_runs_each_policy_with_and_without_speculation() -> None:
    from legato.bench.runner import execute_bench

    run = execute_bench(
        "swe",
        ["legato"],
        programs=4,
        concurrency=2,
        workload_params={"steps_min": 2, "steps_max": 3},
        spec=("none", "suffix"),
    )
    rows = run.report["policies"]
    assert list(rows) == ["legato", "legato+suffix"]
    assert rows["legato+suffix"]["steps_per_min"] > rows["legato"]["steps_per_min"]
    assert run.report["spec"]["source"]["measured_by"] == "legato bench spec"
