"""The `legato` command.

Each component registers its own commands (`legato.<component>.commands.register`), and keeps
heavy imports (torch, fastapi) inside the command bodies so `legato --help` stays fast.
"""

from __future__ import annotations

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


for component in (program_commands, engine_commands, bench_commands):
    component.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
