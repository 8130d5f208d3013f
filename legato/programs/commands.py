"""CLI commands of this component: `legato run FILE` and `legato schema`.

See `legato.programs.loader` for the FILE convention. Heavy imports stay inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from legato.engine_adapter.commands import KvHostGbOpt, KvRedisOpt, tier_overrides
from legato.scheduler.by_name import DEFAULT_POLICY


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


async def _run_file(
    file: Path,
    engines: list[Any],
    policy: str,
    overrides: dict[str, Any],
    show_events: bool,
    timeout_s: float | None,
    speculation: Any = None,
) -> dict[str, Any]:
    from contextlib import AsyncExitStack

    from legato.programs.builder import CompiledProgram
    from legato.programs.executor import Executor
    from legato.programs.loader import load_file, resolve_inputs
    from legato.programs.validate import validate
    from legato.scheduler.by_name import make_scheduler
    from legato.tools.registry import default_registry
    from legato.tools.runtime import ToolRuntime

    loaded = load_file(file)
    registry = loaded.registry or default_registry
    if isinstance(loaded.program, CompiledProgram):
        validate(loaded.program.spec, registry)  # unknown tools are reported before anything runs
    inputs = {**await resolve_inputs(loaded), **overrides}
    scheduler: Any = make_scheduler(engines, policy)
    async with AsyncExitStack() as stack:
        for engine in engines:
            if hasattr(engine, "__aenter__"):
                await stack.enter_async_context(engine)
            else:
                stack.push_async_callback(engine.close)
        if hasattr(scheduler, "__aenter__"):
            await stack.enter_async_context(scheduler)
        tools = await stack.enter_async_context(ToolRuntime(registry))
        executor = await stack.enter_async_context(Executor(scheduler, tools, speculation=speculation))
        handle = executor.submit(
            loaded.program, inputs, tenant=loaded.tenant, timeout_s=timeout_s or loaded.timeout_s
        )
        if show_events:
            async with executor.subscribe(handle.run_id) as sub:
                async for event in sub:
                    if event.kind != "token":
                        detail = {
                            k: v for k, v in event.data.items() if k not in ("writes", "output", "args")
                        }
                        typer.echo(f"[{event.kind}] {event.node or ''} {detail}", err=True)
        result = await handle.wait()  # bounded by the run's own timeout when one is given
    return {
        "run_id": result.run_id,
        "program": result.program,
        "status": result.status.value,
        "error": result.error,
        "steps": len(result.steps),
        "duration_s": round(result.duration_s, 3),
        "output": _jsonable(result.output),
    }


def register(app: typer.Typer) -> None:
    """Add this component's commands to `app`."""

    @app.command("run")
    def run_command(
        file: Annotated[Path, typer.Argument(help="Program file (.py defining `program`, or a .json spec).")],
        engine: Annotated[
            list[str] | None,
            typer.Option(
                help="A replica, repeatable (default: one 'torch'): torch[:device=...], vllm=URL, "
                "sglang=URL, sim-realtime[:...] or package.module:factory (as `legato serve`)."
            ),
        ] = None,
        checkpoint: Annotated[
            Path | None, typer.Option(help="HF checkpoint dir for the torch engine (default: seeded model).")
        ] = None,
        device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1 ...")] = "cpu",
        kv_host_gb: KvHostGbOpt = 0.0,
        kv_redis_url: KvRedisOpt = None,
        policy: Annotated[
            str,
            typer.Option(help="Scheduling policy: legato, a `legato bench` policy, or passthrough."),
        ] = DEFAULT_POLICY,
        input: Annotated[
            list[str] | None, typer.Option("--input", "-i", help="KEY=VALUE (JSON or text).")
        ] = None,
        inputs_json: Annotated[str | None, typer.Option(help="Inputs as one JSON object.")] = None,
        events: Annotated[bool, typer.Option(help="Print the run's events to stderr.")] = False,
        timeout: Annotated[float | None, typer.Option(help="Fail the run after this many seconds.")] = None,
        program_spec: Annotated[
            str,
            typer.Option(
                help="Program-level speculation: on, off, or a '+' list of prefill, early, predicted."
            ),
        ] = "off",
    ) -> None:
        """Run a program file to completion and print its result as JSON."""
        import anyio

        from legato.engine_adapter.base import EngineError
        from legato.launch import LaunchError, TorchOptions, build_engines
        from legato.programs.loader import LoadError, parse_inputs
        from legato.programs.speculation import parse_program_spec
        from legato.programs.validate import ProgramValidationError

        try:
            overrides = parse_inputs(list(input or []), inputs_json)
            speculation = parse_program_spec(program_spec)
            tiers = tier_overrides(kv_host_gb, kv_redis_url)
            engines = build_engines(engine or [], TorchOptions(checkpoint, device, tiers))
            summary = anyio.run(_run_file, file, engines, policy, overrides, events, timeout, speculation)
        except (LoadError, LaunchError, EngineError, ProgramValidationError, TypeError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        if summary["status"] != "succeeded":
            raise typer.Exit(1)

    @app.command("schema")
    def schema_command(
        out: Annotated[Path | None, typer.Option(help="Write the schema here instead of stdout.")] = None,
    ) -> None:
        """Print the JSON Schema of declarative programs (the REST wire format)."""
        from legato.programs.spec import json_schema

        text = json.dumps(json_schema(), indent=2)
        if out is None:
            typer.echo(text)
        else:
            out.write_text(text + "\n")
            typer.echo(f"wrote {out}", err=True)
