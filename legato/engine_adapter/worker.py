"""The lifecycle of an in-process engine's one worker thread, shared by the torch engine and the
real-time simulated engine (`legato.sim.realtime`).

An engine that steps a batch in a thread of its own starts that thread on first use (or
`async with`), wakes it through one condition variable, and on `close` tells it to stop, waits
for it off the event loop (bounded), and refuses new work afterwards. The worker's loop itself
(`_loop`) is the engine's: it must return soon after it sees `_stopping`.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, Callable
from typing import Protocol, Self, TypeVar

import anyio

from legato.engine_adapter.base import EngineError
from legato.engine_adapter.mailbox import Mailbox, MailboxStalled


class WorkerThread:
    """Mixin: `start`, `close`, `async with` and the shared `_cv` / `_stopping` / `_closed`
    state of an engine's worker thread. Subclasses call `_init_worker` and write `_loop`."""

    _cv: threading.Condition
    _thread: threading.Thread | None
    _stopping: bool
    _closed: bool

    def _init_worker(self, name: str, what: str, join_timeout_s: float) -> None:
        """`name`: the thread's name; `what`: the engine in error messages ("torch engine");
        `join_timeout_s`: how long `close` waits for the worker to stop."""
        self._cv = threading.Condition()
        self._thread = None
        self._stopping = False
        self._closed = False
        self._worker_name = name
        self._worker_what = what
        self._join_timeout_s = join_timeout_s

    def _loop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def check_open(self) -> None:
        if self._closed:
            raise EngineError(f"{self._worker_what} is closed")

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        self.check_open()
        with self._cv:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._worker_name, daemon=True)
                self._thread.start()

    async def close(self) -> None:
        """Stop the worker and wait for it (the engine's `_loop` fails what is in flight)."""
        if self._closed:
            return
        self._closed = True
        with self._cv:
            self._stopping = True
            self._cv.notify()
        thread = self._thread
        if thread is not None:
            with anyio.fail_after(self._join_timeout_s):
                await anyio.to_thread.run_sync(thread.join)
        await self._after_close()

    async def _after_close(self) -> None:
        """What the engine does once its worker has stopped (nothing by default)."""

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


class _Output(Protocol):
    @property
    def finished(self) -> bool: ...


_O = TypeVar("_O", bound=_Output)


async def receive_outputs(
    box: Mailbox[_O | BaseException],
    request_id: str,
    abandon: Callable[[str], None],
) -> AsyncGenerator[_O, None]:
    """One request's outputs from the worker thread (through `box`, whose watchdog bounds a
    wait), up to the one that finishes it. A stall is an `EngineError`; an exception the worker
    sent is raised here; a consumer that stops early gets the request aborted (`abandon`). Use
    it under `contextlib.aclosing`, so the abort happens when the consumer stops, not at
    collection."""
    finished = False
    try:
        while True:
            item = box.get_nowait()
            if item is None:
                try:
                    item = await box.get()
                except MailboxStalled as exc:
                    raise EngineError(f"request {request_id!r}: no output for {box.stall_s}s") from exc
            if isinstance(item, BaseException):
                finished = True
                raise item
            finished = item.finished
            yield item
            if finished:
                return
    finally:
        box.close()
        if not finished:
            abandon(request_id)


__all__ = ["WorkerThread", "receive_outputs"]
