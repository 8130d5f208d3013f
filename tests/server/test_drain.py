"""Graceful drain of a real `legato serve` on SIGTERM, and tool processes across kill -9.

- 20 runs inside a side-effecting tool + one run waiting on a client tool, SIGTERM with
  `--drain-timeout 30`: /readyz goes 503 and new runs are refused while the tools run (until the
  test lets them finish); after the restart every run completes (0 interrupted, every effect
  once) and the client tool's result is accepted for the same call id.
- kill -9 during a subprocess tool that spawned children: none of its process group survives
  the restart.
- a Python tool that blocks its thread is stopped at its timeout while /healthz answers fast.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from tests.server.serving import TOOLS_FILE, ServeProcess
from tests.server.test_durability import finished, lines, poll, run_of

N_RUNS = 20
BASE_ARGS = ["--tools", str(TOOLS_FILE), "--engine", "tests.server.serving:tiny_engine"]
BASE_ARGS += ["--log-level", "warning", "--policy", "passthrough"]


def tool_program(name: str, tool: str, args: dict[str, Any], then_record: bool = True) -> dict[str, Any]:
    """`tool(args)` -> `record` (one line per real execution): no LLM, so tests stay fast."""
    nodes: list[dict[str, Any]] = [
        {"kind": "tool", "name": "work", "tool": tool, "args": args, "output": "out"}
    ]
    if then_record:
        nodes.append(
            {
                "kind": "tool",
                "name": "record",
                "tool": "record",
                "args": {"path": {"var": "record_file"}, "text": {"value": "x"}},
                "output": "recorded",
            }
        )
    return {
        "name": name,
        "state": [{"name": n} for n in ("out", "recorded", "record_file")],
        "nodes": nodes,
        "entry": "work",
        "edges": [{"source": "work", "target": "record"}] if then_record else [],
    }


def test_sigterm_drains_then_every_run_completes_after_restart(tmp_path: Path) -> None:
    server = ServeProcess(
        [*BASE_ARGS, "--db", str(tmp_path / "runs.db"), "--drain-timeout", "30"], tmp_path / "log"
    )
    effects, record_file, gate = tmp_path / "effects.txt", tmp_path / "record.txt", tmp_path / "gate"
    # the tools end when the test opens the gate: the drain lasts until the test has checked it
    args = {"path": {"value": str(effects)}, "gate": {"value": str(gate)}}
    effect = tool_program("effect", "gated_effect", args)
    ask = tool_program("ask", "ask_client", {"question": {"value": "ok?"}})
    inputs = {"record_file": str(record_file)}
    try:
        with httpx.Client(base_url=server.start(), timeout=30) as c:
            ids = []
            for _ in range(N_RUNS):
                r = c.post("/v1/runs", json={"program": effect, "inputs": inputs})
                assert r.status_code == 201, r.text
                ids.append(r.json()["id"])
            ask_id = c.post("/v1/runs", json={"program": ask, "inputs": inputs}).json()["id"]
            poll(lambda: len(lines(effects)) == N_RUNS, "every run inside its side-effecting tool", 60)
            poll(lambda: bool(run_of(c, ask_id)["pending_tool_calls"]), "the client tool to wait", 60)
            call_id = run_of(c, ask_id)["pending_tool_calls"][0]["call_id"]
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            poll(lambda: c.get("/readyz").status_code == 503, "/readyz to go unready", 30)
            refused = c.post("/v1/runs", json={"program": effect, "inputs": inputs})
            assert refused.status_code == 503, refused.text
            assert server.proc.poll() is None  # still draining: its tools wait for the gate
            gate.touch()
            server.proc.wait(timeout=45)
        done = lines(effects)
        assert sorted(ln.split()[0] for ln in done).count("end") == N_RUNS  # finished, not cut off

        with httpx.Client(base_url=server.start(), timeout=30) as c:
            poll(lambda: finished(c, ids), "the resumed runs to finish", 60)
            statuses = [run_of(c, rid)["status"] for rid in ids]
            assert statuses == ["succeeded"] * N_RUNS
            assert lines(effects) == done  # no effect ran again
            assert sorted(ln.split()[0] for ln in lines(record_file)) == sorted(ids)

            poll(lambda: bool(run_of(c, ask_id)["pending_tool_calls"]), "the client tool to wait again", 30)
            assert run_of(c, ask_id)["pending_tool_calls"][0]["call_id"] == call_id
            r = c.post(f"/v1/runs/{ask_id}/tool_results", json={"call_id": call_id, "output": "yes"})
            assert r.status_code == 200, r.text
            poll(lambda: finished(c, [ask_id]), "the client-tool run to finish", 30)
            assert run_of(c, ask_id)["status"] == "succeeded"
    finally:
        server.stop()


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[2]) == pgid and stat[0] != "Z":
                out.append(int(entry))
    return out


def test_kill_9_during_a_subprocess_tool_leaves_no_tool_process(tmp_path: Path) -> None:
    server = ServeProcess([*BASE_ARGS, "--db", str(tmp_path / "runs.db")], tmp_path / "log")
    pidfile = tmp_path / "pid"
    program = tool_program("spawn", "spawn_sleepers", {"pidfile": {"value": str(pidfile)}}, then_record=False)
    try:
        with httpx.Client(base_url=server.start(), timeout=30) as c:
            run_id = c.post("/v1/runs", json={"program": program}).json()["id"]
            poll(lambda: pidfile.exists() and pidfile.read_text().strip() != "", "the tool to start", 30)
            pgid = int(pidfile.read_text())
            poll(lambda: len(group_members(pgid)) >= 3, "the tool's children", 10)
        server.kill9()
        with httpx.Client(base_url=server.start(), timeout=30) as c:
            assert group_members(pgid) == []  # reaped before the server was ready
            poll(lambda: finished(c, [run_id]), "the run to end", 30)
            assert run_of(c, run_id)["status"] == "interrupted"
    finally:
        server.stop()


# The blocking tool's sleep: far beyond its 0.5 s timeout, so a run that ended at the timeout and
# one that waited for the sleep (or a /healthz the sleep held up) differ by seconds, not by what a
# loaded machine's scheduling can add.
BLOCK_S = 20.0


def test_a_blocking_python_tool_times_out_and_healthz_stays_fast(tmp_path: Path) -> None:
    server = ServeProcess([*BASE_ARGS, "--db", str(tmp_path / "runs.db")], tmp_path / "log")
    program = tool_program("block", "blocking", {"seconds": {"value": BLOCK_S}}, then_record=False)
    try:
        with httpx.Client(base_url=server.start(), timeout=2 * BLOCK_S) as c:
            c.get("/healthz")
            run_id = c.post("/v1/runs", json={"program": program}).json()["id"]
            answers: list[float] = []
            t0 = time.monotonic()
            while not finished(c, [run_id]):
                # stopped at its timeout, not after its sleep
                assert time.monotonic() - t0 < BLOCK_S / 2, "the run outlived its tool's timeout"
                t = time.monotonic()
                assert c.get("/healthz").status_code == 200
                answers.append(time.monotonic() - t)
                time.sleep(0.005)
            run = run_of(c, run_id)
            assert run["status"] == "failed" and "timed out after 0.5s" in run["error"]
            # the blocked thread never held the event loop: /healthz within 100 ms (the issue's
            # bound) while the tool blocked; one answer in 20 may take a loaded machine's
            # scheduling hiccup, none a stall (a loaded one fits only a few polls in)
            answers.sort()
            assert len(answers) >= 3 and answers[int(0.95 * (len(answers) - 1))] < 0.1, answers
            assert answers[-1] < 1.0, answers
    finally:
        server.stop()
