"""Pause, weight update and resume on the torch engine (the RL control plane), as a mixin of
`TorchEngine` that runs everything on its worker thread between steps.

Pause modes (SkyRL's / vLLM's names):
* `keep`: running requests freeze where they are (KV kept) and continue on resume; tokens they
  produce after an update carry the new version (every chunk is stamped with the version of the
  step that made it).
* `abort`: running requests end now with finish reason `abort` and their partial tokens; their
  blocks are released (only fully computed blocks were ever registered in the prefix cache).
* `wait`: running requests finish; the pause returns once none is left.
In every mode a request that arrives while paused is held and starts on resume.

An update is applied between two steps, so a step never mixes weights. Without a pause first,
an update pauses in `wait` mode itself, so no response mixes two versions. After it, the prefix
cache identity moves to the new version (`next_fingerprint`): KV of old weights is never reused.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from legato.engine_adapter.base import EngineError
from legato.engine_adapter.torch.weight_sync import (
    WeightUpdate,
    WeightUpdateError,
    check_update,
    load_in_place,
    next_fingerprint,
)

if TYPE_CHECKING:
    import threading

    import torch

    from legato.engine_adapter.torch.core import EngineCore
    from legato.engine_adapter.torch.outputs import RequestOutput

T = TypeVar("T")
_DRAIN_POLL_S = 0.01  # how often pause(wait) looks whether the running requests are done


class PauseMode(enum.StrEnum):
    KEEP = "keep"
    ABORT = "abort"
    WAIT = "wait"


class WeightControl:
    """Mixin for `TorchEngine`: `pause`, `resume`, `update_weights`, `reset_prefix_cache`."""

    core: EngineCore
    _cv: threading.Condition

    def _init_weight_control(self) -> None:
        self.weight_version = "0"
        self.weight_updates = 0
        self._pause: PauseMode | None = None
        self._held: list[Callable[[], None]] = []
        self._cache_epoch = 0

    async def _call(self, fn: Callable[[], T]) -> T:
        raise NotImplementedError

    def _deliver(self, out: RequestOutput) -> None:
        raise NotImplementedError

    @property
    def paused(self) -> str | None:
        return None if self._pause is None else self._pause.value

    def _frozen(self) -> bool:
        """The worker must not step (paused in `keep` or `abort` mode, or drained)."""
        return self._pause is not None and self._pause is not PauseMode.WAIT

    def _hold_if_paused(self, add: Callable[[], None]) -> bool:
        """Worker thread: keep a request that arrives during a pause for `resume`."""
        if self._pause is None:
            return False
        self._held.append(add)
        return True

    async def pause(self, mode: str = "keep") -> int:
        """Pause generation; returns how many requests were aborted (mode `abort`)."""
        try:
            how = PauseMode(mode)
        except ValueError:
            raise EngineError(f"pause mode must be keep, abort or wait; got {mode!r}") from None

        def start() -> int:
            if how is not PauseMode.ABORT:
                if self._pause is None:
                    self._pause = how
                return 0
            self._pause = PauseMode.ABORT
            aborted = 0
            for rid in self.core.active_request_ids():
                out = self.core.abort_request(rid)
                if out is not None:
                    aborted += 1
                    self._deliver(out)
            return aborted

        aborted = await self._call(start)
        if self._pause is PauseMode.WAIT:
            # the worker thread owns the request state: ask it, between steps, until drained
            while await self._call(self.core.has_unfinished):  # noqa: ASYNC110
                await anyio.sleep(_DRAIN_POLL_S)
            await self._call(lambda: setattr(self, "_pause", PauseMode.KEEP))
        return aborted

    async def resume(self) -> int:
        """Resume; returns how many held requests were started."""

        def run() -> int:
            self._pause = None
            held, self._held = self._held, []
            for add in held:
                add()
            return len(held)

        started = await self._call(run)
        with self._cv:
            self._cv.notify()
        return started

    async def update_weights(self, tensors: dict[str, torch.Tensor], version: str | None = None) -> str:
        """Check and load new weights (all checks pass before any weight changes); returns the
        new weight version. Pauses in `wait` mode around the load unless already paused."""
        model = self.core.model
        update = await anyio.to_thread.run_sync(check_update, model, tensors, version)
        own_pause = self._pause is None
        if own_pause:
            await self.pause("wait")
        try:
            return await self._call(lambda: self._apply(update))
        finally:
            if own_pause:
                await self.resume()

    def _apply(self, update: WeightUpdate) -> str:
        if self._pause is PauseMode.WAIT:
            raise WeightUpdateError("a pause in wait mode is still draining", "mode")
        load_in_place(self.core.model, update)
        self.weight_updates += 1
        self.weight_version = update.version or str(self.weight_updates)
        self.core.fingerprint = next_fingerprint(
            self.core.fingerprint, self.weight_version, self._cache_epoch
        )
        return self.weight_version

    async def reset_prefix_cache(self) -> None:
        """Make every cached prefix unreachable (it ages out of the pool): running requests keep
        the blocks they hold."""

        def reset() -> None:
            self._cache_epoch += 1
            self.core.fingerprint = next_fingerprint(
                self.core.fingerprint, self.weight_version, self._cache_epoch
            )

        await self._call(reset)

    def control_state(self) -> dict[str, Any]:
        return {"paused": self.paused, "weight_version": self.weight_version, "held": len(self._held)}
