"""`sessions:` OpenAI-chat call logs: cumulative inputs, agents and branches, order, tool gaps."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from legato.bench.traces import approx_tokens
from legato.bench.workloads import build_workload
from legato.bench.workloads.sessions import load_sessions
from legato.sim.workload import Workload
from tests.bench.shared_traces import shared_trace

MINISWE = shared_trace("miniswe_deepseek.jsonl.gz")

S = 1_000_000  # µs per second


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _line(t_s: float, session: object, text_in: str, text_out: str, **extra: object) -> dict[str, object]:
    return {"timestamp": int(t_s * S), "input": text_in, "output": text_out, "session_id": session, **extra}


def _conversation(rng: random.Random, turns: int) -> list[tuple[str, str]]:
    """(new input, output) per turn, with distinct made-up words."""

    def text(n: int) -> str:
        return " ".join(f"w{rng.randrange(10**6)}" for _ in range(n))

    return [(text(rng.randint(5, 60)), text(rng.randint(1, 40))) for _ in range(turns)]


def _tokens(w: Workload) -> list[list[tuple[int, int]]]:
    return [[(c.prompt_tokens, c.output_tokens) for c in p.calls] for p in w.programs]


def test_cumulative_and_delta_logs_give_the_same_tokens(tmp_path: Path) -> None:
    rng = random.Random(7)
    convs = {"a": _conversation(rng, 6), "b": _conversation(rng, 4)}
    delta, cumulative = [], []
    for session, conv in convs.items():
        history = ""
        for k, (new, out) in enumerate(conv):
            t = 10.0 * k + (0.5 if session == "b" else 0.0)
            delta.append(_line(t, session, new, out))
            history += new
            cumulative.append(_line(t, session, history, out))
            history += out
    d = load_sessions(_write(tmp_path / "delta.jsonl", delta), 10)
    c = load_sessions(_write(tmp_path / "cum.jsonl", cumulative), 10)
    assert _tokens(c) == _tokens(d)
    assert c.params["continuations"] == 8 and d.params["continuations"] == 0
    longest = max(len(line["input"]) for line in cumulative)  # type: ignore[arg-type]
    assert c.params["max_prompt_tokens"] <= approx_tokens("x" * longest) + 20  # not the sum of all turns
    for w in (c, d):  # a turn's prompt is its predecessor's prompt + output + the new text
        first, second = w.programs[0].calls[:2]
        assert second.prompt[: len(first.prompt) + 1] == (*first.prompt, second.prompt[len(first.prompt)])
        assert second.prompt[len(first.prompt)].seg_id == first.output_seg_id and second.deps == (0,)


def test_two_agents_keep_their_parallel_calls_parallel(tmp_path: Path) -> None:
    orch, sub = (
        "You orchestrate. Task: fix the bug. ",
        "You are a sub-agent with a shell; answer with one command at a time. ",
    )
    a0, b0 = sub + "Look at module a.", sub + "Look at module b."
    o0 = orch
    rows = [
        _line(0.0, "s", o0, "spawn two helpers", end_timestamp=2 * S),
        _line(10.0, "s", a0, "ls a", end_timestamp=11 * S),
        _line(10.1, "s", b0, "ls b", end_timestamp=11 * S),
        _line(20.0, "s", a0 + "ls a" + " a.py", "done a", end_timestamp=21 * S),
        _line(20.5, "s", b0 + "ls b" + " b.py", "done b", end_timestamp=22 * S),
        _line(30.0, "s", o0 + "spawn two helpers" + " results: done a, done b", "finished"),
    ]
    (program,) = load_sessions(_write(tmp_path / "s.jsonl", rows), 10).programs
    deps = [c.deps for c in program.calls]
    assert deps == [(), (0,), (0,), (1,), (2,), (0, 3, 4)]
    # a0 and b0 share the sub-agent system prompt; neither shares the orchestrator's.
    assert program.calls[1].prompt[0] == program.calls[2].prompt[0] != program.calls[0].prompt[0]
    assert program.calls[1].prompt[0].tokens == approx_tokens(sub + "Look at module ")
    # Tool gaps are the logged ones: from each call's end to its first dependent's send.
    assert [c.tool_latency_s for c in program.calls] == pytest.approx([8.0, 9.0, 9.5, 9.0, 8.0, 0.0])
    assert program.calls[-1].tool is None


def test_lines_out_of_order_are_sorted(tmp_path: Path) -> None:
    rows, history = [], ""
    for k, (new, out) in enumerate(_conversation(random.Random(3), 5)):
        history += new
        rows.append(_line(10.0 * k, "s", history, out))
        history += out
    ordered = load_sessions(_write(tmp_path / "in.jsonl", rows), 10)
    shuffled = load_sessions(_write(tmp_path / "out.jsonl", [rows[i] for i in (2, 0, 4, 3, 1)]), 10)
    assert _tokens(ordered) == _tokens(shuffled)
    assert [c.deps for c in shuffled.programs[0].calls] == [(), (0,), (1,), (2,), (3,)]
    assert shuffled.params["continuations"] == 4 and shuffled.params["max_prompt_tokens"] < approx_tokens(
        history
    )


def test_gap_without_end_times_is_fitted_from_the_log(tmp_path: Path) -> None:
    rows = [_line(0.0, "s", "q" * 40, "a" * 400), _line(30.0, "s", "q" * 40 + "a" * 400 + "next", "b")]
    (program,) = load_sessions(_write(tmp_path / "s.jsonl", rows), 10).programs
    assert program.calls[0].tool_latency_s == pytest.approx(0.0)  # its only pair allows a 30 s call
    (fixed,) = load_sessions(_write(tmp_path / "t.jsonl", rows), 10, decode_tok_s=50.0).programs
    assert fixed.calls[0].tool_latency_s == pytest.approx(30.0 - 100 / 50)


def test_session_registry_arrivals_and_ids(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "s.jsonl",
        [
            _line(100.0, "a", "x" * 40, "y" * 400),
            _line(100.5, 7, "hello", "hi"),
            _line(130.0, "a", "z" * 8, "w"),
        ],
    )
    workload = build_workload(f"sessions:{path}", 10, seed=0)
    a, b = workload.programs
    assert (a.program_id, b.program_id) == ("session-a", "session-7")
    assert (a.arrival_s, b.arrival_s) == (0.0, 0.5) and a.open_loop
    _, t2 = a.calls
    assert [s.tokens for s in t2.prompt] == [10, 100, 2] and t2.output_tokens == 1
    burst = build_workload(f"sessions:{path}", 10, seed=0, params={"arrival": "burst", "time_scale": "2"})
    assert [p.arrival_s for p in burst.programs] == [0.0, 0.0]
    assert approx_tokens("é" * 4) == 2 and approx_tokens("") == 1


def test_malformed_session_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "s.jsonl", [_line(0, "a", "q", "r"), {"timestamp": 1, "input": "q", "output": 5}]
    )
    with pytest.raises(ValueError, match=r"s\.jsonl:2: 'output' must be a string"):
        load_sessions(path, 10)
    bad_id = _write(tmp_path / "t.jsonl", [_line(0, None, "q", "r")])
    with pytest.raises(ValueError, match=r"t\.jsonl:1: 'session_id' must be"):
        load_sessions(bad_id, 10)
    early = _write(tmp_path / "u.jsonl", [_line(5, "a", "q", "r", end_timestamp=1)])
    with pytest.raises(ValueError, match=r"u\.jsonl:1: 'end_timestamp' is before 'timestamp'"):
        load_sessions(early, 10)


def _render(message: dict[str, object]) -> str:
    calls = message.get("tool_calls") or []
    text = f"<|{message['role']}|>{message.get('content') or ''}"
    return text + "".join(f"<|call|>{c['name']}({c['arguments']})" for c in calls) + "\n"  # type: ignore[attr-defined,index]


@pytest.mark.skipif(MINISWE is None, reason="shared traces not present")
def test_real_sessions_logged_cumulatively(tmp_path: Path) -> None:
    """Two real mini-swe-agent sessions written the way a logging proxy writes them (each input the
    whole conversation so far): prompts stay the size the provider reported, not the sum of all
    earlier turns (the old loader made a 36k-token prompt 607k), and gaps are the logged tool times."""
    assert MINISWE is not None
    with gzip.open(MINISWE, "rt") as fh:
        sessions = [json.loads(next(fh)) for _ in range(2)]
    rows, usage, tool_s = [], [], []
    for s in sessions:
        messages, sent = s["messages"], None
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                sent = m.get("timestamp", sent)
                continue
            text_in = "".join(_render(x) for x in messages[:i])
            end = int(m["timestamp"] * S)
            rows.append(
                _line(sent or m["timestamp"], s["session_id"], text_in, _render(m), end_timestamp=end)
            )
            usage.append(m["usage"]["prompt_tokens"])
            if i + 1 < len(messages) and messages[i + 1]["role"] == "tool":
                tool_s.append(messages[i + 1]["timestamp"] - m["timestamp"])
    workload = load_sessions(_write(tmp_path / "real.jsonl", rows), 10)
    assert [len(p.calls) for p in workload.programs] == [104, 74]
    assert workload.params["continuations"] == 104 + 74 - 2
    # Four UTF-8 bytes a token is an estimate; the provider's count is the truth it must track.
    assert 0.8 < workload.params["max_prompt_tokens"] / max(usage) < 1.2  # type: ignore[operator]
    gaps = sorted(c.tool_latency_s for p in workload.programs for c in p.calls if c.tool is not None)
    assert gaps == pytest.approx(sorted(tool_s), abs=2e-6)
