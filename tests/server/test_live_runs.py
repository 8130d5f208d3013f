"""`send_ready`: a live run's events fan out to its streams' mailboxes; a stream whose client
fell `listener_limit` events behind is ended (it resumes with Last-Event-ID), and one whose
client left is dropped, without disturbing the others."""

from __future__ import annotations

from legato.engine_adapter.mailbox import Mailbox
from legato.server.live_runs import LiveRun, send_ready
from legato.server.store.base import EventRecord, RunRecord


def _event(seq: int) -> EventRecord:
    return EventRecord(seq=seq, kind="token", node="n", data={"text": "x"}, at=0.0)


async def test_slow_and_gone_streams_are_ended_and_the_rest_get_every_event() -> None:
    record = RunRecord(id="run_1", tenant_id="t", program_id=None, program_name="p", spec={})
    live = LiveRun(record, listener_limit=2)
    fast, slow, gone = Mailbox[EventRecord](), Mailbox[EventRecord](), Mailbox[EventRecord]()
    live.listeners = [fast, slow, gone]
    gone.close()  # its client disconnected
    send_ready(live, [_event(0), _event(1)])
    assert live.listeners == [fast, slow]
    assert [await fast.get(), await fast.get()] == [_event(0), _event(1)]
    ready = [_event(2)]
    send_ready(live, ready)  # `slow` still holds 2 events: it is ended
    assert ready == [] and live.listeners == [fast] and slow.closed
    assert await fast.get() == _event(2)
    assert [e.seq for e in live.recent] == [0, 1, 2]
