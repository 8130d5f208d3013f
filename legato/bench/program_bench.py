"""`legato bench -w program:FILE --engine torch --program-spec off,on`: a real program file (an
example such as `examples/react_coder.py`) run many times on the embedded torch engine with its
real tools, with program-level speculation off and on, in one invocation.

Workload replays (`torch_replay`) have no text and no tools to run early, so program-level
speculation is measured on a real program instead. Every mode runs the same `programs` runs at
`concurrency`, on one shared engine; modes alternate inside each of `rounds` rounds (the order
flips every round) so machine noise hits them alike, and a warm-up run goes first. Each run gets
a distinct tag prepended to the string input named by `vary` (e.g. `task`), so no run finds
another run's prompts in the prefix cache. TCT is each run's wall-clock duration.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

MODES = ("off", "on")
PROGRAM_PARAMS = ("rounds", "vary")


@dataclass(frozen=True, slots=True)
class ProgramBenchConfig:
    path: Path
    modes: tuple[str, ...] = MODES
    programs: int = 8
    concurrency: int = 4
    rounds: int = 3
    vary: str | None = None  # string input that gets a per-run tag
    policy: str = "legato"
    seed: int = 0

    def __post_init__(self) -> None:
        from legato.programs.speculation import parse_program_spec

        if not self.modes or len(set(self.modes)) != len(self.modes):
            raise ValueError(f"--program-spec takes a comma list of distinct modes, got {self.modes!r}")
        for mode in self.modes:
            parse_program_spec(mode)  # a ValueError naming the valid values
        for name in ("programs", "concurrency", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.path.is_file():
            raise ValueError(f"program file {str(self.path)!r} does not exist")


@dataclass
class ModeResult:
    mode: str
    tcts_s: list[float] = field(default_factory=list)
    round_means_s: list[float] = field(default_factory=list)
    failed: int = 0
    errors: list[str] = field(default_factory=list)  # the first few failed runs' errors
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def mean_tct_s(self) -> float:
        return statistics.fmean(self.tcts_s) if self.tcts_s else 0.0


def from_cli(
    workload: str, engine: str, modes: str, programs: int, concurrency: int, seed: int,
    policies: str, params: Sequence[str],
) -> ProgramBenchConfig:  # fmt: skip
    """`legato bench`'s options -> a config; ValueError names what to fix."""
    from legato.bench.runner import parse_list, parse_params

    if not workload.startswith("program:"):
        raise ValueError("--program-spec needs a program workload: -w program:FILE")
    if engine != "torch":
        raise ValueError("-w program:FILE runs a real program: use --engine torch")
    names = parse_list(policies)
    if len(names) > 1:
        raise ValueError("a program bench runs one policy: give at most one --policies name")
    return parse_config(
        workload.removeprefix("program:"), parse_list(modes or "off,on"), programs, concurrency, seed,
        names[0] if names else "legato", parse_params(params),
    )  # fmt: skip


def parse_config(
    path: str, modes: Sequence[str], programs: int, concurrency: int, seed: int, policy: str,
    params: Mapping[str, str],
) -> ProgramBenchConfig:  # fmt: skip
    """Checked values -> a config; ValueError names what is wrong."""
    unknown = sorted(set(params) - set(PROGRAM_PARAMS))
    if unknown:
        raise ValueError(f"unknown --param {', '.join(unknown)} for a program bench; valid: rounds, vary")
    try:
        rounds = int(params.get("rounds", "3"))
    except ValueError:
        raise ValueError(f"rounds must be an integer, got {params['rounds']!r}") from None
    return ProgramBenchConfig(
        Path(path), tuple(modes), programs, concurrency, rounds, params.get("vary"), policy or "legato", seed
    )


async def _one_mode(
    cfg: ProgramBenchConfig, loaded: Any, scheduler: Any, mode: str, count: int, tag: str
) -> tuple[list[float], list[str], dict[str, int]]:
    from legato.programs.executor import Executor
    from legato.programs.loader import resolve_inputs
    from legato.programs.speculation import parse_program_spec
    from legato.tools.registry import default_registry
    from legato.tools.runtime import ToolRuntime

    base = await resolve_inputs(loaded)
    if cfg.vary is not None and not isinstance(base.get(cfg.vary, ""), str):
        raise ValueError(f"vary={cfg.vary}: that input is not a string")
    limit = anyio.Semaphore(cfg.concurrency)
    tcts: list[float] = []
    errors: list[str] = []
    async with (
        ToolRuntime(loaded.registry or default_registry) as tools,
        Executor(scheduler, tools, speculation=parse_program_spec(mode)) as ex,
    ):

        async def one(i: int) -> None:
            inputs = dict(base)
            if cfg.vary is not None:
                inputs[cfg.vary] = f"[{tag}-{i}] {inputs.get(cfg.vary, '')}"
            async with limit:
                result = await ex.run(loaded.program, inputs, tenant=loaded.tenant)
            tcts.append(result.duration_s)
            if not result.ok:
                errors.append(result.error or result.status.value)

        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, i)
        counters = asdict(ex.speculation_counters)
    return tcts, errors, counters


async def run_program_bench_async(
    cfg: ProgramBenchConfig, progress: Callable[[str, int, int], None] | None = None, **engine: Any
) -> dict[str, ModeResult]:
    """Run the bench on one torch engine (`engine`: `load_engine` overrides, e.g. a tiny model)."""
    from legato.engine_adapter.torch import load_engine
    from legato.programs.loader import load_file
    from legato.scheduler.by_name import make_scheduler

    loaded = load_file(cfg.path)
    results = {mode: ModeResult(mode) for mode in cfg.modes}
    eng = load_engine(None, "cpu", seed=cfg.seed, **engine)
    async with eng:
        scheduler: Any = make_scheduler([eng], cfg.policy)
        async with scheduler:
            await _one_mode(cfg, loaded, scheduler, cfg.modes[0], 1, "warmup")
            for r in range(cfg.rounds):
                order = cfg.modes if r % 2 == 0 else tuple(reversed(cfg.modes))
                for mode in order:
                    tcts, errors, counters = await _one_mode(
                        cfg, loaded, scheduler, mode, cfg.programs, f"r{r}{mode}"
                    )
                    res = results[mode]
                    res.tcts_s.extend(tcts)
                    res.round_means_s.append(statistics.fmean(tcts))
                    res.failed += len(errors)
                    res.errors.extend(errors[: max(0, 3 - len(res.errors))])
                    for key, value in counters.items():
                        res.counters[key] = res.counters.get(key, 0) + value
                    if progress is not None:
                        progress(f"program-spec {mode}", r + 1, cfg.rounds)
    return results


def report(cfg: ProgramBenchConfig, results: Mapping[str, ModeResult]) -> dict[str, Any]:
    base = results[cfg.modes[0]]
    first = base.mean_tct_s
    rows = {}
    for mode, res in results.items():
        # Paired by round (the modes of a round ran back to back), so slow rounds cancel out.
        paired = [m / b for m, b in zip(res.round_means_s, base.round_means_s, strict=True) if b > 0]
        rows[mode] = {
            "runs": len(res.tcts_s),
            "failed": res.failed,
            "errors": res.errors,
            "mean_tct_s": res.mean_tct_s,
            "median_tct_s": statistics.median(res.tcts_s) if res.tcts_s else 0.0,
            "round_means_s": res.round_means_s,
            "tct_ratio": res.mean_tct_s / first if first else 0.0,
            "round_ratios": paired,
            "round_ratio_median": statistics.median(paired) if paired else 0.0,
            **res.counters,
        }
    return {
        "bench": "program-spec",
        "program": str(cfg.path),
        "engine": "torch",
        "policy": cfg.policy,
        "programs": cfg.programs,
        "concurrency": cfg.concurrency,
        "rounds": cfg.rounds,
        "vary": cfg.vary,
        "modes": rows,
    }


def render(rep: Mapping[str, Any]) -> str:
    lines = [
        f"program {rep['program']} on torch, policy {rep['policy']}: {rep['programs']} runs x "
        f"{rep['rounds']} rounds per mode, concurrency {rep['concurrency']}",
        "| program-spec | runs | failed | mean TCT s | median TCT s | TCT x | TCT x per round: median "
        "(min-max) | prefills | tools started | used | discarded |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for mode, row in rep["modes"].items():
        ratios = row["round_ratios"] or [0.0]
        spread = f"{row['round_ratio_median']:.3f} ({min(ratios):.2f}-{max(ratios):.2f})"
        lines.append(
            f"| {mode} | {row['runs']} | {row['failed']} | {row['mean_tct_s']:.3f} "
            f"| {row['median_tct_s']:.3f} | {row['tct_ratio']:.3f} | {spread} "
            f"| {row.get('prefills', 0)} | {row.get('tools_started', 0)} | {row.get('tools_used', 0)} "
            f"| {row.get('tools_discarded', 0)} |"
        )
    return "\n".join(lines)


def main(cfg: ProgramBenchConfig, json_out: Path | None) -> None:
    """Run, print the table, write the JSON."""
    import json

    rep = run_program_bench(cfg)
    print(render(rep))
    if json_out is not None:
        json_out.write_text(json.dumps(rep, indent=2))
        print(f"wrote {json_out}")


def run_program_bench(cfg: ProgramBenchConfig) -> dict[str, Any]:
    """Blocking: run the bench and return its report."""
    started = time.monotonic()
    results = anyio.run(run_program_bench_async, cfg)
    rep = report(cfg, results)
    rep["wall_s"] = time.monotonic() - started
    return rep


__all__ = [
    "MODES",
    "ProgramBenchConfig",
    "from_cli",
    "main",
    "parse_config",
    "render",
    "report",
    "run_program_bench",
]
