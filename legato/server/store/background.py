"""A Redis-backed helper that keeps one background task running while it is open.

The shared client-tool board, the shared token-usage counters and the shared fair-share counters
each listen to or poll Redis for as long as the server runs; all are async context managers that
start that task on entry and cancel it on exit. This is that lifecycle, once; `ExchangeLoop` is
the polling kind (what this instance counted goes out, every instance's totals come back).
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup

log = logging.getLogger(__name__)

SYNC_S = 1.0  # how often counters are exchanged: how late another instance's counts may be


class BackgroundLoop:
    """Subclasses implement `_background` (a loop that never returns on its own) and name it."""

    task_name = "background loop"
    _tg: TaskGroup | None = None

    async def _background(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._background, name=self.task_name)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._tg is not None
        tg, self._tg = self._tg, None
        tg.cancel_scope.cancel()
        return await tg.__aexit__(exc_type, exc, tb)


class ExchangeLoop(BackgroundLoop):
    """Calls `exchange` every `SYNC_S` while open: one Redis round trip per second per
    instance, whatever the load. A failure (Redis briefly away) is logged; local counting goes
    on and the next exchange pushes it."""

    async def exchange(self) -> None:
        raise NotImplementedError

    async def _background(self) -> None:
        while True:
            await anyio.sleep(SYNC_S)
            try:
                await self.exchange()
            except Exception:
                log.warning("sharing %s failed; retrying", self.task_name, exc_info=True)
