"""`legato bench`: replay one workload under several policies and report side by side.

`legato bench` itself runs the comparison (a group callback with `invoke_without_command`, so the
group doubles as the main command); `legato bench engine` and `legato bench calibrate` are the
engine microbenchmark and the simulator's cost-model calibration. Heavy modules (the simulator,
matplotlib, torch) are imported inside the command bodies so `legato --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from legato.bench.rl_command import rl as rl_command
from legato.engine_adapter.commands import DeviceOpt
from legato.output_path import output_path

if TYPE_CHECKING:
    from legato.bench.runner import BenchRun

bench_app = typer.Typer(
    help="Replay a workload under several scheduling policies and compare them.",
    no_args_is_help=False,
)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    workload: Annotated[
        str,
        typer.Option(
            "--workload",
            "-w",
            help="swe, multiagent, text2sql, rl-grpo, chat, trace:PATH, sessions:PATH, chat:PATH, or "
            "program:FILE (a program file run for real on --engine torch, see --program-spec).",
        ),
    ] = "swe",
    engine: Annotated[
        str,
        typer.Option(
            help="sim (simulated GPU, virtual time) or torch (the embedded torch engine on CPU, real time; "
            "--param token_scale=, time_scale=, kv_blocks=, kv_pressure= tune it)."
        ),
    ] = "sim",
    policies: Annotated[
        str,
        typer.Option(help="Comma list of policies; the first is the baseline of the ratios. Default: all."),
    ] = "",
    programs: Annotated[int, typer.Option("--programs", "-n", help="Programs in the workload.")] = 64,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Programs in flight at once.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of the workload and the replay.")] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", callback=output_path, help="Write the report JSON here.")
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            callback=output_path, help="Write a PNG: TCT CDF, plus throughput vs concurrency with --sweep."
        ),
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            callback=output_path,
            help="Write one self-contained HTML page: the tables and the plots (no network needed to view).",
        ),
    ] = None,
    sweep: Annotated[str | None, typer.Option(help="Also run these, e.g. concurrency=32,64,128.")] = None,
    gpu: Annotated[str, typer.Option(help="GPU preset: h100, a10, t4.")] = "h100",
    model: Annotated[
        str, typer.Option(help="Model preset: llama-3.1-8b, qwen2.5-32b, llama-3.1-70b.")
    ] = "llama-3.1-8b",
    replicas: Annotated[int, typer.Option(help="Engine replicas.")] = 1,
    tiers: Annotated[
        str,
        typer.Option(
            help="KV tiers below the GPU (sim), fastest first, NAME[:GB]: host, redis, redis-slow.",
        ),
    ] = "",
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Replays run in parallel processes.")] = 1,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Workload parameter key=value (repeatable).")
    ] = None,
    spec: Annotated[
        str,
        typer.Option(
            help="Speculative decoding (sim), comma list of none, suffix, ngram: each policy runs under each "
            "(rows policy+suffix ...), with acceptance measured on real text by `legato bench spec`."
        ),
    ] = "none",
    program_spec: Annotated[
        str,
        typer.Option(
            help="-w program:FILE: program-level speculation modes, e.g. off,prefill+early,on (README)."
        ),
    ] = "",
) -> None:
    """Compare policies on one workload: a table, and optionally JSON and PNG plots."""
    if ctx.invoked_subcommand is not None:
        return
    from legato.bench import program_bench as pb
    from legato.bench import runner

    if workload.startswith("program:") or program_spec:
        try:
            cfg = pb.from_cli(
                workload, engine, program_spec, programs, concurrency, seed, policies, param or []
            )
        except ValueError as exc:
            raise _fail(str(exc)) from None
        pb.main(cfg, json_out)
        return

    try:
        swept = runner.parse_sweep(sweep) if sweep else []
        params = runner.parse_params(param or [])
        names = runner.parse_list(policies) or _all_policies()
        run = _run_with_progress(
            workload,
            names,
            engine=engine,
            programs=programs,
            concurrency=concurrency,
            seed=seed,
            gpu=gpu,
            model=model,
            replicas=replicas,
            tiers=runner.parse_list(tiers),
            workload_params=params,
            sweep=swept,
            jobs=jobs,
            spec=runner.parse_list(spec),
        )
    except runner.BenchInputError as exc:
        raise _fail(str(exc)) from None
    _emit(run, json_out, plot, html)


def _all_policies() -> list[str]:
    from legato.scheduler.baselines import POLICIES

    return list(POLICIES)


def _run_with_progress(workload: str, policies: list[str], **kwargs: Any) -> BenchRun:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from legato.bench.runner import execute_bench

    tasks: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done, total=total)

        return execute_bench(workload, policies, progress=progress, **kwargs)


def _emit(run: BenchRun, json_out: Path | None, plot: Path | None, html: Path | None = None) -> None:
    from rich.console import Console

    from legato.bench.metrics import tcts
    from legato.bench.report import (
        render_sweep_table,
        render_table,
        render_tenant_table,
        render_tier_table,
        write_json,
    )

    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=160)
    console.print(render_table(run.report))
    sweep_table = render_sweep_table(run.report)
    if sweep_table is not None:
        console.print(sweep_table)
    tier_table = render_tier_table(run.report)
    if tier_table is not None:
        console.print(tier_table)
    tenant_table = render_tenant_table(run.report)
    if tenant_table is not None:
        console.print(tenant_table)
    if json_out is not None:
        write_json(run.report, json_out)
        console.print(f"wrote {json_out}")
    if plot is not None:
        from legato.bench.plots import plot_bench

        plot_bench(plot, {name: tcts(outcome) for name, outcome in run.outcomes.items()}, run.report)
        console.print(f"wrote {plot}")
    if html is not None:
        from legato.bench.html_report import write_html

        write_html(run, html)
        console.print(f"wrote {html}")


@bench_app.command("engine")
def engine_bench(
    json_out: Annotated[
        Path | None, typer.Option("--json", callback=output_path, help="Write the results JSON here.")
    ] = None,
    device: DeviceOpt = "cpu",
    quick: Annotated[bool, typer.Option("--quick", help="A short run (smoke test).")] = False,
) -> None:
    """Microbenchmark the embedded torch engine (against its baseline)."""
    from legato.bench.engine_bench import main

    main(json_out, device=device, quick=quick)


@bench_app.command("structured")
def structured_bench(
    json_out: Annotated[
        Path | None, typer.Option("--json", callback=output_path, help="Write the results JSON here.")
    ] = None,
    device: DeviceOpt = "cpu",
    quick: Annotated[bool, typer.Option("--quick", help="A short run (smoke test).")] = False,
) -> None:
    """Decode tokens/s of the torch engine with and without a json_schema constraint (batch 8)."""
    from legato.bench.structured_bench import main

    main(json_out, device=device, quick=quick)


@bench_app.command("cache")
def cache_bench(
    redis_url: Annotated[
        str | None,
        typer.Option(help="Redis to measure. Omitted: the bench starts its own redis-server on a free port."),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", callback=output_path, help="Write the results JSON here.")
    ] = None,
    prefix_tokens: Annotated[int, typer.Option(help="Prompt length of the TTFT comparison.")] = 4000,
    chunk_blocks: Annotated[int, typer.Option(help="Engine blocks per Redis value.")] = 16,
    repeats: Annotated[int, typer.Option(help="Rounds per measurement (medians are reported).")] = 5,
) -> None:
    """KV tiers: Redis-tier put/get GB/s vs raw Redis SET/GET of same-size values, and TTFT of a
    long prefix on the torch engine (recompute vs host-tier load vs Redis load, and the cost
    model's choice). Flushes the Redis database it is given."""
    import json

    from legato.bench.cache_bench import CacheBenchConfig, format_report, run_cache_bench

    cfg = CacheBenchConfig(redis_url, prefix_tokens, chunk_blocks, repeats)
    result = run_cache_bench(cfg, lambda msg: typer.echo(msg, err=True))
    typer.echo(format_report(result))
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
        typer.echo(f"wrote {json_out}")


@bench_app.command("bound")
def bound(
    workload: Annotated[
        str, typer.Option("--workload", "-w", help="Workload, as for `legato bench`.")
    ] = "swe",
    programs: Annotated[int, typer.Option("--programs", "-n", help="Programs in the workload.")] = 512,
    seed: Annotated[int, typer.Option(help="Seed of the workload.")] = 0,
    gpu: Annotated[str, typer.Option(help="GPU preset: h100, a10, t4.")] = "h100",
    model: Annotated[str, typer.Option(help="Model preset.")] = "llama-3.1-8b",
    baseline: Annotated[
        float | None, typer.Option(help="A policy's steps/min (e.g. fcfs-lru's): also print the ratio bound.")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Workload parameter key=value (repeatable).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", callback=output_path, help="Write the bound JSON here.")
    ] = None,
) -> None:
    """Upper bound on the steps/min of any policy that keeps KV on the simulated replica's device."""
    import json

    from legato.bench import kv_bound, runner

    if baseline is not None and not baseline > 0:
        raise _fail(f"--baseline is a policy's steps/min and must be > 0, got {baseline}")
    try:
        params = runner.parse_params(param or [])
        config = runner.sim_config(gpu, model, replicas=1, tiers=[])
        result = kv_bound.compute(runner.build(workload, programs, seed, params), config)
    except runner.BenchInputError as exc:
        raise _fail(str(exc)) from None
    kv_bound.render(result, workload, baseline)
    if json_out is not None:
        record = {"workload": workload, "programs": programs, **result.as_dict()}
        json_out.write_text(json.dumps(record, indent=2))


@bench_app.command("matrix")
def matrix(
    miniswe: Annotated[
        str, typer.Option(help="The mini-swe-agent chat log (chat: workload, burst arrival).")
    ] = "../shared/traces/miniswe_deepseek.jsonl.gz",
    mooncake: Annotated[
        str, typer.Option(help="The Mooncake conversation trace (trace: workload).")
    ] = "../shared/traces/mooncake_conversation_trace.jsonl",
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Cells run in parallel processes.")] = 2,
    quick: Annotated[bool, typer.Option("--quick", help="A few small cells (smoke test).")] = False,
    suite: Annotated[
        str,
        typer.Option(
            help="main: the workloads policy work is judged on; variants: the same generators with "
            "parameters the policy was not developed on (does a change generalise?).",
        ),
    ] = "main",
    cells_only: Annotated[
        list[str] | None,
        typer.Option(
            "--cells",
            help="Only the cells whose key (workload/gpu/cN/tiers) matches this shell glob, e.g. "
            "'chat/a10/*' (repeatable).",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(min=0, max=2**32 - 1, help="Seed of the workloads (judge a change over several).")
    ] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", callback=output_path, help="Write the matrix JSON here.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(callback=output_path, help="Write a heat map PNG of the ratios here.")
    ] = None,
) -> None:
    """Legato against every peer and the bounds over workloads x GPU x concurrency x tiers: per
    cell, Legato's ratio to the best peer in steps/min and in mean TCT, and the worst cell."""
    from rich.console import Console

    from legato.bench import matrix as mx

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    err = Console(stderr=True)
    try:
        cells = mx.plan(quick, cells_only or (), suite)
    except ValueError as exc:
        raise _fail(str(exc)) from None

    def progress(done: int, total: int, cell: dict[str, Any]) -> None:
        err.print(
            f"[{done}/{total}] {cell['cell']}: steps {cell['steps_ratio']:.2f}x, "
            f"TCT {cell['tct_ratio']:.2f}x ({cell['seconds']:.1f}s)"
        )

    try:
        result = mx.run_matrix(cells, {"miniswe": miniswe, "mooncake": mooncake}, jobs, progress, seed, suite)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    console.print(mx.render(result))
    by_key = {c["cell"]: c for c in result["cells"]}
    for label, key in (
        ("worst cell", "worst"),
        ("worst steps/min", "worst_steps"),
        ("worst TCT", "worst_tct"),
    ):
        cell = by_key[result[key]]
        console.print(
            f"{label}: {cell['cell']}  steps {cell['steps_ratio']:.3f}x vs {cell['best_peer_steps']}, "
            f"TCT {cell['tct_ratio']:.3f}x vs {cell['best_peer_tct']}"
        )
    console.print(
        f"{result['passed']}/{len(cells)} cells pass (steps/min >= {mx.STEPS_BAR}x and mean TCT <= "
        f"{mx.TCT_BAR}x the best peer's); {len(cells)} cells in {result['wall_s']:.0f} s"
    )
    if json_out is not None:
        mx.write_json(result, json_out)
        console.print(f"wrote {json_out}")
    if plot is not None:
        mx.plot(result, plot)
        console.print(f"wrote {plot}")


@bench_app.command("matrix-diff")
def matrix_diff(
    before: Annotated[Path, typer.Argument(help="A `legato bench matrix --json` file (the baseline).")],
    after: Annotated[Path, typer.Argument(help="Another, of the same seed (the change).")],
    min_change: Annotated[
        float,
        typer.Option(min=0.0, help="List cells whose steps/min or TCT ratio moved at least this much."),
    ] = 0.01,
) -> None:
    """What a change did to the matrix: cells that flipped across the bar or whose ratios moved,
    and the pass counts before and after (two runs of the same seed)."""
    from rich.console import Console

    from legato.bench import matrix_diff as md

    try:
        diff = md.compare(md.load(before), md.load(after), min_change)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    console.print(md.render(diff))
    flips = sum(c.flipped for c in diff.changes)
    console.print(
        f"{diff.passed_before} -> {diff.passed_after} of {diff.common} cells pass; {flips} flipped, "
        f"{len(diff.changes) - flips} more moved by >= {min_change}"
    )
    for label, keys in (("only in BEFORE", diff.only_before), ("only in AFTER", diff.only_after)):
        if keys:
            console.print(f"{label} (not compared): {', '.join(keys)}")


@bench_app.command("decide")
def decide(
    policies: Annotated[
        str, typer.Option(help="Comma list of policies to time (default: every registered one).")
    ] = "",
    programs: Annotated[int, typer.Option("--programs", "-n", help="Active programs at once.")] = 10_000,
    events: Annotated[int, typer.Option(help="Events timed per policy (after a warm-up).")] = 200_000,
    replicas: Annotated[int, typer.Option(help="Replicas in the fake cluster view.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic event stream.")] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", callback=output_path, help="Write the results JSON here.")
    ] = None,
) -> None:
    """Microbenchmark the cost of one policy decision per event, with many active programs."""
    from legato.bench.decision_bench import main

    main(policies, programs=programs, events=events, replicas=replicas, seed=seed, json_out=json_out)


@bench_app.command("load")
def load(
    url: Annotated[
        list[str],
        typer.Option(
            help="Base URL of a running `legato serve`; repeat for several instances sharing one "
            "Redis store (agents are spread over them; each one's memory is reported)."
        ),
    ],
    mode: Annotated[
        str, typer.Option(help="proxy: agents via /v1/chat/completions; workflow: /v1/runs + SSE events.")
    ] = "proxy",
    runs: Annotated[int, typer.Option(min=1, help="Concurrent agents (programs back to back).")] = 200,
    duration: Annotated[float, typer.Option(min=0.1, help="Seconds to keep submitting.")] = 120.0,
    turns: Annotated[int, typer.Option(min=1, help="Streamed LLM calls per program.")] = 4,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens per call.")] = 32,
    tool_s: Annotated[float, typer.Option(min=0.0, help="Mean simulated tool time between calls.")] = 2.0,
    ramp_up: Annotated[
        float,
        typer.Option(min=0.0, help="Seconds over which the agents start, evenly spread (0: all at once)."),
    ] = 0.0,
    api_key: Annotated[str | None, typer.Option(envvar="LEGATO_API_KEY", help="Tenant API key.")] = None,
    pid: Annotated[int | None, typer.Option(help="Sample this server PID's RSS (default: /metrics).")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", callback=output_path, help="Write the report JSON here.")
    ] = None,
) -> None:
    """Load-test a server over HTTP: concurrent tool-using agents through the OpenAI proxy (or
    declarative runs through /v1/runs), all streamed; reports ok/errors, latency percentiles and
    server memory over time."""
    import anyio
    import httpx

    from legato.bench.load_bench import LoadConfig, run_load
    from legato.bench.load_report import write_report

    try:
        cfg = LoadConfig(
            url[0], runs, mode, duration, turns, max_tokens, tool_s, api_key=api_key, pid=pid,
            more_urls=tuple(url[1:]), ramp_up_s=ramp_up,
        )  # fmt: skip
        report = anyio.run(run_load, cfg)
    except (ValueError, RuntimeError, OSError) as exc:
        raise _fail(str(exc)) from exc
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach {url}: {exc}") from exc
    typer.echo(report.table())
    if json_out is not None:
        write_report(report, json_out)
        typer.echo(f"wrote {json_out}")
    if report.requests_failed:
        raise typer.Exit(1)


@bench_app.command("spec")
def spec(
    trace: Annotated[
        Path, typer.Option(help="The mini-swe-agent trace (full text of real agent sessions).")
    ] = Path("../shared/traces/miniswe_deepseek.jsonl.gz"),
    drafters: Annotated[
        str, typer.Option(help="Comma list: suffix, ngram (each at every --draft-lens).")
    ] = "suffix,ngram",
    ablations: Annotated[
        str,
        typer.Option(
            help="Comma list measured at the largest draft length only: suffix-local, suffix-agent."
        ),
    ] = "suffix-local,suffix-agent",
    draft_lens: Annotated[str, typer.Option(help="Comma list of draft lengths (1..64).")] = "1,2,4,8,16",
    adaptive: Annotated[
        bool, typer.Option(help="Also measure the adaptive length (max: the largest).")
    ] = True,
    sessions: Annotated[int, typer.Option(help="Held-out sessions measured (0: all 62).")] = 8,
    cache_dir: Annotated[Path, typer.Option(help="Where the trained tokenizer is cached.")] = Path(
        ".legato/spec"
    ),
    json_out: Annotated[
        Path | None, typer.Option("--json", callback=output_path, help="Write the results JSON here.")
    ] = None,
    sim_table: Annotated[
        Path | None,
        typer.Option(
            callback=output_path,
            help="Also store the measured table as the simulator's acceptance model for swe "
            "(legato/sim/data/spec_acceptance.json).",
        ),
    ] = None,
    decode_batches: Annotated[
        str, typer.Option(help="Batch sizes of the torch-engine decode replay with/without speculation.")
    ] = "1,8,32",
    decode_output: Annotated[int, typer.Option(help="Output tokens per replayed request (max).")] = 64,
    decode_repeats: Annotated[int, typer.Option(help="Runs of each mode per batch size.")] = 2,
    decode_max_draft: Annotated[int, typer.Option(help="Longest draft in the replay (1..64).")] = 16,
    device: DeviceOpt = "cpu",
) -> None:
    """Acceptance of drafted tokens on real agent text: tokens per verify step by drafter and
    draft length (BPE tokens; greedy verification semantics)."""
    import json

    from legato.bench import runner
    from legato.bench.spec_bench import SpecBenchConfig, render, run_spec_bench, write_sim_table
    from legato.bench.spec_decode import decode_config

    try:
        lens = tuple(int(v) for v in runner.parse_list(draft_lens))
    except ValueError:
        raise _fail(f"--draft-lens must be a comma list of integers, got {draft_lens!r}") from None
    try:
        decode = decode_config(decode_batches, decode_max_draft, decode_output, decode_repeats, device)
        cfg = SpecBenchConfig(
            decode=decode,
            trace=trace,
            drafters=tuple(runner.parse_list(drafters)),
            ablations=tuple(runner.parse_list(ablations)),
            draft_lens=lens,
            adaptive=adaptive,
            sessions=sessions,
            cache_dir=cache_dir,
        )
        if not trace.is_file():
            raise ValueError(f"--trace {trace} not found")
        report = run_spec_bench(cfg, lambda msg: typer.echo(msg, err=True))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    typer.echo(render(report))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2))
        typer.echo(f"wrote {json_out}")
    if sim_table is not None:
        write_sim_table(report, sim_table)
        typer.echo(f"wrote {sim_table}")


@bench_app.command("calibrate")
def calibrate(
    requests: Annotated[int, typer.Option(help="Requests measured on the torch engine.")] = 24,
    seed: Annotated[int, typer.Option(help="Seed of the measured prompts.")] = 0,
) -> None:
    """Fit the simulator's cost model to the torch engine and report the error."""
    if requests <= 0:
        raise _fail(f"--requests must be > 0, got {requests}")
    from legato.sim.calibrate import main

    main(requests, seed)


bench_app.command("rl")(rl_command)  # legato/bench/rl_command.py


def register(app: typer.Typer) -> None:
    """Add `legato bench` (and its subcommands) to `app`."""
    app.add_typer(bench_app, name="bench")
