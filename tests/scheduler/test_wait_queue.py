"""`WaitQueue.in_order`: valid entries least key first, read lazily off the heap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from legato.scheduler.legato_run import Run
from legato.scheduler.wait_queue import WaitQueue


@given(
    keys=st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=0, max_size=60),
    stale=st.sets(st.integers(0, 59)),
)
def test_in_order_yields_the_valid_entries_sorted_by_key(keys: list[float], stale: set[int]) -> None:
    queue = WaitQueue()
    runs: dict[str, Run] = {}
    for i, key in enumerate(keys):
        r = runs[f"r{i}"] = Run(f"r{i}", "agent", "t0", None)
        queue.push(r, key, 0.0)
    for i in stale & set(range(len(keys))):
        runs[f"r{i}"].qver += 1  # taken from mid-queue: its entry is stale
    got = [(key, r.run_id) for key, _, r in queue.in_order("t0", runs)]
    want = sorted((key, f"r{i}") for i, key in enumerate(keys) if i not in stale)
    assert [k for k, _ in got] == [k for k, _ in want]
    assert sorted(got) == want


def test_in_order_reads_only_what_the_caller_takes() -> None:
    queue = WaitQueue()
    runs = {}
    for i in range(1000):
        r = runs[f"r{i}"] = Run(f"r{i}", "agent", "t0", None)
        queue.push(r, float(1000 - i), 0.0)
    lazy = queue.in_order("t0", runs)
    assert [next(lazy)[2].run_id for _ in range(3)] == ["r999", "r998", "r997"]
    assert list(queue.in_order("nobody", runs)) == []
