"""The one entry point the executor uses to run a tool step.

`ToolRuntime.call` turns every way a tool can fail (bad arguments, exception, timeout, kill, limit,
environment setup failure) into a `ToolResult` with a readable error, so the program's error route
decides what happens next. Only two things escape: `UnknownToolError` (a program bug the validator
should have caught) and cancellation of the calling task (after the tool's processes are killed).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import anyio

from legato.tools import reaper
from legato.tools.base import BadToolArgsError, ToolContext, ToolResult
from legato.tools.client import ClientToolBroker
from legato.tools.env import EnvironmentManager, EnvironmentReleasedError, ToolEnvironmentError
from legato.tools.registry import ToolRegistry, default_registry
from legato.tools.stats import ToolLatencyStats

log = logging.getLogger("legato.tools")

# Durations of these outcomes say nothing about how long the tool takes.
_UNMEASURED = frozenset({"bad_args", "cancelled"})
# How many released run ids are remembered, so a straggling call cannot resurrect a released run's
# environment (which nobody would release again).
_MAX_RELEASED = 100_000


class ToolRuntime:
    """Runs registered tools for program runs, in per-run environments, recording latencies.

    Use as ``async with ToolRuntime(registry) as tools:`` so environments are prepared in the
    background; without it, environments are prepared on first use. `aclose()` (or leaving the
    block) releases every run's environment and client-tool waiters.
    """

    def __init__(
        self,
        registry: ToolRegistry | None = None,
        *,
        envs: EnvironmentManager | None = None,
        stats: ToolLatencyStats | None = None,
        client: ClientToolBroker | None = None,
    ) -> None:
        self._registry = registry if registry is not None else default_registry
        self._owns_envs = envs is None
        self._envs = envs if envs is not None else EnvironmentManager()
        self._stats = stats if stats is not None else ToolLatencyStats()
        if not self._stats.has_prior:
            self._stats.use_prior(self._prior)
        self._client = client if client is not None else ClientToolBroker()
        self._runs: set[str] = set()
        self._released: OrderedDict[str, None] = OrderedDict()

    def _prior(self, name: str) -> float | None:
        return self._registry.spec(name).expected_latency_s if name in self._registry else None

    @property
    def registry(self) -> ToolRegistry:
        return self._registry

    @property
    def stats(self) -> ToolLatencyStats:
        return self._stats

    @property
    def client(self) -> ClientToolBroker:
        return self._client

    @property
    def envs(self) -> EnvironmentManager:
        return self._envs

    async def __aenter__(self) -> Self:
        # tool processes a crashed server left behind (see `reaper`): gone before any run resumes
        await anyio.to_thread.run_sync(reaper.reap_orphans)
        if self._owns_envs:
            await self._envs.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.aclose()
        finally:
            if self._owns_envs:
                await self._envs.__aexit__(exc_type, exc, tb)

    async def prepare_run(self, run_id: str) -> None:
        """Start preparing the run's tool environment ahead of its first tool step.

        Also the way to reopen a run id that was released (e.g. a run resumed from its journal).
        """
        self._released.pop(run_id, None)
        self._runs.add(run_id)
        await self._envs.prepare(run_id)

    async def release_run(self, run_id: str) -> None:
        """Run finished or cancelled: wake its client-tool waiters, kill its processes, remove its
        directory. Idempotent. Later calls for the run get a `cancelled` result until it is
        prepared again."""
        self._runs.discard(run_id)
        self._released[run_id] = None
        self._released.move_to_end(run_id)
        while len(self._released) > _MAX_RELEASED:
            self._released.popitem(last=False)
        self._client.cancel_run(run_id)
        await self._envs.release(run_id)

    async def aclose(self) -> None:
        self._client.cancel_all()
        if self._owns_envs:
            await self._envs.aclose()
        else:
            for run_id in list(self._runs):
                await self.release_run(run_id)

    async def call(
        self,
        name: str,
        args: Mapping[str, Any],
        *,
        run_id: str,
        call_id: str,
        tenant: str,
        idempotency_key: str | None = None,
    ) -> ToolResult:
        """Run tool `name` for one step of run `run_id`. See the module docstring for what raises.
        `idempotency_key` (stable across restarts; default: the call id) reaches the tool's context."""
        tool = self._registry.get(name)  # UnknownToolError propagates on purpose
        try:
            valid = tool.validate_args(args)
        except BadToolArgsError as exc:
            return ToolResult.failure("bad_args", f"bad arguments for tool {name!r}: {exc}")
        released = ToolResult.failure("cancelled", f"tool {name!r} not run: run {run_id!r} was released")
        if run_id in self._released:
            return released
        self._runs.add(run_id)
        try:
            env = await self._envs.get(run_id)
        except EnvironmentReleasedError:
            return released
        except ToolEnvironmentError as exc:
            return ToolResult.failure("exception", f"tool {name!r} has no environment: {exc}")
        if env.processes.closed or run_id in self._released:
            return released
        ctx = ToolContext(
            run_id=run_id,
            call_id=call_id,
            tenant=tenant,
            workdir=env.workdir,
            processes=env.processes,
            client=self._client,
            idempotency_key=idempotency_key or call_id,
        )
        started = anyio.current_time()
        try:
            result = await tool.invoke(valid, ctx)
        except Exception as exc:  # a tool implementation bug; the run still gets a readable error
            log.warning("tool %r (run %s, call %s) failed", name, run_id, call_id, exc_info=True)
            result = ToolResult.failure("exception", f"{type(exc).__name__}: {exc}")
        duration = anyio.current_time() - started
        if result.error_kind not in _UNMEASURED:
            self._stats.record(name, duration, tenant)
        return dataclasses.replace(result, duration_s=duration)
