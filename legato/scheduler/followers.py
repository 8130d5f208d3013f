"""What follows a call site: the one tool-follows-call history.

Programs repeat: after the same call site the same tool tends to run. Both learners of that
fact count here: the scheduler's `ProgramHistory` (per program name and node, from the tools
its policy sees start) and a dynamic agent's `AgentHistory` (per call site, from its finished
traces, which also count "llm", "fork" and "end" as followers and time the tools).

Counts can be taken back (`forget`), so a history bounded to its last runs stays exact.
"""

from __future__ import annotations

from collections import Counter


class Followers:
    """Per site, how often each follower came next, and the mean duration of the timed ones."""

    def __init__(self) -> None:
        self._counts: dict[str, Counter[str]] = {}
        self._durations: dict[tuple[str, str], tuple[float, int]] = {}

    def record(self, site: str, follower: str, duration_s: float | None = None) -> None:
        self._counts.setdefault(site, Counter())[follower] += 1
        if duration_s is not None:
            s, n = self._durations.get((site, follower), (0.0, 0))
            self._durations[(site, follower)] = (s + duration_s, n + 1)

    def forget(self, site: str, follower: str, duration_s: float | None = None) -> None:
        """Take back one `record` with the same arguments."""
        seen = self._counts.get(site)
        if seen is None or seen[follower] <= 0:
            return
        seen[follower] -= 1
        if seen[follower] == 0:
            del seen[follower]
        if duration_s is not None:
            s, n = self._durations.get((site, follower), (0.0, 0))
            if n <= 1:
                self._durations.pop((site, follower), None)
            else:
                self._durations[(site, follower)] = (s - duration_s, n - 1)

    def most_likely(self, site: str) -> tuple[str, float] | None:
        """The follower seen most often after `site` (ties: the smallest name) and its share of
        all followers seen there; None when nothing was seen."""
        seen = self._counts.get(site)
        if not seen:
            return None
        best = max(sorted(seen), key=lambda f: seen[f])
        return best, seen[best] / sum(seen.values())

    def mean_duration(self, site: str, follower: str) -> float | None:
        d = self._durations.get((site, follower))
        return None if d is None else d[0] / d[1]


__all__ = ["Followers"]
