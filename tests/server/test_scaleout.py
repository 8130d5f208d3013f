"""Two real `legato serve` instances on one real Redis: leases, fencing and takeover.

20 runs of a side-effecting tool (it logs every real execution), split over both instances;
`kill -9` one of them while its runs are inside the tool. The other takes its runs over once
their leases expire: no run is lost, no finished status ever changes, no tool step runs twice.
A tool that is neither pure nor idempotent, stopped mid-flight, ends its run `interrupted`; an
`idempotent=True` tool is run again with the same idempotency key, so all 20 runs complete.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import pytest

from tests.server.serving import ServeProcess
from tests.server.test_drain import BASE_ARGS, tool_program
from tests.server.test_durability import lines, poll

N_RUNS = 20
LEASE_S = 3.0  # short for a fast test, long enough that a busy CI core does not lose a lease
FINISHED = {"succeeded", "failed", "cancelled", "interrupted"}


class StatusWatch:
    """Polls every run's status through one instance; records each run's status sequence."""

    def __init__(self, url: str, ids: list[str]) -> None:
        self.url, self.ids = url, ids
        self.seen: dict[str, list[str]] = defaultdict(list)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self.stop.is_set():
                for run in c.get("/v1/runs", params={"limit": 200}).json()["data"]:
                    if run["id"] in self.ids and (
                        not self.seen[run["id"]] or self.seen[run["id"]][-1] != run["status"]
                    ):
                        self.seen[run["id"]].append(run["status"])
                self.stop.wait(0.1)

    def all_finished(self) -> bool:
        return all(self.seen[r] and self.seen[r][-1] in FINISHED for r in self.ids)

    def flips(self) -> list[str]:
        """Runs whose status changed after it was a finished one."""
        out = []
        for run_id, statuses in self.seen.items():
            done = [i for i, s in enumerate(statuses) if s in FINISHED]
            if done and done[0] != len(statuses) - 1:
                out.append(run_id)
        return out


@pytest.mark.parametrize("tool", ["gated_effect", "gated_keyed_effect"])
def test_kill_9_one_of_two_instances_the_other_takes_over(tool: str, tmp_path: Path, redis_url: str) -> None:
    args = [*BASE_ARGS, "--redis-url", redis_url, "--redis-prefix", f"t{uuid.uuid4().hex[:8]}:"]
    args += ["--lease-s", str(LEASE_S)]
    a = ServeProcess(args, tmp_path / "a.log")
    b = ServeProcess(args, tmp_path / "b.log")
    effects, record_file, gate = tmp_path / "effects.txt", tmp_path / "record.txt", tmp_path / "gate"
    # the tool ends when the test opens the gate: at the kill every run is inside it (a run that
    # had just finished its tool could be on either side of its journal write)
    program = tool_program("work", tool, {"path": {"value": str(effects)}, "gate": {"value": str(gate)}})
    inputs = {"record_file": str(record_file)}
    try:
        url_a, url_b = a.start(), b.start()
        owner: dict[str, str] = {}
        for i in range(N_RUNS):
            url = url_a if i % 2 else url_b
            r = httpx.post(f"{url}/v1/runs", json={"program": program, "inputs": inputs}, timeout=30)
            assert r.status_code == 201, r.text
            owner[r.json()["id"]] = url
        ids = list(owner)
        watch = StatusWatch(url_b, ids)
        watch.thread.start()

        def inside() -> int:  # executions started (gated_effect also logs `end` lines)
            return sum(1 for ln in lines(effects) if not ln.startswith("end "))

        poll(lambda: inside() >= N_RUNS, "every run inside its tool", 60)
        a.kill9()  # A's runs are inside the tool: the kill catches every one of them mid-tool
        assert not [ln for ln in lines(effects) if ln.startswith("end ")] and not lines(record_file)
        in_flight = {rid for rid, url in owner.items() if url == url_a}
        assert in_flight
        gate.touch()
        poll(watch.all_finished, "every run to finish on B", 60)
        watch.stop.set()
        watch.thread.join(5)

        with httpx.Client(base_url=url_b, timeout=30) as c:
            runs = {rid: c.get(f"/v1/runs/{rid}").json() for rid in ids}  # B serves A's runs too
            moved = sorted(in_flight)[0]
            with c.stream("GET", f"/v1/runs/{moved}/events") as stream:
                kinds = [json.loads(x[6:])["kind"] for x in stream.iter_lines() if x.startswith("data: ")]
        assert kinds[-1] == "run_finished" and kinds.count("run_started") == 2
        assert watch.flips() == []
        statuses = Counter(run["status"] for run in runs.values())
        executions = [ln.split() for ln in lines(effects)]
        recorded = Counter(ln.split()[0] for ln in lines(record_file))
        if tool == "gated_effect":  # `start <run>` / `end <run>` per real execution
            started = Counter(run for what, run in executions if what == "start")
            assert started == Counter(dict.fromkeys(ids, 1))  # no step ran twice
            assert statuses == {"succeeded": N_RUNS - len(in_flight), "interrupted": len(in_flight)}
            assert {rid for rid, run in runs.items() if run["status"] == "interrupted"} == in_flight
        else:  # `<key> <run>` per real execution: A's runs ran again, with the same key
            keys: dict[str, set[str]] = defaultdict(set)
            for key, run in executions:
                keys[run].add(key)
            assert all(len(keys[rid]) == 1 for rid in ids), keys
            assert statuses == {"succeeded": N_RUNS}
            assert all(runs[rid]["resumed"] == 1 for rid in in_flight)
        done = {rid for rid, run in runs.items() if run["status"] == "succeeded"}
        assert recorded == Counter(dict.fromkeys(done, 1))  # the step after it: once per run
    finally:
        a.stop()
        b.stop()
