"""`legato bench rl` (registered by `legato/bench/commands.py`): the command line of
`legato/bench/rl_bench.py`, whose imports stay inside the body so `legato --help` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from legato.engine_adapter.commands import DeviceOpt
from legato.output_path import output_path


def rl(
    groups: Annotated[int, typer.Option(min=1, help="GRPO groups (prompts) at once.")] = 8,
    n: Annotated[int, typer.Option(min=1, help="Samples per group.")] = 8,
    turns: Annotated[int, typer.Option(min=1, help="Model turns per rollout.")] = 4,
    prompt_tokens: Annotated[int, typer.Option(min=1, help="Tokens of each group's prompt.")] = 384,
    max_tokens: Annotated[int, typer.Option(min=1, help="Model tokens per turn.")] = 32,
    env_tokens: Annotated[int, typer.Option(min=0, help="Tool tokens between turns.")] = 64,
    tool_s: Annotated[float, typer.Option(min=0.0, help="Tool latency between turns (s).")] = 0.5,
    num_blocks: Annotated[int, typer.Option(min=16, help="KV blocks of the torch engine.")] = 512,
    repetitions: Annotated[int, typer.Option(min=1, help="Interleaved runs per policy.")] = 3,
    threads: Annotated[int, typer.Option(min=1, help="Torch threads of each server.")] = 1,
    device: DeviceOpt = "cpu",
    json_out: Annotated[
        Path | None, typer.Option("--json", callback=output_path, help="Write the summary JSON here.")
    ] = None,
) -> None:
    """Multi-turn GRPO rollouts through `legato serve` (torch engine): Legato vs passthrough."""
    import json

    from legato.bench.rl_bench import RLBenchConfig, run_rl_bench, summary

    cfg = RLBenchConfig(
        groups,
        n,
        turns,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        env_tokens=env_tokens,
        tool_s=tool_s,
        num_blocks=num_blocks,
        repetitions=repetitions,
        threads=threads,
        device=device,
    )
    runs, costs = run_rl_bench(cfg)
    result = summary(runs, cfg, costs)
    typer.echo(json.dumps(result, indent=2))
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
