"""The mailbox that carries engine outputs: order, wake-ups, the stall watchdog, and
`receive_outputs` aborting a request its consumer left."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import anyio
import pytest

from legato.engine_adapter.base import EngineError
from legato.engine_adapter.mailbox import Mailbox, MailboxStalled
from legato.engine_adapter.worker import receive_outputs

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Out:
    n: int
    finished: bool = False


async def test_items_arrive_in_order_and_wake_a_waiting_consumer() -> None:
    box = Mailbox[int]()
    got: list[int] = []

    async def consume() -> None:
        for _ in range(3):
            got.append(await box.get())

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await anyio.sleep(0.01)
        for i in range(3):
            assert box.put(i)
    assert got == [0, 1, 2]


async def test_closed_box_drains_then_ends_and_refuses_puts() -> None:
    box = Mailbox[int]()
    box.put(1)
    box.close()
    assert not box.put(2)
    assert await box.get() == 1
    with pytest.raises(EOFError):
        await box.get()


async def test_watchdog_fails_a_wait_with_no_item_for_stall_s() -> None:
    box = Mailbox[int](stall_s=0.1)
    start = time.monotonic()
    with pytest.raises(MailboxStalled):
        await box.get()
    assert 0.09 <= time.monotonic() - start < 1.0
    box.close()


async def test_watchdog_counts_from_the_start_of_each_wait() -> None:
    box = Mailbox[int](stall_s=0.2)
    loop = asyncio.get_running_loop()
    for i in range(6):  # items every 0.1 s: 0.6 s in all, no stall
        loop.call_later(0.1 * (i + 1), box.put, i)
    assert [await box.get() for _ in range(6)] == list(range(6))
    await anyio.sleep(0.3)  # a busy consumer is not a stalled one
    loop.call_later(0.1, box.put, 7)
    assert await box.get() == 7
    box.close()


async def test_cancelling_the_consumer_leaves_the_box_usable() -> None:
    box = Mailbox[int]()
    with anyio.move_on_after(0.05):
        await box.get()
    box.put(5)
    assert await box.get() == 5


async def test_receive_outputs_raises_on_stall_and_aborts_the_request() -> None:
    aborted: list[str] = []
    box = Mailbox[Out | BaseException](stall_s=0.05)
    box.put(Out(0))
    outputs = receive_outputs(box, "r1", aborted.append)
    got = []
    with pytest.raises(EngineError, match=r"no output for 0\.05s"):
        async with contextlib.aclosing(outputs):
            async for out in outputs:
                got.append(out.n)
    assert got == [0] and aborted == ["r1"] and box.closed


async def test_receive_outputs_stops_at_finished_and_raises_sent_errors() -> None:
    aborted: list[str] = []
    box = Mailbox[Out | BaseException](stall_s=5)
    for item in (Out(0), Out(1, finished=True), Out(2)):
        box.put(item)
    outputs = receive_outputs(box, "r2", aborted.append)
    async with contextlib.aclosing(outputs):
        assert [o.n async for o in outputs] == [0, 1]
    assert aborted == []

    box = Mailbox[Out | BaseException](stall_s=5)
    box.put(EngineError("boom"))
    outputs = receive_outputs(box, "r3", aborted.append)
    with pytest.raises(EngineError, match="boom"):
        async with contextlib.aclosing(outputs):
            async for _ in outputs:
                pass
    assert aborted == []


async def test_receive_outputs_aborts_when_the_consumer_stops_early() -> None:
    aborted: list[str] = []
    box = Mailbox[Out | BaseException](stall_s=5)
    box.put(Out(0))
    box.put(Out(1))
    outputs = receive_outputs(box, "r4", aborted.append)
    async with contextlib.aclosing(outputs):
        async for _ in outputs:
            break
    assert aborted == ["r4"] and not box.put(Out(2))


async def test_a_stall_is_reported_once_and_the_next_get_waits_anew() -> None:
    """An SSE stream's keep-alive: stalled, send a comment, wait again for the next item."""
    box = Mailbox[int](stall_s=0.1)
    with pytest.raises(MailboxStalled):
        await box.get()
    with pytest.raises(MailboxStalled):  # a second quiet stretch is a second stall
        await box.get()
    asyncio.get_running_loop().call_later(0.05, box.put, 3)
    assert await box.get() == 3
    assert len(box) == 0
    box.put(4)
    assert len(box) == 1
    box.close()
