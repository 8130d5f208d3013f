"""`PassthroughScheduler`: every LLM call goes straight to one engine, first come first served.

The default `CallScheduler` until the program-level scheduler lands: no policy, no queue of its
own (the engine batches), program events ignored. It still derives the prefix-cache salt from the
tenant the executor was told (server-authenticated), never from anything a client sent.

It reports what it can see, under the same names as `PolicyScheduler` (so `/metrics` and `/ui`
read both alike): calls waiting in the engine for their first token and calls producing tokens
(`waiting` / `running`, one replica), no calls held by a policy (`pending` stays empty), the
engine's busy time (`busy`), each run's calls in flight (`in_flight`) and the live runs it was
told about (`runs`; never paused: there is no policy to pause them).
"""

from __future__ import annotations

import collections
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from legato.cache.block_hash import tenant_salt as _salt
from legato.engine_adapter.base import Engine, GenerateRequest, TokenChunk, Tokenizer
from legato.scheduler.accounting import BusyClock
from legato.scheduler.events import LLMCall, ProgramEvent, RunFinished, RunStarted


@dataclass(slots=True)
class LiveRun:
    tenant: str
    paused: bool = False  # what `PolicyScheduler.runs` reports; a passthrough never pauses


class PassthroughScheduler:
    def __init__(self, engine: Engine, tenant_salt: str | None = None) -> None:
        """`tenant_salt`: a server secret. When set, each tenant's cache salt is
        HMAC(secret, tenant), so tenants never share prefix-cache blocks; when None, no salt
        (the embedded single-tenant default)."""
        self.engine = engine
        self._salt_key = tenant_salt
        self.calls = 0
        self.running = [0]
        self.waiting = [0]
        self.pending: dict[str, Any] = {}  # no policy holds calls here
        self.busy = BusyClock(1, time.monotonic)
        self.in_flight: collections.Counter[str] = collections.Counter()  # run id -> calls
        self.runs: dict[str, LiveRun] = {}

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    def cache_salt(self, tenant: str) -> str | None:
        return None if self._salt_key is None else _salt(tenant, self._salt_key)

    async def generate(self, call: LLMCall) -> AsyncIterator[TokenChunk]:
        self.calls += 1
        request = GenerateRequest(
            request_id=call.call_id,
            prompt_token_ids=call.prompt_token_ids,
            sampling=call.sampling,
            cache_salt=self.cache_salt(call.tenant),
            session_id=call.run_id,
        )
        stream = self.engine.generate(request)
        started = False
        self.waiting[0] += 1
        self.in_flight[call.run_id] += 1
        self.busy.start(0)
        try:
            async for chunk in stream:
                if not started:
                    started = True
                    self.waiting[0] -= 1
                    self.running[0] += 1
                yield chunk
        finally:  # cancelling the call closes the engine's stream, which aborts the request
            if started:
                self.running[0] -= 1
            else:
                self.waiting[0] -= 1
            self.busy.end(0)
            self.in_flight[call.run_id] -= 1
            if self.in_flight[call.run_id] <= 0:
                del self.in_flight[call.run_id]
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    def notify(self, event: ProgramEvent) -> None:
        """No policy: only which runs are live is recorded."""
        if isinstance(event, RunStarted):
            self.runs[event.run_id] = LiveRun(event.tenant)
        elif isinstance(event, RunFinished):
            self.runs.pop(event.run_id, None)
