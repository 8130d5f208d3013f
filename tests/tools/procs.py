"""Process and file helpers for the tools tests (real processes, checked with psutil)."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import psutil

PY = sys.executable


def alive(pid: int) -> bool:
    """True if `pid` is a live process. A zombie is dead (it only awaits reaping by its parent)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def wait_for_file(path: Path, timeout_s: float = 10.0) -> str:
    """Poll until `path` exists with content; return the content."""
    apath = anyio.Path(path)
    with anyio.fail_after(timeout_s):
        while True:  # polling the file system: there is no event to wait on
            if await apath.exists():
                text = (await apath.read_text()).strip()
                if text:
                    return text
            await anyio.sleep(0.02)


async def wait_gone(pids: list[int], timeout_s: float = 5.0) -> None:
    """Wait until none of `pids` is alive (a reparented orphan may need init a moment to die)."""
    with anyio.fail_after(timeout_s):
        while any(alive(p) for p in pids):  # noqa: ASYNC110  (polling other processes: no event exists)
            await anyio.sleep(0.02)


def own_children() -> list[psutil.Process]:
    """Live (non-zombie) descendants of the test process."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out
