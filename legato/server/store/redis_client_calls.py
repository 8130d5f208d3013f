"""Client tool calls shared by every `legato serve` instance on one Redis (`CallBoard`).

A run waiting on a client tool is driven by one instance (its lease holder), but its client may
post the result to any instance (a load balancer picks). Keys, per run: `calls:{run}` hash call
id -> the waiting call (JSON); `call_results:{run}` call id -> the submission (JSON);
`calls_done:{run}` call id -> how the wait ended (`submitted`, `timed out`). A submission is
checked and stored by one script (so two instances cannot both accept a result for one call),
then published on `call_results`: the instance whose run waits on it wakes the run (`deliver`).
A result posted while no instance waits (the run is moving between instances) is kept, and the
next wait of that call id (the same idempotency key) gets it at once; so does a step re-run after
a crash. Everything expires `KEEP_S` after the call's timeout.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any

import anyio
from redis.commands.core import AsyncScript

from legato.server.store.background import BackgroundLoop
from legato.tools.base import ToolResult
from legato.tools.client import (
    ClientToolBroker,
    DuplicateSubmissionError,
    PendingToolCall,
    Resolution,
    UnknownClientCallError,
    submitted_result,
)

log = logging.getLogger(__name__)

KEEP_S = 86_400  # a waiting call's records outlive its timeout by a day (then expire)
RECONNECT_S = 1.0  # the listener's pause before it subscribes again after losing Redis

# KEYS: calls, results, done; ARGV: call id, call JSON, ttl s. Returns a stored submission or nil.
_POSTED = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[1])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return redis.call('HGET', KEYS[2], ARGV[1])
"""

# KEYS: calls, results, done; ARGV: call id, submission JSON, channel, message, ttl s.
_SUBMIT = """
local done = redis.call('HGET', KEYS[3], ARGV[1])
if done then return {'resolved', done} end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {'resolved', 'submitted'} end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  local out = {'unknown'}
  for _, call in ipairs(redis.call('HKEYS', KEYS[1])) do
    if redis.call('HEXISTS', KEYS[2], call) == 0 then table.insert(out, call) end
  end
  return out
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return {'ok'}
"""

# KEYS: calls, results, done; ARGV: call id, resolution, ttl s. A wait that timed out gets a
# submission that beat it instead (returned); the submission itself is kept for a re-run.
_SETTLE = """
local result = redis.call('HGET', KEYS[2], ARGV[1])
if ARGV[2] == 'timed out' and result then return result end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[3])
return false
"""


class RedisCallBoard(BackgroundLoop):
    """The `CallBoard` on the Redis store; `async with` runs the listener that delivers
    results posted to other instances to this instance's waiting runs."""

    task_name = "client tool results"

    def __init__(self, store: Any, broker: ClientToolBroker | None = None) -> None:
        self.store = store  # a RedisRunStore (opened before this board is entered)
        self.broker = broker
        self._scripts: dict[str, AsyncScript] = {}

    @property
    def channel(self) -> str:
        return str(self.store.k("call_results"))

    def _keys(self, run_id: str) -> list[str]:
        k = self.store.k
        return [k("calls", run_id), k("call_results", run_id), k("calls_done", run_id)]

    async def _run(self, name: str, source: str, run_id: str, args: list[Any]) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.store.r.register_script(source)
        with anyio.fail_after(10):
            return await script(keys=self._keys(run_id), args=args)

    # -- CallBoard (the waiting side) ----------------------------------------------------------
    async def posted(self, call: PendingToolCall) -> ToolResult | None:
        ttl = int(call.timeout_s) + KEEP_S
        raw = await self._run("posted", _POSTED, call.run_id, [call.call_id, json.dumps(asdict(call)), ttl])
        return _result(call.call_id, raw)

    async def settle(self, run_id: str, call_id: str, resolution: Resolution) -> ToolResult | None:
        raw = await self._run("settle", _SETTLE, run_id, [call_id, resolution, KEEP_S])
        return _result(call_id, raw)

    # -- the submitting side (any instance) ----------------------------------------------------
    async def submit(self, run_id: str, call_id: str, output: Any, error: str | None) -> None:
        """Accept a result for a call waiting on any instance; raises as `ClientToolBroker.submit`."""
        submitted_result(call_id, output, error)  # ValueError for output that is not JSON data
        payload = json.dumps({"output": output, "error": error})
        message = json.dumps({"run": run_id, "call": call_id, "submission": payload})
        args = [call_id, payload, self.channel, message, KEEP_S]
        answer = [str(x) for x in await self._run("submit", _SUBMIT, run_id, args)]
        if answer[0] == "ok":
            if self.broker is not None:  # the run waits here: no need to hear it back
                self.broker.deliver(run_id, call_id, _submission(call_id, payload))
            return
        if answer[0] == "resolved":
            if answer[1] == "submitted":
                raise DuplicateSubmissionError(f"run {run_id!r}: call {call_id!r} already has a result")
            raise DuplicateSubmissionError(
                f"run {run_id!r}: call {call_id!r} {answer[1]} before this result arrived"
            )
        pending = sorted(answer[1:])
        if not pending:
            raise UnknownClientCallError(f"run {run_id!r} is not waiting for any client tool")
        raise UnknownClientCallError(
            f"run {run_id!r} has no pending call {call_id!r}; pending: {', '.join(pending)}"
        )

    async def pending(self, run_id: str) -> list[PendingToolCall]:
        """The run's calls waiting for a result, whichever instance drives it."""
        keys = self._keys(run_id)
        with anyio.fail_after(10):
            async with self.store.r.pipeline(transaction=True) as pipe:
                pipe.hvals(keys[0])
                pipe.hkeys(keys[1])
                calls, answered = await pipe.execute()
        found = [PendingToolCall(**json.loads(raw)) for raw in calls]
        return sorted((c for c in found if c.call_id not in set(answered)), key=lambda c: c.call_id)

    # -- the listener --------------------------------------------------------------------------

    async def _background(self) -> None:
        while True:
            try:
                async with self.store.r.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._delivered(str(message["data"]))
            except Exception:  # Redis went away: subscribe again (waits re-check on their next post)
                log.warning("client tool results: listener lost Redis; resubscribing", exc_info=True)
            await anyio.sleep(RECONNECT_S)

    def _delivered(self, message: str) -> None:
        if self.broker is None:
            return
        try:
            m = json.loads(message)
            self.broker.deliver(m["run"], m["call"], _submission(m["call"], m["submission"]))
        except (ValueError, KeyError, TypeError):
            log.warning("client tool results: ignoring a malformed message %r", message[:200])


def _submission(call_id: str, payload: str) -> ToolResult:
    data = json.loads(payload)
    return submitted_result(call_id, data.get("output"), data.get("error"))


def _result(call_id: str, raw: Any) -> ToolResult | None:
    return _submission(call_id, str(raw)) if raw else None
