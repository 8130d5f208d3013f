"""The runtime's cache operations on real engines: pins, the bridge pin, next-use hints, prefetch.

- A policy's `Pin(run, ttl)` becomes `PinnableEngine.pin` of the run's last sequence (prompt +
  output of its latest call) on the replica that ran it. A pin is replaced, never stacked: the
  new one is pinned before the old one is unpinned, so the shared prefix is never unpinned in
  between; a pin answer that arrives after the run was re-pinned, unpinned or finished unpins
  itself.
- The *bridge pin* (`PinKeeper.bridge`): when the call finishes the engine frees its blocks at
  once, and its next step may evict them (a queued request is admitted in that very step)
  before the policy's Pin or NextUse for the finished call can arrive: one event-loop turn is
  slower than one engine step. So once a policy has shown it manages the cache (it sent a Pin
  or NextUse), every admitted call of a run gets a pin on its prompt, which costs nothing while
  the call runs (the request references the same blocks) and holds the prompt's blocks from
  the finish until the policy has answered the run's next event (its `Pin` replaces the bridge;
  otherwise the bridge is dropped then, or at `Pause` / `Unpin` / run end, or by the engine at
  `bridge_ttl_s`). Policies that never pin nor hint (`fcfs-lru`) get no bridge, so the
  baselines are unchanged. **Limit**: the bridge covers the prompt's blocks; output blocks are
  kept only by the policy's own Pin, which reaches the engine an event-loop turn after the
  finish.
- `NextUse(run, at_s)` becomes `EvictionHintEngine.set_next_use` of the run's last sequence.
- `Prefetch(run, replica)` becomes `PrefetchEngine.prefetch` on engines with KV tiers; others
  ignore it (`stats["prefetches_ignored"]`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

from legato.engine_adapter.base import Capability, EvictionHintEngine, PinnableEngine, PrefetchEngine
from legato.scheduler.engine_ops import EngineOps
from legato.scheduler.runtime_state import RunState, SchedulerState


class PinKeeper:
    """Pins, bridge pins, hints and prefetches of one scheduler (see the module docstring)."""

    def __init__(self, state: SchedulerState, ops: EngineOps, bridge_ttl_s: float) -> None:
        self._s = state
        self._ops = ops
        self.bridge_ttl_s = bridge_ttl_s
        self.cache_aware = False  # the policy has sent a Pin or NextUse: bridge its runs' KV

    def pin(self, run: RunState, ttl_s: float) -> None:
        """The policy's pin of the run's last sequence."""
        if run.replica is None or not run.last_seq or not ttl_s > 0:
            return
        if Capability.PIN not in self._s.engines[run.replica].capabilities:
            return
        self._s.stats["pins"] += 1
        self._replace(run, run.replica, run.last_seq, ttl_s, bridge=False)

    def bridge(self, run: RunState, replica: int, prompt: Sequence[int]) -> None:
        """A call of `run` was admitted on `replica`: the run's pin goes, and for a policy that
        manages the cache a bridge pin on the call's prompt takes its place."""
        if not self.cache_aware or not prompt or Capability.PIN not in self._s.engines[replica].capabilities:
            self.drop(run)
            return
        self._s.stats["bridge_pins"] += 1
        self._replace(run, replica, tuple(prompt), self.bridge_ttl_s, bridge=True)

    def _replace(
        self, run: RunState, replica: int, tokens: tuple[int, ...], ttl_s: float, *, bridge: bool
    ) -> None:
        """Pin `tokens`, then unpin the run's previous pin (in that order)."""
        old, run.pin = run.pin, None
        run.pin_gen += 1  # a pin still on its way is now stale: it unpins itself on arrival
        run.bridge = bridge
        gen = run.pin_gen
        salt = self._s.cache_salt(run.tenant)
        pinnable = cast(PinnableEngine, self._s.engines[replica])
        runs = self._s.runs

        async def pin() -> None:
            pin_id = await pinnable.pin(tokens, salt, ttl_s)
            if run.pin_gen == gen and runs.get(run.run_id) is run:
                run.pin = (replica, pin_id)
            else:  # replaced, unpinned or finished while the pin was on its way
                await pinnable.unpin(pin_id)

        self._ops.cache_op(pin)
        if old is not None:
            self._unpin(*old)

    def drop(self, run: RunState) -> None:
        """Unpin whatever the run holds (the policy's pin or the bridge)."""
        run.pin_gen += 1
        run.bridge = False
        pin, run.pin = run.pin, None
        if pin is not None:
            self._unpin(*pin)

    def _unpin(self, replica: int, pin_id: str) -> None:
        pinnable = cast(PinnableEngine, self._s.engines[replica])
        self._s.stats["unpins"] += 1

        async def unpin() -> None:
            await pinnable.unpin(pin_id)

        self._ops.cache_op(unpin)

    def hint(self, run: RunState, at_s: float) -> None:
        """The run's KV is next needed at `at_s` (absolute; `math.inf`: never)."""
        if run.replica is None or not run.last_seq:
            return
        engine = self._s.engines[run.replica]
        if Capability.EVICTION_HINTS not in engine.capabilities:
            return
        hinted = cast(EvictionHintEngine, engine)
        tokens, salt, clock = run.last_seq, self._s.cache_salt(run.tenant), self._s.clock
        self._s.stats["next_use_hints"] += 1

        async def hint() -> None:
            delay = at_s if math.isinf(at_s) else max(0.0, at_s - clock())
            await hinted.set_next_use(tokens, salt, delay)

        self._ops.cache_op(hint)

    def prefetch(self, run: RunState | None, replica: int) -> None:
        engine = self._s.engines[replica]
        if run is None or not run.last_seq or Capability.PREFETCH not in engine.capabilities:
            self._s.stats["prefetches_ignored"] += 1
            return
        self._s.stats["prefetches"] += 1
        tiered = cast(PrefetchEngine, engine)
        tokens, salt = run.last_seq, self._s.cache_salt(run.tenant)

        async def prefetch() -> None:
            await tiered.prefetch(tokens, salt, 0.0)

        self._ops.cache_op(prefetch)


__all__ = ["PinKeeper"]
