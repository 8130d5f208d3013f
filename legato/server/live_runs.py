"""A run this instance drives, as its listeners see it: the in-memory record, the recent events
(replayed to clients reconnecting here) and the live streams; and how a batch of its events is
recorded and sent (`publish`), and gathered (`event_batch`)."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from legato.engine_adapter.mailbox import Mailbox
from legato.programs.events import RunEvent
from legato.server.store.base import EventRecord, RunRecord, RunStore

RECENT_EVENTS = 2048  # per live run, replayed (tokens included) to clients reconnecting in-process
EVENT_BATCH = 256  # events recorded in one store write at most


@dataclass
class LiveRun:
    record: RunRecord
    next_seq: int = 0
    listeners: list[Mailbox[EventRecord]] = field(default_factory=list)  # one per live stream
    # events queued for one stream; one this far behind is ended (`Limits.max_event_buffer`)
    listener_limit: int = field(kw_only=True)
    recent: collections.deque[EventRecord] = field(
        default_factory=lambda: collections.deque(maxlen=RECENT_EVENTS)
    )
    done: anyio.Event = field(default_factory=anyio.Event)


def event_batch(first: RunEvent, more: MemoryObjectReceiveStream[RunEvent]) -> list[RunEvent]:
    """`first` and whatever else the run has already published (up to `EVENT_BATCH`): the
    events a run emits while its recorder waits on the store are written in one round trip."""
    batch = [first]
    while len(batch) < EVENT_BATCH:
        try:
            batch.append(more.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            break
    return batch


async def publish(
    store: RunStore, live: LiveRun, stored: list[EventRecord], ready: list[EventRecord]
) -> None:
    """Write `stored`, then send `ready` to the run's listeners; empties both."""
    if stored:
        await store.append_events(live.record.id, stored)
        stored.clear()
    send_ready(live, ready)


def send_ready(live: LiveRun, ready: list[EventRecord]) -> None:
    """Send `ready` (already stored, or never stored: tokens) to the run's listeners; empties
    it. A listener `listener_limit` events behind is ended: its client resumes with
    Last-Event-ID."""
    for rec in ready:
        live.recent.append(rec)
        for listener in live.listeners:
            if len(listener) >= live.listener_limit or not listener.put(rec):
                listener.close()
                live.listeners = [other for other in live.listeners if other is not listener]
    ready.clear()
