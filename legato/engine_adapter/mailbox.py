"""`Mailbox`: one consumer's queue on an event loop, with a stall watchdog, for per-token traffic.

An engine request receives one item per generated token. An anyio memory stream costs a
checkpoint and, under a timeout, a cancel scope and a timer per item; at a few thousand tokens a
second those were a sizeable part of a server's CPU. A mailbox is a deque plus one future while
its consumer waits: `put` (on the loop's thread; engine threads hop with
`call_soon_threadsafe`) appends and wakes it. The stall timeout is one timer per mailbox that
re-arms itself from the start of the consumer's current wait (a
watchdog), not one per item. A stall is reported once: the next `get` waits anew (an SSE
stream sends a keep-alive and goes on). Cancelling the waiting task works as for any await.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Generic, TypeVar

T = TypeVar("T")


class MailboxStalled(Exception):
    """Nothing arrived for the watchdog's `stall_s` while the consumer waited."""


class Mailbox(Generic[T]):
    """A single-consumer FIFO on one event loop. `stall_s`: `get` raises `MailboxStalled`
    once nothing arrived for that long while it waits."""

    def __init__(self, stall_s: float | None = None) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._stall_s = stall_s
        self._watchdog: asyncio.TimerHandle | None = None
        self._wait_start = 0.0  # monotonic time the consumer began its current wait
        self._stalled = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        """Items queued and not yet taken."""
        return len(self._items)

    @property
    def stall_s(self) -> float | None:
        return self._stall_s

    def put(self, item: T) -> bool:
        """Queue `item` and wake the consumer; False (nothing queued) once closed."""
        if self._closed:
            return False
        self._items.append(item)
        self._wake()
        return True

    def close(self) -> None:
        """No more items: `get` returns what is queued, then raises `EOFError`. Idempotent."""
        self._closed = True
        self._wake()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def get_nowait(self) -> T | None:
        """The next item if one is queued (items are never None), else None."""
        return self._items.popleft() if self._items else None

    async def get(self) -> T:
        """The next item, waiting for it. `EOFError` once closed and empty; `MailboxStalled`
        when the watchdog fires."""
        while not self._items:
            if self._closed:
                raise EOFError
            if self._stalled:
                self._stalled = False  # reported once; a next `get` waits anew
                raise MailboxStalled
            loop = asyncio.get_running_loop()
            if self._stall_s is not None:
                self._wait_start = time.monotonic()
                if self._watchdog is None:
                    self._watchdog = loop.call_later(self._stall_s, self._check_stall)
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _check_stall(self) -> None:
        """The watchdog: fail a consumer that has waited `stall_s`, else re-arm for the end of
        the current (or next) wait."""
        assert self._stall_s is not None
        waited = time.monotonic() - self._wait_start
        if self._items or self._waiter is None or waited < self._stall_s:
            delay = self._stall_s - waited if self._waiter is not None and not self._items else self._stall_s
            self._watchdog = asyncio.get_running_loop().call_later(delay, self._check_stall)
            return
        self._watchdog = None
        self._stalled = True
        self._wake()


__all__ = ["Mailbox", "MailboxStalled"]
