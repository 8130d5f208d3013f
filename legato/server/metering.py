"""`MeteredScheduler`: counts each tenant's tokens for the tokens-per-minute quota.

It wraps the executor's `CallScheduler` (passthrough or policy scheduler) and forwards
everything; as a call's chunks stream back it records prompt tokens (once) and output tokens
against the call's tenant, which the executor set from the authenticated tenant, and the
replica that ran the call (`/metrics`: `legato_replica_calls`), and each live run's attained
service in tokens, prompt and output (`served`: what `/ui` shows per program; dropped when the
run finishes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from legato.engine_adapter.base import TokenChunk, Tokenizer
from legato.scheduler.base import CallScheduler
from legato.scheduler.events import LLMCall, ProgramEvent, RunFinished
from legato.server.auth import QuotaTracker


class MeteredScheduler:
    def __init__(self, inner: CallScheduler, quotas: QuotaTracker) -> None:
        self.inner = inner
        self.quotas = quotas
        # (tenant, kind, tokens) for /metrics' per-tenant service; kind: prompt, cached, completion
        self.meter: Callable[[str, str, int], None] | None = None
        self.on_placed: Callable[[int], None] | None = None  # a call reached this replica (/metrics)
        self.served: dict[str, int] = {}  # live run id -> tokens served (prompt + output)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.inner.tokenizer

    def cache_salt(self, tenant: str) -> str | None:
        fn = getattr(self.inner, "cache_salt", None)
        return fn(tenant) if fn is not None else None

    def notify(self, event: ProgramEvent) -> None:
        self.inner.notify(event)
        if isinstance(event, RunFinished):
            self.served.pop(event.run_id, None)

    def replica_of(self, call_id: str) -> int | None:
        """The replica a streaming call runs on (`PolicyScheduler.placed`); a scheduler without
        routing has one engine, replica 0."""
        placed = getattr(self.inner, "placed", None)
        return placed.get(call_id) if isinstance(placed, dict) else 0

    async def generate(self, call: LLMCall) -> AsyncIterator[TokenChunk]:
        self.quotas.record_tokens(call.tenant, len(call.prompt_token_ids))
        served = self.served
        served[call.run_id] = served.get(call.run_id, 0) + len(call.prompt_token_ids)
        meter = self.meter
        if meter is not None:
            meter(call.tenant, "prompt", len(call.prompt_token_ids))
        stream = self.inner.generate(call)
        try:
            cached_seen = placed = False
            async for chunk in stream:
                if not placed:
                    placed = True
                    replica = self.replica_of(call.call_id)
                    if self.on_placed is not None and replica is not None:
                        self.on_placed(replica)
                self.quotas.record_tokens(call.tenant, len(chunk.token_ids))
                if call.run_id in served:  # not when the run finished meanwhile
                    served[call.run_id] += len(chunk.token_ids)
                if meter is not None:
                    if chunk.cached_tokens and not cached_seen:  # engines repeat it on later chunks
                        cached_seen = True
                        meter(call.tenant, "cached", chunk.cached_tokens)
                    meter(call.tenant, "completion", len(chunk.token_ids))
                yield chunk
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
