"""Trace replay: Mooncake block traces and OpenAI-chat session logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from legato.bench.traces import approx_tokens, load_sessions, load_trace, parse_trace
from legato.bench.workloads import build_workload

SHARED_TRACE = Path("/work/shared/traces/mooncake_conversation_trace.jsonl")


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _req(ts: int, n_in: int, hashes: list[int], n_out: int = 10) -> dict[str, object]:
    return {"timestamp": ts, "input_length": n_in, "output_length": n_out, "hash_ids": hashes}


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "t.jsonl",
        [
            _req(0, 1500, [0, 1, 2]),  # session A, turn 1 (full blocks 0, 1; partial 2)
            _req(100, 1200, [0, 5, 6]),  # session B
            _req(2000, 2100, [0, 1, 3, 4, 7]),  # A, turn 2: extends A's full blocks
            _req(3000, 700, [0, 8]),  # new session (only the shared block 0)
        ],
    )


def test_trace_segments_and_sessions(trace: Path) -> None:
    workload = load_trace(trace, 100)
    assert [len(p.calls) for p in workload.programs] == [2, 1, 1]
    a = workload.programs[0]
    assert a.arrival_s == 0.0 and workload.programs[2].arrival_s == 3.0
    first, second = a.calls
    assert [s.tokens for s in first.prompt] == [512, 512, 476]
    assert [s.tokens for s in second.prompt] == [512, 512, 512, 512, 52]
    assert second.prompt[:2] == first.prompt[:2], "shared full blocks map to the same segments"
    assert second.prompt[2] != first.prompt[2]
    assert workload.programs[1].calls[0].prompt[0] == first.prompt[0], "block 0 shared across sessions"
    # think time: next arrival (2 s) - (1500 / 10,000 + 10 / 50) s of estimated service
    assert first.tool == "user" and first.tool_latency_s == pytest.approx(2.0 - 0.15 - 0.2)
    assert second.deps == (0,)


def test_a_prefix_many_requests_branch_from_starts_no_session(tmp_path: Path) -> None:
    # The first request is only the shared system block (+ a partial block); two others extend it.
    path = _write(
        tmp_path / "t.jsonl",
        [
            _req(0, 700, [0, 9]),
            _req(10, 1500, [0, 1, 2]),
            _req(20, 1200, [0, 5, 6]),
            _req(30, 1600, [0, 1, 3, 4]),
        ],
    )
    workload = load_trace(path, 100)
    assert [len(p.calls) for p in workload.programs] == [1, 2, 1]


def test_trace_request_mode_and_limits(trace: Path) -> None:
    workload = load_trace(trace, 100, mode="requests")
    assert [p.arrival_s for p in workload.programs] == [0.0, 0.1, 2.0, 3.0]
    assert all(len(p.calls) == 1 and p.calls[0].tool is None for p in workload.programs)
    assert len(load_trace(trace, 100, mode="requests", limit=2).programs) == 2
    assert len(load_trace(trace, 1).programs) == 1


def test_trace_through_registry_records_params(trace: Path) -> None:
    workload = build_workload(f"trace:{trace}", 10, seed=0, params={"mode": "requests", "limit": "3"})
    assert len(workload.programs) == 3
    assert workload.params["mode"] == "requests" and workload.params["requests_read"] == 3


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps(_req(0, 1500, [0, 1])), "'hash_ids' has 2 entries but input_length 1500 needs"),
        (
            json.dumps({"timestamp": 0, "output_length": 3, "hash_ids": [1]}),
            "'input_length' must be an integer",
        ),
        (json.dumps(_req(-5, 10, [1])), "'timestamp' must be a non-negative number"),
        (json.dumps(_req(0, 10, ["a"])), "'hash_ids' must be a list of integers"),
        (json.dumps(_req(0, 10, [1], n_out=0)), "'output_length' must be >= 1"),
    ],
)
def test_malformed_trace_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path / "bad.jsonl", [_req(0, 10, [1]), "", line])
    with pytest.raises(ValueError) as info:
        parse_trace(path)
    assert f"{path}:3: " in str(info.value) and message in str(info.value)


def test_missing_or_empty_trace(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read trace file"):
        load_trace(tmp_path / "absent.jsonl", 10)
    with pytest.raises(ValueError, match="no requests"):
        load_trace(_write(tmp_path / "empty.jsonl", []), 10)
    with pytest.raises(ValueError, match="unknown trace mode 'x'; valid: sessions, requests"):
        load_trace(_write(tmp_path / "one.jsonl", [_req(0, 10, [1])]), 10, mode="x")


@pytest.mark.skipif(not SHARED_TRACE.exists(), reason="shared traces not present")
def test_shipped_trace_head_replays() -> None:
    workload = load_trace(SHARED_TRACE, 10_000, limit=500)
    assert sum(len(p.calls) for p in workload.programs) == 500
    assert any(len(p.calls) > 1 for p in workload.programs)


def _turn(ts_us: int, session: object, text_in: str, text_out: str) -> dict[str, object]:
    return {"timestamp": ts_us, "input": text_in, "output": text_out, "session_id": session}


def test_session_log_turns_share_their_session_prefix(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "s.jsonl",
        [
            _turn(0, "a", "x" * 40, "y" * 400),
            _turn(500_000, 7, "hello", "hi"),
            _turn(30_000_000, "a", "z" * 8, "w"),
        ],
    )
    workload = build_workload(f"sessions:{path}", 10, seed=0)
    a, b = workload.programs
    assert (a.program_id, b.program_id) == ("session-a", "session-7")
    assert b.arrival_s == 0.5
    t1, t2 = a.calls
    assert [s.tokens for s in t1.prompt] == [10] and t1.output_tokens == 100
    assert t2.prompt[0] == t1.prompt[0] and t2.prompt[1].seg_id == t1.output_seg_id
    assert [s.tokens for s in t2.prompt] == [10, 100, 2] and t2.output_tokens == 1
    assert t1.tool_latency_s == pytest.approx(30.0 - 10 / 10_000 - 100 / 50)
    assert approx_tokens("é" * 4) == 2 and approx_tokens("") == 1


def test_malformed_session_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "s.jsonl", [_turn(0, "a", "q", "r"), {"timestamp": 1, "input": "q", "output": 5}]
    )
    with pytest.raises(ValueError, match=r"s\.jsonl:2: 'output' must be a string"):
        load_sessions(path, 10)
    bad_id = _write(tmp_path / "t.jsonl", [_turn(0, None, "q", "r")])
    with pytest.raises(ValueError, match=r"t\.jsonl:1: 'session_id' must be"):
        load_sessions(bad_id, 10)
