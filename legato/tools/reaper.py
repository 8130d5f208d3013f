"""Tool process groups that outlive a dead server: recorded while alive, reaped at the next start.

A tool process's leader dies with the server (`PR_SET_PDEATHSIG`, set by the launcher in
`process.py`), but what the leader spawned does not. So every group `run_process` starts is
recorded as one small file, `<dir>/<pgid>`, holding the owner's identity (server pid and its
start time, which tells a dead owner from a reused pid); the file is removed when the group is
killed. At startup `reap_orphans` kills each recorded group whose owner is gone. Two guards keep
it from killing anything else: the owner must be dead, and a process is only killed if its
environment carries `LEGATO_TOOL_OWNER=<that owner>` (set on every tool process), so a reused
pgid of an unrelated process is left alone. Several servers on one machine share the directory
safely: each only reaps the groups of owners that are no longer running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
from functools import cache
from pathlib import Path

log = logging.getLogger("legato.tools")

OWNER_ENV = "LEGATO_TOOL_OWNER"
DIR_ENV = "LEGATO_TOOL_GROUPS_DIR"


def groups_dir() -> Path:
    """Where groups are recorded: `$LEGATO_TOOL_GROUPS_DIR`, else one directory per user in the
    temp dir (it must be the same for the server that died and the one that starts after it)."""
    given = os.environ.get(DIR_ENV)
    return Path(given) if given else Path(tempfile.gettempdir()) / f"legato-tool-groups-{os.getuid()}"


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@cache
def owner_id() -> str:
    """This server process, as `pid.starttime` (unique on this machine until reboot)."""
    pid = os.getpid()
    return f"{pid}.{_start_time(pid) or 0}"


def _alive(owner: str) -> bool:
    pid, _, start = owner.partition(".")
    return pid.isdigit() and _start_time(int(pid)) == start


def record(pgid: int) -> None:
    """Note a live tool group of this server (best effort: a full disk must not fail the tool)."""
    try:
        folder = groups_dir()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        (folder / str(pgid)).write_text(owner_id())
    except OSError as exc:
        log.warning("cannot record tool process group %d: %s", pgid, exc)


def forget(pgid: int) -> None:
    with contextlib.suppress(OSError):
        path = groups_dir() / str(pgid)
        if path.read_text() == owner_id():
            path.unlink()


def _members(owner: str) -> dict[int, list[int]]:
    """pgid -> pids of live processes that carry `owner` in their environment."""
    marker = f"{OWNER_ENV}={owner}".encode()
    found: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if marker not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                continue
            found.setdefault(os.getpgid(pid), []).append(pid)
        except (OSError, ProcessLookupError):
            continue
    return found


def reap_orphans() -> int:
    """Kill the recorded tool groups of servers that are no longer running; returns how many
    processes were killed."""
    folder = groups_dir()
    try:
        files = [p for p in folder.iterdir() if p.name.isdigit()]
    except OSError:
        return 0
    by_owner: dict[str, list[Path]] = {}
    for path in files:
        with contextlib.suppress(OSError):
            by_owner.setdefault(path.read_text().strip(), []).append(path)
    killed = 0
    for owner, paths in by_owner.items():
        if _alive(owner):
            continue
        for pids in _members(owner).values():  # its recorded groups and any that left them
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()
    if killed:
        log.warning("killed %d tool process(es) left running by a server that died", killed)
    return killed
