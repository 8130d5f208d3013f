"""Crash recovery of a real `legato serve` subprocess: 20 runs in flight, `kill -9`, restart.

Every run resumes from its last finished step and ends with the outputs of an uninterrupted run
(seeded greedy decoding on the tiny torch model); the side-effecting `record` tool ran exactly
once per run; the pure `gate` tool that was mid-flight ran again; the impure `effect_gate` that
was mid-flight was not re-run and its run ended `interrupted`. For both stores.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.programs import gated_program
from tests.server.serving import TOOLS_FILE, ServeProcess

N_RUNS = 20
COMPARED = ("draft", "recorded", "gated", "final")


def poll(predicate: Any, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def run_of(c: httpx.Client, run_id: str) -> dict[str, Any]:
    body: dict[str, Any] = c.get(f"/v1/runs/{run_id}").json()
    return body


def start_runs(c: httpx.Client, tmp: Path, record_file: Path, gate: Path) -> dict[str, str]:
    ids = {}
    for i in range(N_RUNS):
        topic = f"topic {i}"
        inputs = {"topic": topic, "record_file": str(record_file), "gate_file": str(gate)}
        r = c.post("/v1/runs", json={"program": gated_program("gate"), "inputs": inputs})
        assert r.status_code == 201, r.text
        ids[topic] = r.json()["id"]
    return ids


def finished(c: httpx.Client, ids: list[str]) -> bool:
    runs = c.get("/v1/runs", params={"limit": 200}).json()["data"]
    done = {r["id"] for r in runs if r["status"] in ("succeeded", "failed", "cancelled", "interrupted")}
    return set(ids) <= done


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_kill_9_mid_flight_then_restart_resumes_every_run(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    args = [
        "--tools",
        str(TOOLS_FILE),
        "--engine",
        "tests.server.serving:tiny_engine",
        "--log-level",
        "warning",
        # Durability, not scheduling: 21 runs sit in a gate tool at once, more programs than
        # Legato's KV admission keeps on the tiny engine (a program in a tool keeps its KV), so
        # under the default policy the 21st would wait for one of them to finish.
        "--policy",
        "passthrough",
    ]
    if store == "sqlite":
        args += ["--db", str(tmp_path / "runs.db")]
    else:
        args += [
            "--redis-url",
            request.getfixturevalue("redis_url"),
            "--redis-prefix",
            f"t{uuid.uuid4().hex[:8]}:",
        ]
    server = ServeProcess(args, tmp_path / "serve.log")
    gate, record_file, effects = tmp_path / "gate", tmp_path / "record.txt", tmp_path / "effects.txt"
    try:
        with httpx.Client(base_url=server.start(), timeout=30) as c:
            ids = start_runs(c, tmp_path, record_file, gate)
            impure_inputs = {
                "topic": "impure", "record_file": str(tmp_path / "impure.txt"),
                "gate_file": str(gate), "effect_log": str(effects),
            }  # fmt: skip
            impure = c.post(
                "/v1/runs", json={"program": gated_program("effect_gate"), "inputs": impure_inputs}
            )
            assert impure.status_code == 201, impure.text
            impure_id = impure.json()["id"]

            def all_recorded() -> bool:
                return all(
                    any(s["node"] == "record" and s["status"] == "ok" for s in run_of(c, rid)["steps"])
                    for rid in ids.values()
                )

            poll(all_recorded, "every run to journal its `record` step")
            poll(lambda: lines(effects) == [impure_id], "the impure tool to start")
            assert all(run_of(c, rid)["status"] == "running" for rid in ids.values())
        server.kill9()  # runs are inside `gate` / `effect_gate` (the gate file does not exist yet)
        assert len(lines(record_file)) == N_RUNS

        with httpx.Client(base_url=server.start(), timeout=30) as c:
            gate.touch()
            poll(lambda: finished(c, [*ids.values(), impure_id]), "the resumed runs to finish")
            resumed = {topic: run_of(c, rid) for topic, rid in ids.items()}
            for run in resumed.values():
                assert run["status"] == "succeeded", run["error"]
                assert run["resumed"] == 1
            stopped = run_of(c, impure_id)
            assert stopped["status"] == "interrupted"
            assert "neither pure nor idempotent" in stopped["error"] and "effect_gate" in stopped["error"]
            assert lines(effects) == [impure_id]  # never re-run

            # every side effect happened once per run, none twice
            counted = Counter(line.split()[0] for line in lines(record_file))
            assert counted == Counter(dict.fromkeys(ids.values(), 1))

            # events: one seq per event across both server lives, two run_started
            with c.stream("GET", f"/v1/runs/{ids['topic 0']}/events") as stream:
                events = [json.loads(x[6:]) for x in stream.iter_lines() if x.startswith("data: ")]
            seqs = [e["seq"] for e in events]
            assert seqs == sorted(set(seqs))
            assert [e["kind"] for e in events].count("run_started") == 2

            # the same runs, uninterrupted, give identical outputs
            reference_ids = start_runs(c, tmp_path, tmp_path / "reference.txt", gate)
            poll(lambda: finished(c, list(reference_ids.values())), "the reference runs")
            for topic, rid in reference_ids.items():
                reference = run_of(c, rid)
                assert reference["status"] == "succeeded"
                got = {k: resumed[topic]["output"][k] for k in COMPARED}
                want = {k: reference["output"][k] for k in COMPARED}
                assert got == want, topic
    finally:
        server.stop()
