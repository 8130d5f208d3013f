"""Program affinity shared by the bounds: a run's calls go where its first call went."""

from __future__ import annotations

from legato.scheduler.policy import ClusterView, least_loaded


class Affinity:
    """run_id -> replica, assigned least-loaded on first sight, forgotten when the run ends."""

    def __init__(self) -> None:
        self._home: dict[str, int] = {}

    def route(self, run_id: str, view: ClusterView) -> int:
        home = self._home.get(run_id)
        if home is None:
            home = least_loaded(view)
            self._home[run_id] = home
        return home

    def get(self, run_id: str) -> int | None:
        return self._home.get(run_id)

    def forget(self, run_id: str) -> None:
        self._home.pop(run_id, None)
