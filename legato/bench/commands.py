"""CLI commands of this component (registered on the `legato` app by legato.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this component's commands to `app`."""
