"""`GET /v1/runs/{id}/events`: a run's events as server-sent events, resumable.

Each event is `id: <seq>` / `event: <kind>` / `data: <json>`; `seq` counts per run and survives
server restarts. Reconnect with `Last-Event-ID: <seq>` (or `?last_event_id=`) to get what came
after it: lifecycle events (node, tool, status, run events) are stored, so they are replayed from
the store even after a restart; `token` events are live only (replayed only while the same server
still holds them in memory). The stream ends after `run_finished`; a comment line is sent every
`sse_keepalive_s` while the run is quiet so proxies keep the connection open.

Several instances on one Redis: a run driven by another instance is followed through the store
(its stored events, polled every `STORE_POLL_S`; no `token` events), so any instance serves any
run's stream, and a stream whose run moved to another instance (its lease was lost) goes on.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from legato.engine_adapter.fields import I64_MAX
from legato.engine_adapter.mailbox import MailboxStalled
from legato.engine_adapter.server.strict_json import StrictJSONRoute
from legato.server.deps import StateDep, TenantDep
from legato.server.errors import ApiError, responses
from legato.server.routes_runs import RunId, tenant_run
from legato.server.state import ServerState
from legato.server.store.base import EventRecord

router = APIRouter(prefix="/v1/runs", tags=["runs"], route_class=StrictJSONRoute)

# How often a stream of a run driven by another instance reads the shared store. Events of one
# step arrive together (a step takes at least one store round trip); half a second keeps the
# stream live without loading the store: 2 reads per second per stream, plus a status read when
# a stream has been quiet for `STATUS_EVERY` polls.
STORE_POLL_S = 0.5
STATUS_EVERY = 4
# Live events already queued for a stream are sent in one write, at most this many: one write
# (and one socket send) per token was most of a streaming run's server CPU under load.
WRITE_BATCH = 64


def sse(event: EventRecord) -> bytes:
    payload = {"seq": event.seq, "kind": event.kind, "node": event.node, "data": event.data, "at": event.at}
    return f"id: {event.seq}\nevent: {event.kind}\ndata: {json.dumps(payload)}\n\n".encode()


def parse_last_id(header: str | None, query: int | None) -> int:
    if query is not None:
        return query
    if header is None or not header.strip():
        return -1
    text = header.strip()
    value = int(text) if re.fullmatch(r"-?[0-9]{1,19}", text) else None
    if value is None or not -1 <= value <= I64_MAX:
        raise ApiError(
            422,
            f"Last-Event-ID {header!r} is not an event id (-1 .. 2^63-1): send the `id:` of the last "
            "event you got",
            param="Last-Event-ID",
        )
    return value


async def event_stream(state: ServerState, run_id: str, after: int) -> AsyncIterator[bytes]:
    """History (memory or store), then live events, each once, in seq order."""
    keepalive = state.config.sse_keepalive_s
    recent, live = state.runs.listen(run_id, after, keepalive)
    last = after
    try:
        history = recent if recent is not None else await state.store.events(run_id, after)
        for event in history:
            if event.seq > last:
                last = event.seq
                yield sse(event)
                if event.kind == "run_finished":
                    return
        while live is not None:
            try:
                events = [await live.get()]
            except MailboxStalled:  # quiet for `keepalive`
                yield b": keepalive\n\n"
                continue
            except EOFError:  # run over (or this client fell behind: it resumes with
                break  # Last-Event-ID), or, on a shared store, driven elsewhere now
            while len(events) < WRITE_BATCH and (queued := live.get_nowait()) is not None:
                events.append(queued)  # what is already queued goes out in one write
            chunks = []
            for event in events:
                if event.seq > last:
                    last = event.seq
                    chunks.append(sse(event))
                    if event.kind == "run_finished":
                        yield b"".join(chunks)
                        return
            if chunks:
                yield b"".join(chunks)
        if state.store.lease_s is not None:  # shared store: another instance may drive the run
            async for chunk in _follow_store(state, run_id, last, keepalive):
                yield chunk
    finally:
        if live is not None:
            live.close()


async def _follow_store(state: ServerState, run_id: str, last: int, keepalive: float) -> AsyncIterator[bytes]:
    quiet, polls = 0.0, 0
    while True:
        polls += 1
        events = await state.store.events(run_id, last)
        for event in events:
            last = event.seq
            yield sse(event)
            if event.kind == "run_finished":
                return
        if not events:
            if polls % STATUS_EVERY == 0:
                record = await state.store.get_run(run_id)
                if record is None or (record.finished and not await state.store.events(run_id, last)):
                    return
            quiet += STORE_POLL_S
            if quiet >= keepalive:
                quiet = 0.0
                yield b": keepalive\n\n"
        else:
            quiet = 0.0
        await anyio.sleep(STORE_POLL_S)


@router.get(
    "/{run_id}/events",
    summary="Stream a run's events (SSE)",
    response_class=StreamingResponse,
    responses={
        200: {"description": "`text/event-stream` of run events", "content": {"text/event-stream": {}}},
        **responses(),
    },
)
async def run_events(
    run_id: RunId,
    tenant: TenantDep,
    state: StateDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
    after: Annotated[
        int | None,
        Query(alias="last_event_id", ge=-1, lt=I64_MAX + 1, description="same as the Last-Event-ID header"),
    ] = None,
) -> StreamingResponse:
    await tenant_run(state, tenant, run_id)
    start = parse_last_id(last_event_id, after)
    return StreamingResponse(
        event_stream(state, run_id, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
