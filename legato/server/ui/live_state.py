"""What the page's answers read that needs an await (the store's tenant list, the engines' stats),
refreshed in the background so the data endpoints themselves never wait.

Under load a store query waits behind every other query (SQLite runs one at a time) and each
await waits for a turn of a busy event loop; answering a poll from data gathered at most
`PERIOD_S` ago keeps `/ui/api/snapshot` a synchronous read of in-memory state. Engine stats are
fetched only while someone watched the page in the last `WATCH_S` seconds, so an unwatched
server pays nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import anyio

from legato.server.auth import Tenant
from legato.server.engine_stats import fetch_engine_stats
from legato.server.state import ServerState
from legato.server.ui.replicas import BusyWindow

log = logging.getLogger(__name__)

PERIOD_S = 1.0  # the page polls once a second
TENANTS_EVERY_S = 2.0  # tenants change only through `legato tenants add/remove`
WATCH_S = 30.0


@dataclass
class UiState:
    busy: BusyWindow = field(default_factory=BusyWindow)
    tenants: list[Tenant] | None = None
    engine_stats: list[object | None] | None = None
    watched_at: float = -1e9
    _tenants_at: float = -1e9

    async def refresh(self, state: ServerState, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or self.tenants is None or now - self._tenants_at >= TENANTS_EVERY_S:
            self.tenants = [Tenant.from_record(r) for r in await state.store.list_tenants()]
            self._tenants_at = now
        if force or self.engine_stats is None or now - self.watched_at < WATCH_S:
            self.engine_stats = await fetch_engine_stats(state.replicas)

    async def ensure(self, state: ServerState) -> None:
        """Called by each data request: note the watcher; wait only for the very first data."""
        self.watched_at = time.monotonic()
        if self.tenants is None or self.engine_stats is None:
            await self.refresh(state, force=True)

    async def run(self, state: ServerState) -> None:
        """The refresh loop (the app's background task group runs it)."""
        while True:
            try:
                await self.refresh(state)
            except Exception:  # a failed refresh keeps the previous data; the next one retries
                log.warning("operator page data refresh failed", exc_info=True)
            await anyio.sleep(PERIOD_S)

    def names(self) -> dict[str, str]:
        return {t.id: t.name for t in self.tenants or ()}


__all__ = ["UiState"]
