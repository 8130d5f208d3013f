"""`trace:` Mooncake block traces: parsing, session reconstruction, load options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from legato.bench.workloads import build_workload
from legato.bench.workloads.mooncake import BLOCK_TOKENS, load_trace, parse_trace
from tests.bench.shared_traces import shared_trace

SHARED_TRACE = shared_trace("mooncake_conversation_trace.jsonl")


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
    workload = load_trace(trace, 100, decode_tok_s=50.0)
    assert [len(p.calls) for p in workload.programs] == [2, 1, 1]
    a = workload.programs[0]
    assert a.arrival_s == 0.0 and workload.programs[2].arrival_s == 3.0 and a.open_loop
    first, second = a.calls
    assert [s.tokens for s in first.prompt] == [512, 512, 476]
    assert [s.tokens for s in second.prompt] == [512, 512, 512, 512, 52]
    assert second.prompt[:2] == first.prompt[:2], "shared full blocks map to the same segments"
    assert second.prompt[2] != first.prompt[2]
    assert workload.programs[1].calls[0].prompt[0] == first.prompt[0], "block 0 shared across sessions"
    # think time: next send (2 s) - 10 output tokens at 50 tok/s
    assert first.tool == "user" and first.tool_latency_s == pytest.approx(2.0 - 0.2)
    assert second.deps == (0,)
    # Fitted from the trace's own pacing: its only pair allows a call as long as the whole gap.
    assert load_trace(trace, 100).programs[0].calls[0].tool_latency_s == pytest.approx(0.0)


def test_load_options(trace: Path) -> None:
    burst = build_workload(f"trace:{trace}", 10, seed=0, params={"arrival": "burst"})
    assert {p.arrival_s for p in burst.programs} == {0.0}
    scaled = build_workload(f"trace:{trace}", 10, seed=0, params={"time_scale": "0.5", "decode_tok_s": "50"})
    assert [p.arrival_s for p in scaled.programs] == [0.0, 0.05, 1.5]
    assert scaled.programs[0].calls[0].tool_latency_s == pytest.approx(0.9)
    poisson = [
        build_workload(f"trace:{trace}", 10, seed=s, params={"arrival": "poisson:2"}) for s in (1, 1, 2)
    ]
    starts = [[p.arrival_s for p in w.programs] for w in poisson]
    assert starts[0] == starts[1] != starts[2] and starts[0][0] == 0.0
    for bad, message in [
        ({"arrival": "poisson:0"}, "needs a rate > 0"),
        ({"arrival": "steady"}, "unknown arrival 'steady'; valid: trace, burst, poisson:RATE"),
        ({"time_scale": "0"}, "time_scale must be a positive number"),
    ]:
        with pytest.raises(ValueError, match=message):
            build_workload(f"trace:{trace}", 10, seed=0, params=bad)


def test_a_prefix_many_requests_branch_from_starts_no_session(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "t.jsonl",
        [
            _req(0, 700, [0, 9]),
            _req(10, 1500, [0, 1, 2]),
            _req(20, 1200, [0, 5, 6]),
            _req(30, 1600, [0, 1, 3, 4]),
        ],
    )
    assert [len(p.calls) for p in load_trace(path, 100).programs] == [1, 2, 1]


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


@pytest.mark.skipif(SHARED_TRACE is None, reason="shared traces not present")
def test_shipped_trace_sessions_are_conversations() -> None:
    """Each reconstructed turn starts with every full block of an earlier turn of its session."""
    assert SHARED_TRACE is not None
    workload = load_trace(SHARED_TRACE, 10_000, limit=2000)
    assert workload.total_calls == 2000
    multi = [p for p in workload.programs if len(p.calls) > 1]
    assert multi
    for program in multi:
        for k, call in enumerate(program.calls[1:], start=1):
            assert any(
                call.prompt[: len(full)] == full
                for c in program.calls[:k]
                for full in (tuple(s for s in c.prompt if s.tokens == BLOCK_TOKENS),)
                if full
            )
    assert workload.params["zero_tool_gaps"] < workload.params["tool_gaps"] / 10
