"""Run leases and fencing tokens on Redis: several `legato serve` instances share one store.

Each run in flight is owned by one instance. Keys: `lease:{run}` holds `<instance>:<token>` and
expires after `lease_s` unless the owner renews it (a heartbeat every `lease_s / 3`);
`fence:{run}` holds the run's latest fencing token, incremented by every claim. Claiming succeeds
only while no lease exists (a new run, a finished one's owner released it, or the owner died and
its lease expired), atomically with the increment (a Lua script).

Fencing: every write an owner makes for a run (record, journal step, event) runs in a Lua script
that first compares `fence:{run}` with the token the writer claimed. An instance that lost its
lease (it paused past expiry, or was cut off from Redis) and still holds an old token is refused
(`StaleOwnerError`) once another instance has claimed the run: a stale owner cannot write.
A record that is finished is never overwritten (no finished status ever flips).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis.commands.core import AsyncScript

if TYPE_CHECKING:
    from redis.asyncio import Redis

_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
return token
"""

_RENEW = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_FENCE = "if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end\n"

# KEYS: fence, run, unfinished set, the tenant's active set; ARGV: token, record JSON, run id,
# finished (1/0)
_SAVE_RUN = (
    _FENCE
    + """
local current = redis.call('GET', KEYS[2])
if current then
  local status = cjson.decode(current)['status']
  if status == 'succeeded' or status == 'failed' or status == 'cancelled' or status == 'interrupted' then
    return -1
  end
end
redis.call('SET', KEYS[2], ARGV[2])
if ARGV[4] == '1' then
  redis.call('SREM', KEYS[3], ARGV[3])
  redis.call('SREM', KEYS[4], ARGV[3])
else
  redis.call('SADD', KEYS[3], ARGV[3])
end
return 1
"""
)

# KEYS: fence, journal list; ARGV: token, step JSON
_APPEND_STEP = _FENCE + "redis.call('RPUSH', KEYS[2], ARGV[2])\nreturn 1\n"

# KEYS: fence, events zset; ARGV: token, then seq, event JSON for each event
_APPEND_EVENTS = _FENCE + "redis.call('ZADD', KEYS[2], unpack(ARGV, 2))\nreturn 1\n"


LOST = "lost"
RELEASED = "released"  # given up by this instance (the run finished or stopped here)


# A new run: the tenant's concurrent-runs quota across every instance (a set of its unfinished
# runs), the run's lease and its record, atomically. KEYS: the tenant's active set, lease, fence,
# seq counter, run, the tenant's runs, unfinished set; ARGV: run id, limit, instance, lease ms,
# the record's JSON up to its seq value. Returns {fencing token, seq}, or {0, 0} at the limit.
_START = """
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return {0, 0} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {-1, 0} end
redis.call('SADD', KEYS[1], ARGV[1])
local token = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[2], ARGV[3] .. ':' .. token, 'PX', ARGV[4])
local seq = redis.call('INCR', KEYS[4])
redis.call('SET', KEYS[5], ARGV[5] .. seq .. '}')
redis.call('ZADD', KEYS[6], seq, ARGV[1])
redis.call('SADD', KEYS[7], ARGV[1])
return {token, seq}
"""


class StaleOwnerError(RuntimeError):
    """This instance no longer owns the run (another claimed it): the write was refused."""


class RedisLeases:
    """The leases this instance holds, and the fenced scripts its writes go through."""

    def __init__(self, redis: Redis, key: Any, instance: str, lease_s: float) -> None:
        self.key = key  # the store's key builder
        self.instance = instance
        self.lease_s = lease_s
        # run id -> fencing token of the runs this instance claimed; LOST once a renewal or a
        # write was refused (it matches no fence, so every later write is refused too)
        self.tokens: dict[str, str] = {}
        self._claim: AsyncScript = redis.register_script(_CLAIM)  # type: ignore[assignment]
        self._renew: AsyncScript = redis.register_script(_RENEW)  # type: ignore[assignment]
        self._release: AsyncScript = redis.register_script(_RELEASE)  # type: ignore[assignment]
        self._start: AsyncScript = redis.register_script(_START)  # type: ignore[assignment]
        self.save_run: AsyncScript = redis.register_script(_SAVE_RUN)  # type: ignore[assignment]
        self.append_step: AsyncScript = redis.register_script(_APPEND_STEP)  # type: ignore[assignment]
        self.append_events: AsyncScript = redis.register_script(_APPEND_EVENTS)  # type: ignore[assignment]

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.lease_s * 1000))

    def _value(self, run_id: str) -> str:
        return f"{self.instance}:{self.tokens[run_id]}"

    async def claim(self, run_id: str) -> bool:
        token = await self._claim(
            keys=[self.key("lease", run_id), self.key("fence", run_id)], args=[self.instance, self.ttl_ms]
        )
        if not token:
            return False
        self.tokens[run_id] = str(token)
        return True

    async def start(self, run_id: str, keys: list[str], args: list[str | int]) -> int | None:
        """Run `_START` for a new run (args: limit, record JSON head); its seq, None at the limit."""
        limit, head = args
        token, seq = await self._start(keys=keys, args=[run_id, limit, self.instance, self.ttl_ms, head])
        if int(token) == -1:
            raise RuntimeError(f"run {run_id}: a new run's id is already leased")
        if not token:
            return None
        self.tokens[run_id] = str(token)
        return int(seq)

    async def renew(self, run_ids: list[str]) -> list[str]:
        """Extend the leases of `run_ids`; returns those this instance lost (not those it
        released meanwhile: a run that just finished is not a lost one)."""
        owned = [r for r in run_ids if self.owns(r)]
        lost = [r for r in run_ids if self.tokens.get(r) == LOST]
        if owned:
            sent = {r: self.tokens[r] for r in owned}
            keys = [self.key("lease", r) for r in owned]
            held = await self._renew(keys=keys, args=[self.ttl_ms, *(self._value(r) for r in owned)])
            for run_id, ok in zip(owned, held, strict=True):
                if not ok and self.tokens.get(run_id) == sent[run_id]:  # not released meanwhile
                    self.tokens[run_id] = LOST
                    lost.append(run_id)
        return lost

    async def release(self, run_id: str) -> None:
        if self.owns(run_id):
            value = self._value(run_id)
            self.tokens[run_id] = RELEASED  # its task may still be unwinding: no more writes
            await self._release(keys=[self.key("lease", run_id)], args=[value])
        self.tokens.pop(run_id, None)

    def owns(self, run_id: str) -> bool:
        return self.tokens.get(run_id, LOST) not in (LOST, RELEASED)

    def token(self, run_id: str) -> str:
        """The fencing token of a claimed run (LOST once lost); '' (unfenced) for runs this
        instance never claimed (e.g. cancelling a run another instance drives)."""
        return self.tokens.get(run_id, "")

    def refused(self, run_id: str, what: str) -> StaleOwnerError:
        self.tokens[run_id] = LOST
        return StaleOwnerError(f"run {run_id}: {what} refused, another instance owns the run now")
