"""Engine busy time as the real-time scheduler sees it: a replica is busy while some call of
ours is inside it (submitted, not finished). `torch_replay` reports it as `engine_busy_s`."""

from __future__ import annotations

from collections.abc import Callable


class BusyClock:
    """Seconds each replica had at least one of our calls inside it."""

    def __init__(self, replicas: int, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.busy_s = [0.0] * replicas
        self._inside = [0] * replicas
        self._since: list[float | None] = [None] * replicas

    def start(self, replica: int) -> None:
        self._inside[replica] += 1
        if self._since[replica] is None:
            self._since[replica] = self.clock()

    def end(self, replica: int) -> None:
        self._inside[replica] -= 1
        since = self._since[replica]
        if since is not None and self._inside[replica] == 0:
            self.busy_s[replica] += self.clock() - since
            self._since[replica] = None

    def busy_now(self, replica: int) -> float:
        """`busy_s` including the interval still open (what a live dashboard samples)."""
        since = self._since[replica]
        return self.busy_s[replica] + (self.clock() - since if since is not None else 0.0)


__all__ = ["BusyClock"]
