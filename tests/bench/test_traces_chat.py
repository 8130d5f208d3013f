"""`chat:` agent sessions logged as OpenAI-chat message lists (the mini-swe-agent trace shape)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from legato.bench.workloads import build_workload
from legato.bench.workloads.chat_log import load_chat
from tests.bench.shared_traces import shared_trace

MINISWE = shared_trace("miniswe_deepseek.jsonl.gz")


def _assistant(t: float, n_in: int, n_out: int, text: str = "run it") -> dict[str, object]:
    usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "cached_tokens": 0}
    return {"role": "assistant", "content": text, "timestamp": t, "usage": usage, "tool_calls": []}


def _session(sid: str, t0: float, task: str) -> dict[str, object]:
    system = "You are a helpful assistant that can interact with a computer shell to solve tasks. " * 2
    return {
        "session_id": sid,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": task},
            _assistant(t0 + 1.0, 300, 20),
            {"role": "tool", "content": "ok", "timestamp": t0 + 1.25},
            _assistant(t0 + 3.0, 400, 30),
            {"role": "tool", "content": "ok", "timestamp": t0 + 4.5},
            {"role": "user", "content": "go on"},
            _assistant(t0 + 6.0, 500, 5),
            {"role": "exit", "content": "diff"},
        ],
    }


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_calls_prompts_and_logged_tool_gaps(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.jsonl", [_session("b", 100.0, "Fix bug B"), _session("a", 50.0, "Fix bug A")])
    workload = load_chat(path, 10)
    a, b = workload.programs
    assert (a.program_id, a.arrival_s, b.arrival_s) == ("chat-a", 0.0, 50.0) and a.open_loop
    assert [c.prompt_tokens for c in a.calls] == [300, 400, 500], "prompt lengths are the logged usage"
    assert [c.output_tokens for c in a.calls] == [20, 30, 5]
    assert [c.deps for c in a.calls] == [(), (0,), (1,)]
    # A gap is the tool message's time minus the assistant message's time (the latest one).
    assert [c.tool_latency_s for c in a.calls] == pytest.approx([0.25, 1.5, 0.0])
    assert a.calls[-1].tool is None
    second = a.calls[1].prompt
    assert second[: len(a.calls[0].prompt)] == a.calls[0].prompt
    assert second[len(a.calls[0].prompt)].seg_id == a.calls[0].output_seg_id
    assert second[-1].tokens == 400 - 300 - 20
    # The shared system prompt is one shared segment; the task is private.
    assert a.calls[0].prompt[0] == b.calls[0].prompt[0] and a.calls[0].prompt[-1] != b.calls[0].prompt[-1]


def test_chat_options_and_errors(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.jsonl", [_session("a", 0.0, "x"), _session("b", 10.0, "y")])
    burst = build_workload(f"chat:{path}", 10, seed=0, params={"arrival": "burst", "time_scale": "2"})
    assert [p.arrival_s for p in burst.programs] == [0.0, 0.0]
    assert burst.programs[0].calls[1].tool_latency_s == pytest.approx(3.0)
    bad = _session("a", 0.0, "x")
    bad["messages"][2]["usage"] = None  # type: ignore[index]
    with pytest.raises(ValueError, match=r"c2\.jsonl:1: message 2: an assistant message needs a 'usage'"):
        load_chat(_write(tmp_path / "c2.jsonl", [bad]), 10)
    none = {"session_id": "z", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(ValueError, match="at least one assistant message"):
        load_chat(_write(tmp_path / "c3.jsonl", [none]), 10)


@pytest.mark.skipif(MINISWE is None, reason="shared traces not present")
def test_two_real_sessions_replay_as_logged(tmp_path: Path) -> None:
    """The first two sessions of the shipped file: 104 and 74 calls (module docstring)."""
    assert MINISWE is not None
    with gzip.open(MINISWE, "rt") as fh:
        lines = [next(fh), next(fh)]
    excerpt = tmp_path / "two.jsonl.gz"
    with gzip.open(excerpt, "wt") as fh:
        fh.writelines(lines)
    sessions = [json.loads(line) for line in lines]
    workload = load_chat(excerpt, 10)
    by_id = {p.program_id: p for p in workload.programs}
    for s in sessions:
        program = by_id[f"chat-{s['session_id']}"]
        assistants = [m for m in s["messages"] if m["role"] == "assistant"]
        assert [c.prompt_tokens for c in program.calls] == [m["usage"]["prompt_tokens"] for m in assistants]
        tools = [m for m in s["messages"] if m["role"] == "tool"]
        assert program.calls[0].tool_latency_s == pytest.approx(
            tools[0]["timestamp"] - assistants[0]["timestamp"]
        )
    assert sorted(len(p.calls) for p in workload.programs) == [74, 104]
    assert [len(by_id[f"chat-{s['session_id']}"].calls) for s in sessions] == [104, 74]
    assert workload.params["usage_gaps"] == 0 and workload.params["untimed_gaps"] == 0


def test_tct_counts_from_the_trace_arrival(tmp_path: Path) -> None:
    from legato.sim.driver import SimConfig, simulate

    path = _write(tmp_path / "c.jsonl", [_session("a", 0.0, "x"), _session("b", 0.0, "y")])
    workload = build_workload(f"chat:{path}", 10, seed=0, params={"arrival": "burst"})
    outcome = simulate(workload, "fcfs-lru", SimConfig(), concurrency=1)
    first, second = sorted(outcome.programs, key=lambda p: p.finish_s)
    assert first.arrival_s == second.arrival_s == 0.0
    assert second.submitted_s == pytest.approx(first.finish_s)  # waited for the one client slot
    assert second.tct_s == pytest.approx(second.finish_s)


def test_iso_timestamps_and_other_openai_roles_replay_like_numbers(tmp_path: Path) -> None:
    """Logs often write ISO-8601 times, OpenAI's newer "developer" role and the older
    "function" tool results: the same session written that way replays the same."""
    import datetime

    def iso(t: float) -> str:
        return datetime.datetime.fromtimestamp(1_700_000_000 + t, datetime.UTC).isoformat()

    plain = _session("a", 0.0, "x")
    other = json.loads(json.dumps(plain))
    for m in other["messages"]:
        if "timestamp" in m:
            m["timestamp"] = iso(m["timestamp"])
        m["role"] = {"system": "developer", "tool": "function"}.get(m["role"], m["role"])
    other["messages"][3]["timestamp"] = other["messages"][3]["timestamp"].replace("+00:00", "")  # naive: UTC
    want = load_chat(_write(tmp_path / "a.jsonl", [plain]), 10).programs[0]
    got = load_chat(_write(tmp_path / "b.jsonl", [other]), 10).programs[0]
    assert [c.tool_latency_s for c in got.calls] == pytest.approx([c.tool_latency_s for c in want.calls])
    assert [c.prompt_tokens for c in got.calls] == [c.prompt_tokens for c in want.calls]
    bad = json.loads(json.dumps(plain))
    bad["messages"][2]["timestamp"] = "yesterday"
    with pytest.raises(ValueError, match="'timestamp' must be a number or an ISO-8601 date-time"):
        load_chat(_write(tmp_path / "c.jsonl", [bad]), 10)
