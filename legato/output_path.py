"""A typer callback for options that name a file a command writes at its end (`--json`,
`--plot`): checked when the command line is parsed, so a typo in a folder name is a clear
usage error at once, not a traceback after a long benchmark has thrown its results away."""

from __future__ import annotations

import os
from pathlib import Path

import typer


def output_path(value: Path | None) -> Path | None:
    """Create the file's folder if needed; refuse a folder, or a folder that cannot be written."""
    if value is None:
        return None
    if value.is_dir():
        raise typer.BadParameter(f"{value} is a folder; give a file name")
    folder = value.parent
    if folder.exists() and not folder.is_dir():
        raise typer.BadParameter(f"{folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise typer.BadParameter(f"cannot create the folder {folder}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise typer.BadParameter(f"the folder {folder} is not writable")
    return value
