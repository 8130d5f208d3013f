"""`PassthroughScheduler`: every LLM call goes straight to one engine, first come first served.

The default `CallScheduler` until the program-level scheduler lands: no policy, no queue of its
own (the engine batches), program events ignored. It still derives the prefix-cache salt from the
tenant the executor was told (server-authenticated), never from anything a client sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from legato.cache.block_hash import tenant_salt as _salt
from legato.engine_adapter.base import Engine, GenerateRequest, TokenChunk, Tokenizer
from legato.scheduler.events import LLMCall, ProgramEvent


class PassthroughScheduler:
    def __init__(self, engine: Engine, tenant_salt: str | None = None) -> None:
        """`tenant_salt`: a server secret. When set, each tenant's cache salt is
        HMAC(secret, tenant), so tenants never share prefix-cache blocks; when None, no salt
        (the embedded single-tenant default)."""
        self.engine = engine
        self._salt_key = tenant_salt
        self.calls = 0

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
        try:
            async for chunk in stream:
                yield chunk
        finally:  # cancelling the call closes the engine's stream, which aborts the request
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    def notify(self, event: ProgramEvent) -> None:
        """No policy, nothing to record."""
