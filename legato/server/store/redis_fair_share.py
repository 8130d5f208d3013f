"""Tenants' fair-share counters shared by every instance on one Redis (`RedisFairShare`).

The weighted fair-share policy (`legato.scheduler.fair_share.FairShare`, `--policy legato`)
orders a tenant's programs by its counters of service per weight. Counted per instance, a
tenant served on one instance would still come first on another, and its weighted share would
hold per instance only. Here both counters (committed and delivered service, two `Tally`s)
live in Redis hashes `fair:{counter}` (tenant -> value): every `SYNC_S` (`ExchangeLoop`) an
instance pushes what it changed, as one `(add, floor)` op per tenant that a script applies to the
shared value (`Tally` explains why that composes), and adopts every tenant's shared value back.
A tenant's service anywhere counts everywhere at most ~`SYNC_S` late. Which tenants are *active*
(the floor a returning tenant is lifted to) stays per instance: it is the set whose programs
this instance orders.
"""

from __future__ import annotations

from typing import Any

import anyio

from legato.scheduler.fair_share import FairShare
from legato.scheduler.tally import NO_FLOOR, Op, Tally
from legato.server.store.background import ExchangeLoop

# KEYS: one hash per counter; ARGV: per hash, the number of ops n, then n x (tenant, add,
# floor or "none"). Applies each op (c -> max(c + add, floor)) and returns each hash in full.
_EXCHANGE = """
local at = 1
local out = {}
for k = 1, #KEYS do
  local n = tonumber(ARGV[at]); at = at + 1
  for _ = 1, n do
    local tenant, add, floor = ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 2]
    at = at + 3
    local c = (tonumber(redis.call('HGET', KEYS[k], tenant)) or 0) + add
    if floor ~= 'none' and tonumber(floor) > c then c = tonumber(floor) end
    redis.call('HSET', KEYS[k], tenant, string.format('%.17g', c))
  end
  table.insert(out, redis.call('HGETALL', KEYS[k]))
end
return out
"""


def _args(ops: dict[str, Op]) -> list[Any]:
    out: list[Any] = [len(ops)]
    for tenant, (add, floor) in ops.items():
        out += [tenant, repr(add), "none" if floor == NO_FLOOR else repr(floor)]
    return out


class RedisFairShare(ExchangeLoop):
    """`async with`: exchanges this instance's fair-share counters with the others."""

    task_name = "fair-share counters"

    def __init__(self, store: Any, fair: FairShare) -> None:
        self.store = store  # a RedisRunStore (opened before this is entered)
        self.tallies: dict[str, Tally] = {"counters": fair.counters, "served": fair.served}
        for tally in self.tallies.values():
            tally.shared = True
        self._script: Any = None

    async def exchange(self) -> None:
        if self._script is None:
            self._script = self.store.r.register_script(_EXCHANGE)
        ops = {name: tally.take() for name, tally in self.tallies.items()}
        keys = [self.store.k("fair", name) for name in self.tallies]
        args = [a for name in self.tallies for a in _args(ops[name])]
        try:
            with anyio.fail_after(10):
                out = await self._script(keys=keys, args=args)
        except BaseException:
            for name, tally in self.tallies.items():
                tally.push_failed(ops[name])
            raise
        for tally, flat in zip(self.tallies.values(), out, strict=True):
            tally.adopt({str(t): float(v) for t, v in zip(flat[::2], flat[1::2], strict=True)})


__all__ = ["RedisFairShare"]
