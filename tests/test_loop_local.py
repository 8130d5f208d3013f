"""`PerLoop` gives each event loop its own instance, and the same one within a loop."""

from __future__ import annotations

import threading

import anyio

from legato.loop_local import PerLoop


def test_each_loop_gets_its_own_instance() -> None:
    per_loop = PerLoop(object)

    async def twice() -> tuple[object, object]:
        return per_loop.get(), per_loop.get()

    first, again = anyio.run(twice)
    assert first is again
    other: list[tuple[object, object]] = []
    thread = threading.Thread(target=lambda: other.append(anyio.run(twice)))
    thread.start()
    thread.join(10)
    assert other and other[0][0] is other[0][1] and other[0][0] is not first
