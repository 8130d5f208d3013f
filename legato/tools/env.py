"""Per-run tool environments: a private working directory plus the run's live process groups.

Why ahead of need: setting up an environment (copying a repository skeleton, installing
dependencies) can take seconds. The executor calls `prepare(run_id)` when a run starts; setup runs
in the background while the run's first LLM call is being served, and the first tool call's `get`
only waits for whatever is left.

Lifecycle: the manager owns a task group for background preparation, so use it as an async context
manager::

    async with EnvironmentManager() as envs:
        await envs.prepare("run-1")          # returns at once
        env = await envs.get("run-1")        # waits for setup hooks
        ...
        await envs.release("run-1")          # kills its processes, removes its directory

Without ``async with`` it still works, preparing lazily inside `get` (no background work); call
`aclose()` at the end either way. After `aclose()` no directory or process of any run is left.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
import anyio.abc

from legato.tools.process import ProcessGroups, ProcessOutcome, ResourceLimits, base_environment, run_process

log = logging.getLogger("legato.tools")

SetupHook = Callable[["ToolEnvironment"], Awaitable[None]]


class ToolEnvironmentError(RuntimeError):
    """Base for failures to provide a run's tool environment."""


class EnvironmentSetupError(ToolEnvironmentError):
    """A setup hook failed or timed out; the run cannot use its environment."""


class EnvironmentReleasedError(ToolEnvironmentError):
    """The run's environment was released (run finished or cancelled) while it was being awaited."""


@dataclass(slots=True)
class ToolEnvironment:
    """One run's environment, reused by every tool step of the run."""

    run_id: str
    workdir: Path
    processes: ProcessGroups = field(default_factory=ProcessGroups)

    async def run_command(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float = 120.0,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = False,
        max_output_bytes: int = 1 << 20,
    ) -> ProcessOutcome:
        """Run a setup command (no shell) in the workdir, tracked so release kills it."""
        return await run_process(
            argv,
            cwd=self.workdir,
            env=base_environment(self.workdir, env, inherit=inherit_env),
            timeout_s=timeout_s,
            limits=ResourceLimits(),
            max_output_bytes=max_output_bytes,
            processes=self.processes,
        )


@dataclass(slots=True)
class _Slot:
    env: ToolEnvironment
    ready: anyio.Event = field(default_factory=anyio.Event)
    started: bool = False
    error: ToolEnvironmentError | None = None
    scope: anyio.CancelScope | None = None


def _dir_prefix(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", run_id)[:40] + "-"


class EnvironmentManager:
    """Creates, hands out and removes per-run environments under one root directory.

    `root=None` creates a private root (removed by `aclose`); a given root is created if missing
    and kept, only the run directories inside it are removed.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        setup_hooks: Sequence[SetupHook] = (),
        setup_timeout_s: float = 300.0,
        release_timeout_s: float = 30.0,
    ) -> None:
        if root is None:
            self.root = Path(tempfile.mkdtemp(prefix="legato-envs-"))
            self._owns_root = True
        else:
            self.root = Path(root)
            self.root.mkdir(parents=True, exist_ok=True)
            self._owns_root = False
        self._hooks: list[SetupHook] = list(setup_hooks)
        self.setup_timeout_s = setup_timeout_s
        self.release_timeout_s = release_timeout_s
        self._slots: dict[str, _Slot] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._closed = False

    def add_setup_hook(self, hook: SetupHook) -> None:
        """Run `hook(env)` when preparing each new environment (in registration order)."""
        self._hooks.append(hook)

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("EnvironmentManager is already entered")
        stack = contextlib.AsyncExitStack()
        self._tg = await stack.enter_async_context(anyio.create_task_group())
        self._stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.aclose()
        finally:
            stack, self._stack, self._tg = self._stack, None, None
            if stack is not None:
                await stack.__aexit__(exc_type, exc, tb)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._slots

    def runs(self) -> list[str]:
        return sorted(self._slots)

    async def prepare(self, run_id: str) -> None:
        """Start preparing the run's environment in the background; returns immediately."""
        if self._closed:
            raise RuntimeError("EnvironmentManager is closed")
        if run_id in self._slots:
            return
        workdir = Path(tempfile.mkdtemp(prefix=_dir_prefix(run_id), dir=self.root))
        slot = _Slot(ToolEnvironment(run_id, workdir))
        self._slots[run_id] = slot
        if self._tg is not None:
            slot.started = True
            self._tg.start_soon(self._setup, slot)

    async def get(self, run_id: str) -> ToolEnvironment:
        """The run's environment, prepared (now, if `prepare` was not called). Reused across steps."""
        await self.prepare(run_id)
        slot = self._slots[run_id]
        if not slot.started:
            slot.started = True
            await self._setup(slot)
        if not slot.ready.is_set():
            with anyio.move_on_after(self.setup_timeout_s):
                await slot.ready.wait()
        if not slot.ready.is_set():
            raise EnvironmentSetupError(
                f"environment of run {run_id!r} was not ready within {self.setup_timeout_s:g}s"
            )
        if slot.error is not None:
            # A fresh exception per waiter: re-raising one stored object would chain tracebacks.
            raise type(slot.error)(str(slot.error))
        return slot.env

    async def _setup(self, slot: _Slot) -> None:
        run_id = slot.env.run_id
        completed = False
        try:
            with anyio.CancelScope() as scope:
                slot.scope = scope
                with anyio.fail_after(self.setup_timeout_s):
                    for hook in self._hooks:
                        await hook(slot.env)
                completed = True
        except TimeoutError:
            slot.error = EnvironmentSetupError(
                f"environment setup of run {run_id!r} took longer than {self.setup_timeout_s:g}s"
            )
        except Exception as exc:
            log.warning("environment setup of run %s failed", run_id, exc_info=True)
            slot.error = EnvironmentSetupError(
                f"environment setup of run {run_id!r} failed: {type(exc).__name__}: {exc}"
            )
        finally:
            # Not completed and no error: released (our scope cancelled) or the caller of an
            # inline `get` was cancelled. Either way the environment must not be handed out.
            if not completed and slot.error is None:
                slot.error = EnvironmentReleasedError(f"environment setup of run {run_id!r} was interrupted")
            slot.scope = None
            slot.ready.set()

    async def release(self, run_id: str) -> None:
        """Kill the run's processes and remove its directory. Idempotent; safe while cancelled."""
        slot = self._slots.pop(run_id, None)
        if slot is None:
            return
        if slot.scope is not None:
            slot.scope.cancel()
        if slot.error is None and not slot.ready.is_set():
            slot.error = EnvironmentReleasedError(f"environment of run {run_id!r} was released")
        slot.env.processes.kill_all()
        slot.ready.set()
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.release_timeout_s) as scope:
            await anyio.to_thread.run_sync(shutil.rmtree, slot.env.workdir, True)
        if scope.cancelled_caught:
            log.error("removing %s took longer than %.0fs", slot.env.workdir, self.release_timeout_s)

    async def aclose(self) -> None:
        """Release every environment; remove the root if the manager created it. Idempotent."""
        self._closed = True
        for run_id in list(self._slots):
            await self.release(run_id)
        if self._owns_root:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, self.root, True)
