"""Running one Python tool call on a worker thread with its own event loop.

Why a thread: a tool written `async def` may still block (`time.sleep`, a synchronous HTTP
client, a CPU loop). On the server's event loop that stalls every request (`/healthz` included)
and the tool's timeout never fires. On a worker thread the server's loop stays free, the timeout
is enforced from outside (the caller stops waiting; the worker's task is cancelled, which stops a
cooperative tool at once and a blocking one at its next `await`).

Why per-thread children: a process a tool starts (`subprocess.Popen`, asyncio subprocesses) is
forked by the thread that runs the tool, and Linux lists it in `/proc/self/task/<tid>/children`.
When the call ends (result, error, timeout or cancel) those children, and their process groups
or descendants, are killed, as a subprocess tool's group is when its leader exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from legato.loop_local import PerLoop
from legato.tools.process import kill_group

# Python tool calls running at once on worker threads, per event loop. A cap only so a burst
# cannot create unbounded threads; a blocked call beyond its timeout no longer holds a slot (it
# is abandoned).
TOOL_THREADS = 256
_tool_limiter = PerLoop(lambda: anyio.CapacityLimiter(TOOL_THREADS))


def _children(pid: int, tid: int) -> list[int]:
    """Processes forked by thread `tid` of process `pid` (empty if the kernel does not say)."""
    try:
        text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it, children first (so a parent cannot respawn them)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return [pid]
    for tid in tids:
        for child in _children(pid, int(tid)):
            out.extend(_descendants(child))
    out.append(pid)
    return out


def kill_thread_children(tid: int) -> int:
    """Kill what thread `tid` of this process forked: a child that leads its own process group
    loses the whole group, one in the server's group loses itself and its descendants."""
    own_group = os.getpgid(0)
    killed = 0
    for child in _children(os.getpid(), tid):
        try:
            pgid = os.getpgid(child)
        except ProcessLookupError:
            continue
        if pgid != own_group:
            kill_group(pgid)
        for pid in _descendants(child):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed += 1
    return killed


@dataclass
class WorkerCall:
    """One call on a worker thread: what the caller needs to stop it from outside."""

    tid: int = 0
    loop: asyncio.AbstractEventLoop | None = None
    task: asyncio.Task[Any] | None = None
    started: threading.Event = field(default_factory=threading.Event)

    def stop(self) -> None:
        """Cancel the worker's task (stops at its next await) and kill its child processes."""
        loop, task = self.loop, self.task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: the call ended
                loop.call_soon_threadsafe(task.cancel)
        self.reap()

    def reap(self) -> None:
        if self.tid:
            kill_thread_children(self.tid)


async def run_on_worker(make: Callable[[], Coroutine[Any, Any, Any]], call: WorkerCall) -> Any:
    """Await `make()` on a worker thread's own event loop; its exception is re-raised here.
    Cancelling the caller abandons the thread (after `call.stop()` asked it to end)."""

    def main() -> Any:
        async def body() -> Any:
            call.loop = asyncio.get_running_loop()
            call.task = asyncio.current_task()
            call.started.set()
            return await make()

        call.tid = threading.get_native_id()
        try:
            return asyncio.run(body())
        finally:
            call.reap()

    try:
        return await anyio.to_thread.run_sync(main, abandon_on_cancel=True, limiter=_tool_limiter.get())
    finally:
        if not call.started.is_set() or (call.task is not None and not call.task.done()):
            call.stop()
