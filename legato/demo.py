"""`legato demo`: run every example program at once on one embedded torch engine.

It shows the foundation working end to end with nothing to download: agent programs (builder
graphs and dynamic agents) share one engine through the executor, run real subprocess and
SQLite tools, and reuse each other's KV prefixes. The program-level scheduler's side-by-side
demo (Legato vs `fcfs-lru` on the coding-agent workload) replaces this once it lands.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

DEFAULT_EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@dataclass(frozen=True, slots=True)
class DemoRun:
    name: str
    status: str
    steps: int
    duration_s: float
    error: str | None


async def run_examples(
    files: list[Path], *, device: str = "cpu", timeout_s: float = 300.0
) -> tuple[list[DemoRun], dict[str, int]]:
    """Run `files` concurrently on one torch engine; returns per-run results and engine counters."""
    import anyio

    from legato.engine_adapter.torch import load_engine
    from legato.programs.executor import Executor
    from legato.programs.loader import load_file, resolve_inputs
    from legato.scheduler.passthrough import PassthroughScheduler
    from legato.tools.registry import default_registry
    from legato.tools.runtime import ToolRuntime

    loaded = [load_file(f) for f in files]
    runs: list[DemoRun] = []
    async with AsyncExitStack() as stack:
        engine = await stack.enter_async_context(load_engine(None, device))
        # Each file may bring its own registry; one runtime per registry keeps them apart.
        executors = {}
        for item in loaded:
            registry = item.registry or default_registry
            if id(registry) not in executors:
                tools = await stack.enter_async_context(ToolRuntime(registry))
                executors[id(registry)] = await stack.enter_async_context(
                    Executor(PassthroughScheduler(engine), tools)
                )
        handles = []
        for item in loaded:
            executor = executors[id(item.registry or default_registry)]
            inputs = await resolve_inputs(item)
            handles.append((item, executor.submit(item.program, inputs, tenant=item.tenant)))
        with anyio.fail_after(timeout_s):
            for item, handle in handles:
                result = await handle.wait()
                runs.append(
                    DemoRun(
                        item.path.stem,
                        result.status.value,
                        len(result.steps),
                        result.duration_s,
                        result.error,
                    )
                )
        stats = await engine.stats()
    counters = {
        "prompt_tokens": stats.prompt_tokens,
        "prefix_hit_tokens": stats.prefix_hit_tokens,
        "generated_tokens": stats.generated_tokens,
        "preemptions": stats.preemptions,
        "engine_steps": stats.steps,
    }
    return runs, counters


def main(examples_dir: Path = DEFAULT_EXAMPLES, device: str = "cpu") -> bool:
    """Run the demo, print its tables; True when every example succeeded."""
    import anyio

    console = Console()
    files = sorted(p for p in examples_dir.glob("*.py") if not p.name.startswith("_"))
    if not files:
        console.print(f"[red]no example programs in {examples_dir}[/red]")
        return False
    console.print(
        f"Running {len(files)} example programs concurrently on the embedded torch engine ({device})..."
    )
    started = time.perf_counter()
    runs, counters = anyio.run(lambda: run_examples(files, device=device))
    wall = time.perf_counter() - started

    table = Table(title="legato demo: example programs sharing one engine")
    for column in ("program", "status", "steps", "seconds", "error"):
        table.add_column(column)
    for run in runs:
        colour = "green" if run.status == "succeeded" else "red"
        table.add_row(
            run.name,
            f"[{colour}]{run.status}[/{colour}]",
            str(run.steps),
            f"{run.duration_s:.1f}",
            run.error or "",
        )
    console.print(table)
    prompt = counters["prompt_tokens"]
    hit_rate = counters["prefix_hit_tokens"] / prompt if prompt else 0.0
    console.print(
        f"engine: {prompt} prompt tokens, {counters['prefix_hit_tokens']} served from the prefix cache "
        f"({hit_rate:.0%}), {counters['generated_tokens']} generated, {counters['preemptions']} preemptions, "
        f"{counters['engine_steps']} steps; wall {wall:.1f} s"
    )
    return all(r.status == "succeeded" for r in runs)
