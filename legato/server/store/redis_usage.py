"""Tenants' tokens per minute counted across every instance on one Redis (`RedisUsage`).

Every instance records its tokens locally (`QuotaTracker.record_tokens`, once per streamed chunk)
and, every `SYNC_S` (`ExchangeLoop`), pushes what it recorded into per-tenant per-second buckets
(`usage:{tenant}` hash second -> tokens, Redis's own clock, so instances' clocks may differ)
and reads back each tenant's last minute, which replaces its local window (`adopt`). One script
call per second per instance, whatever the load; a quota is enforced on every instance's tokens
at most ~`SYNC_S` late (a tenant can overshoot by what the instances serve in that second).
"""

from __future__ import annotations

from typing import Any, Protocol

import anyio

from legato.server.store.background import ExchangeLoop

WINDOW_S = 60  # QuotaTracker.WINDOW_S, in whole seconds of buckets

# KEYS: usage hash per pushed tenant, then per read tenant; ARGV: number pushed, the tokens of
# each pushed tenant, window s. Returns, per read tenant, {second, tokens, ...} and the time now.
_EXCHANGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local sec = tostring(math.floor(now))
local pushed = tonumber(ARGV[1])
for i = 1, pushed do
  redis.call('HINCRBY', KEYS[i], sec, ARGV[i + 1])
  redis.call('EXPIRE', KEYS[i], 2 * tonumber(ARGV[pushed + 2]))
end
local out = {tostring(now)}
local oldest = now - tonumber(ARGV[pushed + 2])
for i = pushed + 1, #KEYS do
  local flat = redis.call('HGETALL', KEYS[i])
  local keep = {}
  for j = 1, #flat, 2 do
    if tonumber(flat[j]) + 1 <= oldest then redis.call('HDEL', KEYS[i], flat[j])
    else table.insert(keep, flat[j]); table.insert(keep, flat[j + 1]) end
  end
  table.insert(out, keep)
end
return out
"""


class Usage(Protocol):
    """What is exchanged of `legato.server.auth.QuotaTracker` (a protocol: no import cycle)."""

    shared: bool

    def take_unpushed(self) -> tuple[dict[str, int], list[str]]: ...

    def push_failed(self, pushed: dict[str, int]) -> None: ...

    def adopt(self, tenant_id: str, buckets: list[tuple[float, int]]) -> None: ...


class RedisUsage(ExchangeLoop):
    """`async with`: exchanges this instance's token counts with the others every `SYNC_S`."""

    task_name = "token usage"

    def __init__(self, store: Any, quotas: Usage) -> None:
        self.store = store  # a RedisRunStore (opened before this is entered)
        self.quotas = quotas
        quotas.shared = True
        self._script: Any = None

    async def exchange(self) -> None:
        pushed, tenants = self.quotas.take_unpushed()
        if not tenants:
            return
        if self._script is None:
            self._script = self.store.r.register_script(_EXCHANGE)
        keys = [self.store.k("usage", t) for t in (*pushed, *tenants)]
        args = [len(pushed), *pushed.values(), WINDOW_S]
        try:
            with anyio.fail_after(10):
                out = await self._script(keys=keys, args=args)
        except BaseException:
            self.quotas.push_failed(pushed)
            raise
        now = float(out[0])
        for tenant, flat in zip(tenants, out[1:], strict=True):
            pairs = zip(flat[::2], flat[1::2], strict=True)
            self.quotas.adopt(tenant, [(now - float(sec), int(n)) for sec, n in pairs])
