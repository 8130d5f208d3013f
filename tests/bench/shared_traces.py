"""Where the shared real traces are (`../shared/traces` beside the repository), for tests that
replay them; tests skip when they are absent."""

from __future__ import annotations

from pathlib import Path

_CANDIDATES = (Path(__file__).resolve().parents[2] / "../shared/traces", Path("/work/shared/traces"))


def shared_trace(name: str) -> Path | None:
    """The path of shared trace `name`, or None when no copy is present."""
    return next((d / name for d in _CANDIDATES if (d / name).is_file()), None)
