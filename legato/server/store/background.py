"""A Redis-backed helper that keeps one background task running while it is open.

The shared client-tool board and the shared token-usage counters each listen to or poll Redis
for as long as the server runs; both are async context managers that start that task on entry
and cancel it on exit. This is that lifecycle, once.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup


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
