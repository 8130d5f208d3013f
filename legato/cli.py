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
from legato.output_path import output_path
from legato.programs import commands as program_commands
from legato.server import commands as server_commands

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
    plot: Annotated[
        Path, typer.Option(callback=output_path, help="Write the TCT CDF plot (PNG) here.")
    ] = Path("legato-demo.png"),
    json_out: Annotated[
        Path | None, typer.Option("--json", callback=output_path, help="Write the report JSON here.")
    ] = None,
    programs: Annotated[int, typer.Option("--programs", "-n", help="Coding-agent programs.")] = 16,
    examples: Annotated[
        bool, typer.Option("--examples", help="Instead: run the example programs together on one engine.")
    ] = False,
    examples_dir: Annotated[
        Path | None, typer.Option(help="With --examples: directory of example programs (default: examples/).")
    ] = None,
    device: Annotated[str, typer.Option(help="With --examples: torch device (cpu, cuda, ...).")] = "cpu",
) -> None:
    """Legato's policy vs fcfs-lru on 16 coding agents on the embedded torch engine (no download)."""
    from legato import demo as demo_module

    if examples:
        ok = demo_module.examples_main(examples_dir or demo_module.DEFAULT_EXAMPLES, device)
    else:
        if programs < 1:
            typer.echo(f"error: --programs must be >= 1, got {programs}", err=True)
            raise typer.Exit(2)
        settings = demo_module.DemoSettings(programs=programs)
        ok = demo_module.main(settings=settings, plot=plot, json_out=json_out)
    if not ok:
        raise typer.Exit(1)


for component in (program_commands, engine_commands, bench_commands, server_commands):
    component.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
