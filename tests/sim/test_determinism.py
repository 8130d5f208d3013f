"""Same inputs, same outcome: across runs and across processes with different hash seeds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from legato.sim import SimConfig, simulate
from tests.sim.helpers import agent_workload

_SCRIPT = """
from legato.sim import SimConfig, simulate
from tests.sim.helpers import agent_workload
w = agent_workload(10, seed=9)
for name in ("lpm", "thunderagent", "continuum", "oracle-evict"):
    o = simulate(w, name, SimConfig(kv_blocks=2400, replicas=2), concurrency=6)
    print(name, repr(o))
"""


def _run_with_hash_seed(seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout


def test_outcome_independent_of_hash_seed() -> None:
    a = _run_with_hash_seed("1")
    assert a.count("RunOutcome(") == 4
    assert a == _run_with_hash_seed("2")


def test_progress_reports_to_completion() -> None:
    calls: list[tuple[int, int]] = []
    simulate(
        agent_workload(5), "fcfs-lru", SimConfig(), concurrency=2, progress=lambda d, t: calls.append((d, t))
    )
    assert calls[-1] == (5, 5)
    assert all(t == 5 and 0 < d <= 5 for d, t in calls)
