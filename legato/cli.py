"""The `legato` command.

Each component registers its own commands (`legato.<component>.commands.register`), and keeps
heavy imports (torch, fastapi) inside the command bodies so `legato --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from legato.bench import commands as bench_commands
from legato.engine_adapter import commands as engine_commands
from legato.programs import commands as program_commands

app = typer.Typer(
    name="legato",
    help="Agent-workflow-aware orchestration for LLM inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Agent-workflow-aware orchestration for LLM inference."""


@app.command()
def version() -> None:
    """Print Legato's version."""
    from legato import __version__

    typer.echo(__version__)


@app.command()
def demo(
    examples: Annotated[
        Path | None, typer.Option(help="Directory of example programs (default: the repo's examples/).")
    ] = None,
    device: Annotated[str, typer.Option(help="torch device for the embedded engine: cpu, cuda, ...")] = "cpu",
) -> None:
    """Run the example agent programs together on the embedded torch engine (no download, no Redis)."""
    from legato import demo as demo_module

    ok = demo_module.main(examples or demo_module.DEFAULT_EXAMPLES, device)
    if not ok:
        raise typer.Exit(1)


for component in (program_commands, engine_commands, bench_commands):
    component.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
