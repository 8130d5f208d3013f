"""`PerLoop`: one instance of an object per running event loop.

anyio's synchronisation primitives (capacity limiters, locks, events) wake a waiter through the
event loop it waits on, so one shared by two loops (a CLI or test thread calling into a server's
objects while the server's loop runs, two servers in one process) can leave a waiter on the other
loop asleep forever. Whatever must be shared across loops is guarded by a thread lock instead.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()

    def get(self) -> T:
        """This loop's instance, made on first use (a loop runs on one thread: no race)."""
        loop = asyncio.get_running_loop()
        item = self._by_loop.get(loop)
        if item is None:
            item = self._by_loop[loop] = self._factory()
        return item
