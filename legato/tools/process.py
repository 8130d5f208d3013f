"""Running one sandboxed child process: own session, resource limits, capped output, sure cleanup.

Why a launcher: anyio's `open_process` has no `preexec_fn` (and `preexec_fn` is unsafe in a threaded
process anyway), so limits are applied by a tiny `python -I -S -c` stub that calls `setrlimit` and
then `execvp`s the real command. The pid stays the same across the exec, so the process we wait on,
the process group we kill and the process the limits apply to are one and the same. The stub also
sets `PR_SET_PDEATHSIG` (SIGKILL when the server dies), and every group is recorded
(`reaper.record`) so that the next server start kills what the leader had spawned.

Why process groups: a tool that spawns children (a shell pipeline, a test runner) must die as a
whole. The child starts a new session (so its pid is its process-group id); on timeout, cancel or
run release we `killpg` the group, and after the leader exits we kill whatever of the group is left,
which also closes the pipes our readers are waiting on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
import anyio.abc

from legato.tools import reaper

log = logging.getLogger("legato.tools")

# Grace period for reaping a process we have SIGKILLed. Only a process stuck in the kernel exceeds it.
_REAP_TIMEOUT_S = 5.0
# After the tool exits (and its group is killed), how long to keep reading its pipes. Only a
# descendant that escaped the group with setsid() can hold them open longer; we stop reading then
# rather than waiting for the timeout.
_PIPE_GRACE_S = 1.0

_LAUNCHER = r"""
import ctypes, os, resource, signal, sys
# Die with the server (PR_SET_PDEATHSIG = 1), even on kill -9; if it already died, stop here.
ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
if os.getppid() != int(sys.argv[2]):
    os._exit(137)
limits = sys.argv[1]
for item in limits.split(",") if limits else ():
    name, soft, hard = item.split(":")
    res = getattr(resource, name)
    cur_soft, cur_hard = resource.getrlimit(res)
    soft, hard = int(soft), int(hard)
    if cur_hard != resource.RLIM_INFINITY:
        hard = min(hard, cur_hard)
        soft = min(soft, hard)
    resource.setrlimit(res, (soft, hard))
argv = sys.argv[3:]
try:
    os.execvp(argv[0], argv)
except OSError as exc:
    sys.stderr.write("legato: cannot execute %r: %s\n" % (argv[0], exc))
    sys.stderr.flush()
    os._exit(127)
"""


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    """Kernel-enforced limits for a child process. None means "leave as inherited"."""

    cpu_seconds: int | None = None
    memory_bytes: int | None = None
    max_open_files: int | None = 256
    # Core dumps of a crashing tool would land in the run's workdir; they are never wanted.
    core_dumps: bool = False

    def __post_init__(self) -> None:
        if self.cpu_seconds is not None and self.cpu_seconds < 1:
            raise ValueError("cpu_seconds must be a whole number of seconds >= 1")
        if self.memory_bytes is not None and self.memory_bytes < 1 << 20:
            raise ValueError("memory_bytes must be at least 1 MiB (it caps the address space, RLIMIT_AS)")
        if self.max_open_files is not None and self.max_open_files < 16:
            raise ValueError("max_open_files must be at least 16")

    def encode(self) -> str:
        """The launcher's argument: `RLIMIT_X:soft:hard` items, comma separated."""
        items: list[str] = []
        if self.cpu_seconds is not None:
            # Soft limit sends SIGXCPU (which we report as a limit); the hard limit one second later
            # is SIGKILL for a process that ignores SIGXCPU.
            items.append(f"RLIMIT_CPU:{self.cpu_seconds}:{self.cpu_seconds + 1}")
        if self.memory_bytes is not None:
            items.append(f"RLIMIT_AS:{self.memory_bytes}:{self.memory_bytes}")
        if self.max_open_files is not None:
            items.append(f"RLIMIT_NOFILE:{self.max_open_files}:{self.max_open_files}")
        if not self.core_dumps:
            items.append("RLIMIT_CORE:0:0")
        return ",".join(items)


def kill_group(pgid: int) -> None:
    """SIGKILL a whole process group; a group that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class ProcessGroups:
    """The live process groups of one run, so that releasing the run kills every one of them.

    Once `kill_all` has run the tracker is closed: a group registered afterwards (a process that
    was spawning while the run was released) is killed on the spot.
    """

    def __init__(self) -> None:
        self._groups: set[int] = set()
        self.closed = False

    def add(self, pgid: int) -> None:
        if self.closed:
            kill_group(pgid)
            return
        self._groups.add(pgid)

    def discard(self, pgid: int) -> None:
        self._groups.discard(pgid)

    def kill_all(self) -> None:
        self.closed = True
        for pgid in list(self._groups):
            kill_group(pgid)
        self._groups.clear()

    def __len__(self) -> int:
        return len(self._groups)

    def pgids(self) -> list[int]:
        return sorted(self._groups)


Ending = Literal["exited", "signaled", "timeout", "released"]


@dataclass(frozen=True, slots=True)
class ProcessOutcome:
    """What happened to a child. `returncode` is negative (-signal) when it died by a signal."""

    ending: Ending
    returncode: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool

    @property
    def signal_name(self) -> str | None:
        if self.returncode is None or self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"


class _Capped:
    """Keeps the first `cap` bytes of a stream and keeps draining the rest, so the child never blocks."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.truncated = False

    async def drain(self, stream: anyio.abc.ByteReceiveStream) -> None:
        try:
            async for chunk in stream:
                room = self.cap - len(self.data)
                if room > 0:
                    self.data += chunk[:room]
                if len(chunk) > room:
                    self.truncated = True
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass


async def _feed(stream: anyio.abc.ByteSendStream, data: bytes) -> None:
    try:
        await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, BrokenPipeError, ConnectionResetError):
        pass  # the child exited without reading all of its input: its exit status tells the story
    finally:
        with contextlib.suppress(anyio.BrokenResourceError, BrokenPipeError, ConnectionResetError):
            await stream.aclose()


async def run_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout_s: float,
    limits: ResourceLimits,
    max_output_bytes: int,
    stdin_data: bytes | None = None,
    processes: ProcessGroups | None = None,
) -> ProcessOutcome:
    """Run `argv` (no shell) under `limits` and wait for it, at most `timeout_s` seconds.

    Cancellation of the caller kills the process group and reaps the child before re-raising.
    Raises OSError only if the launcher itself cannot start (e.g. `cwd` does not exist).
    """
    command = [sys.executable, "-I", "-S", "-c", _LAUNCHER, limits.encode(), str(os.getpid()), *argv]
    process = await anyio.open_process(
        command,
        stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env={**env, reaper.OWNER_ENV: reaper.owner_id()},
        start_new_session=True,
    )
    pgid = process.pid  # start_new_session: the child is its own session and group leader
    reaper.record(pgid)
    if processes is not None:
        processes.add(pgid)
    out, err = _Capped(max_output_bytes), _Capped(max_output_bytes)
    timed_out = False
    # Once the leader is reaped its pid may in principle be reused, so the group is killed exactly
    # once after exit (at once, while leftovers still hold the pgid) and never again later.
    killed_after_exit = False
    try:
        with anyio.move_on_after(timeout_s) as scope:
            async with anyio.create_task_group() as tg:
                assert process.stdout is not None and process.stderr is not None
                tg.start_soon(out.drain, process.stdout)
                tg.start_soon(err.drain, process.stderr)
                if stdin_data is not None:
                    assert process.stdin is not None
                    tg.start_soon(_feed, process.stdin, stdin_data)
                await process.wait()
                # Leftover members of the group (background children) would keep the pipes open.
                kill_group(pgid)
                killed_after_exit = True
                if processes is not None:
                    processes.discard(pgid)
                tg.cancel_scope.deadline = anyio.current_time() + _PIPE_GRACE_S
        timed_out = scope.cancelled_caught
    finally:
        with anyio.CancelScope(shield=True):
            if not killed_after_exit:
                kill_group(pgid)
            with anyio.move_on_after(_REAP_TIMEOUT_S) as reap:
                await process.aclose()
            if reap.cancelled_caught:
                log.error("process group %d did not die within %.0fs of SIGKILL", pgid, _REAP_TIMEOUT_S)
            # Died by our SIGKILL because the run was released (not: exited just before the release).
            released = processes is not None and processes.closed and (process.returncode or 0) < 0
            if processes is not None:
                processes.discard(pgid)
            reaper.forget(pgid)
    ending: Ending
    if timed_out:
        ending = "timeout"
    elif released:
        ending = "released"
    elif process.returncode is not None and process.returncode < 0:
        ending = "signaled"
    else:
        ending = "exited"
    return ProcessOutcome(
        ending=ending,
        returncode=process.returncode,
        stdout=bytes(out.data),
        stderr=bytes(err.data),
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
    )


def base_environment(workdir: Path, extra: Mapping[str, str] | None, *, inherit: bool) -> dict[str, str]:
    """The environment a tool process sees.

    By default only PATH and a UTF-8 locale come from the server's environment: API keys and other
    secrets of the server must not leak to model-driven commands. HOME and TMPDIR point into the
    run's workdir so that tools writing caches or temp files leave nothing behind.
    """
    env: dict[str, str] = dict(os.environ) if inherit else {}
    env.setdefault("PATH", os.environ.get("PATH", os.defpath))
    env.setdefault("LANG", "C.UTF-8")
    env["HOME"] = str(workdir)
    env["TMPDIR"] = str(workdir)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        for key, value in extra.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"environment entries must be str -> str, got {key!r}: {value!r}")
            env[key] = value
    return env
