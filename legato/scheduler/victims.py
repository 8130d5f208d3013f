"""Which programs give their memory back when a replica runs short.

Both rules take the replica's admitted programs newest first (highest admission number): the
engine runs admitted programs' calls in admission order, so the newest have the least work
done and the least waiting behind them.

- `pick_victim`: on overflow, the newest program with no call on the engine (pausing it costs
  no work in flight); past the whole capacity, the newest one even with work on the engine
  (its call is recomputed later) rather than letting the engine thrash, which the caller does
  only while the calls on the engine do not fit the pool together (`_relieve`).
- `idle_holders`: programs holding KV through a tool or for a next call that has not come, for
  an engine that has nothing to run while others wait (`Legato._unhold_idle`).

The per-replica list of (-admission number, run) entries is a heap with lazy deletion; both
functions scan it in order, which happens only on overflow or on an idle engine.
"""

from __future__ import annotations

from collections.abc import Mapping

from legato.scheduler.legato_run import ACTIVE, Run


def _newest_first(entries: list[tuple[int, str]], runs: Mapping[str, Run], replica: int) -> list[Run]:
    """Valid entries newest first; stale ones are dropped from `entries` (kept a heap)."""
    live: list[tuple[int, str]] = []
    out: list[Run] = []
    seen: set[str] = set()
    for neg, run_id in sorted(entries):
        r = runs.get(run_id)
        if r is None or r.state != ACTIVE or r.replica != replica or r.prio != -neg or run_id in seen:
            continue
        seen.add(run_id)
        live.append((neg, run_id))
        out.append(r)
    entries[:] = live  # sorted: still a heap
    return out


def pick_victim(
    entries: list[tuple[int, str]], runs: Mapping[str, Run], replica: int, over_capacity: bool
) -> Run | None:
    ordered = _newest_first(entries, runs, replica)
    for r in ordered:
        if r.dispatched == 0:
            return r
    return ordered[0] if ordered and over_capacity else None


def idle_holders(entries: list[tuple[int, str]], runs: Mapping[str, Run], replica: int) -> list[Run]:
    """Programs with no live call that hold memory in the budget, newest first: a branch held
    through a tool, or the context bridged to a next call that has not come."""
    return [
        r
        for r in _newest_first(entries, runs, replica)
        if not r.live and not r.dispatched and (r.bridge or any(b.held for b in r.acting))
    ]
