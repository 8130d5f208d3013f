"""`legato bench matrix`: Legato against every peer and the bounds, over workloads x GPU x load x tiers.

Why: a policy tuned on one workload can lose elsewhere; the matrix shows, in one deterministic run,
Legato's ratio to the *best* peer in every cell (steps/min: higher is better; mean TCT: lower is
better), and the worst cell.

* **Policies** come from the registry (`legato.scheduler.baselines.POLICIES`), so renamed or new
  baselines plug in: `legato` is measured; every other policy whose traits are neither `oracle`
  (clairvoyant eviction) nor `unlimited_kv` is a peer; `unlimited_kv` policies (`infinite-kv`) are
  reported as bounds, with `legato bench bound`'s KV bound (`kv_bound.compute`).
* **Cells**: workloads {swe, multiagent, rl-grpo, text2sql, chat, the mini-swe-agent log replayed
  with `arrival=burst`, the Mooncake conversation trace} x GPU {h100, a10} x concurrency {16, 64}
  x tiers {none, host+redis}, on llama-3.1-8b. Program counts are fixed per workload (`MATRIX`)
  so the whole matrix runs in minutes on two cores. A program with a call larger than one
  replica's KV pool cannot run on that GPU at all; such programs are left out of that cell
  (`dropped` in the JSON; the workload is built with spare programs so the cell keeps its count).
* **Suites**: `main` (the cells above, `MATRIX`) is what policy work is judged on. `variants`
  (`VARIANTS`) is a check of how a change generalises: the same generators with parameters the
  policy was not developed on (users who answer in 3 s or 40 s, support-desk sessions with long
  tool-description prompts and short answers, runs of 3-12 steps, narrow fan-outs, 1-4-turn
  rollouts, sessions arriving over time instead of at once), over the same GPUs x loads x tiers.
  A change that wins `main` and loses `variants` is fitted to the main workloads.
* **Determinism**: the simulator is deterministic and each cell is computed independently, so the
  result does not depend on `--jobs` or on the order cells finish in. `--seed` draws other
  synthetic programs (and trace samples where a loader samples): cells within a few percent of
  the bar move with it, so judge a policy change over several seeds (`legato bench matrix-diff`
  compares two runs of one seed cell by cell).
* **A subset**: `--cells GLOB` (repeatable) runs only the cells whose key matches, e.g.
  `chat/a10/*`; each policy's makespan, prefill tokens computed, preemptions, mean decode
  batch, share of the KV pool in use and where a call's time went (`call_phases`: held by the
  policy, queued in the engine, running) are in the JSON, beside the two ratios they explain,
  with the share of time a replica where the engine may pack was gated by Legato
  (`legato_gated_share`: which regime it chose, `legato.scheduler.regime`).
* **The bar** (issue 13): a cell passes when Legato's steps/min is >= `STEPS_BAR` x the best
  peer's and its mean TCT <= `TCT_BAR` x the best peer's; `passed` counts them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legato.bench.metrics import mean_tct_s, steps_per_min
from legato.sim.workload import ProgramSpec, Workload

if TYPE_CHECKING:
    from legato.sim.driver import CallTrace

MINISWE_DEFAULT = "../shared/traces/miniswe_deepseek.jsonl.gz"
MOONCAKE_DEFAULT = "../shared/traces/mooncake_conversation_trace.jsonl"
GPUS = ("h100", "a10")
CONCURRENCY = (16, 64)
TIERS: tuple[tuple[str, ...], ...] = ((), ("host", "redis"))
MODEL = "llama-3.1-8b"
STEPS_BAR = 0.97
TCT_BAR = 1.0
SPARE = 4  # build this many times the programs, so cells that drop too-large programs keep their count


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    label: str
    name: str  # as `legato bench --workload` takes it ({miniswe} / {mooncake}: the trace paths)
    programs: int
    params: tuple[tuple[str, str], ...] = ()


MATRIX: tuple[WorkloadSpec, ...] = (
    WorkloadSpec("swe", "swe", 64),
    WorkloadSpec("multiagent", "multiagent", 32),
    WorkloadSpec("rl-grpo", "rl-grpo", 64),
    WorkloadSpec("text2sql", "text2sql", 64),
    WorkloadSpec("chat", "chat", 64),
    WorkloadSpec("miniswe", "chat:{miniswe}", 32, (("arrival", "burst"),)),
    WorkloadSpec("mooncake", "trace:{mooncake}", 128, (("limit", "3000"),)),
)
VARIANTS: tuple[WorkloadSpec, ...] = (
    WorkloadSpec("chat-think3", "chat", 64, (("think_median_s", "3"),)),
    WorkloadSpec("chat-think40", "chat", 64, (("think_median_s", "40"),)),
    WorkloadSpec(
        "support",
        "chat",
        64,
        (
            ("system_min", "1500"),
            ("system_max", "3000"),
            ("user_max", "200"),
            ("output_min", "30"),
            ("output_max", "200"),
        ),
    ),
    WorkloadSpec("chat-open", "chat", 64, (("arrival_rate", "0.2"),)),
    WorkloadSpec("swe-short", "swe", 64, (("steps_min", "3"), ("steps_max", "12"))),
    WorkloadSpec("swe-open", "swe", 64, (("arrival_rate", "0.05"),)),
    WorkloadSpec("multiagent-narrow", "multiagent", 32, (("workers_min", "2"), ("workers_max", "3"))),
    WorkloadSpec("multiagent-open", "multiagent", 32, (("arrival_rate", "0.05"),)),
    WorkloadSpec("rl-grpo-short", "rl-grpo", 64, (("turns_min", "1"), ("turns_max", "4"))),
    WorkloadSpec("text2sql-open", "text2sql", 64, (("arrival_rate", "0.5"),)),
)
SUITES: dict[str, tuple[WorkloadSpec, ...]] = {"main": MATRIX, "variants": VARIANTS}
QUICK: tuple[WorkloadSpec, ...] = (
    WorkloadSpec("swe", "swe", 8),
    WorkloadSpec("miniswe", "chat:{miniswe}", 4, (("arrival", "burst"),)),
)


@dataclass(frozen=True, slots=True)
class Cell:
    workload: WorkloadSpec
    gpu: str
    concurrency: int
    tiers: tuple[str, ...]

    @property
    def key(self) -> str:
        tiers = "+".join(self.tiers) or "none"
        return f"{self.workload.label}/{self.gpu}/c{self.concurrency}/{tiers}"


def roles() -> tuple[list[str], list[str]]:
    """(peers, bounds) from the policy registry (see the module docstring)."""
    from legato.scheduler.baselines import POLICIES

    peers: list[str] = []
    bounds: list[str] = []
    for name, factory in POLICIES.items():
        traits = factory().traits
        if name == "legato" or traits.oracle:
            continue
        (bounds if traits.unlimited_kv else peers).append(name)
    return peers, bounds


def plan(quick: bool = False, patterns: Sequence[str] = (), suite: str = "main") -> list[Cell]:
    """The cells of `suite` (`SUITES`) to run, in table order; with `patterns` (shell globs such
    as `chat/a10/*`), only the cells whose key matches one of them (a pattern that matches none
    is an error: a typo must not pass as an empty matrix)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r} (one of {', '.join(SUITES)})")
    if quick:
        cells = [Cell(w, "h100", 16, ()) for w in QUICK]
    else:
        specs = SUITES[suite]
        cells = [Cell(w, g, c, t) for w in specs for g in GPUS for c in CONCURRENCY for t in TIERS]
    if not patterns:
        return cells
    for pattern in patterns:
        if not any(fnmatchcase(c.key, pattern) for c in cells):
            raise ValueError(f"--cells {pattern!r} matches no cell (keys look like {cells[0].key})")
    return [c for c in cells if any(fnmatchcase(c.key, p) for p in patterns)]


def _fit(workload: Workload, capacity: int, keep: int) -> tuple[Workload, int]:
    """The first `keep` programs whose every call fits in `capacity` tokens, and how many of the
    programs before the last kept one did not."""
    fits: list[ProgramSpec] = []
    dropped = 0
    for program in workload.programs:
        if len(fits) == keep:
            break
        if all(c.prompt_tokens + c.output_tokens <= capacity for c in program.calls):
            fits.append(program)
        else:
            dropped += 1
    return dataclasses.replace(workload, programs=tuple(fits)), dropped


# per process: workloads built so far, by (name, programs, params, seed)
_CACHE: dict[tuple[str, int, tuple[tuple[str, str], ...], int], Workload] = {}


def _workload(spec: WorkloadSpec, paths: dict[str, str], seed: int) -> Workload:
    from legato.bench.workloads import build_workload

    name = spec.name.format(**paths)
    key = (name, spec.programs, spec.params, seed)
    if key not in _CACHE:
        _CACHE[key] = build_workload(name, spec.programs * SPARE, seed, dict(spec.params))
    return _CACHE[key]


def passes(cell: dict[str, Any]) -> bool:
    return bool(cell["steps_ratio"] >= STEPS_BAR and cell["tct_ratio"] <= TCT_BAR)


def run_cell(cell: Cell, paths: dict[str, str], seed: int = 0) -> dict[str, Any]:
    """Every policy on one cell: steps/min and mean TCT per policy, the ratios, the bounds."""
    from legato.bench.kv_bound import compute
    from legato.bench.runner import sim_config
    from legato.sim.driver import simulate

    started = time.perf_counter()
    config = sim_config(cell.gpu, MODEL, 1, cell.tiers)
    capacity = config.cost_model().kv_capacity_blocks(config.block_size) * config.block_size
    workload, dropped = _fit(_workload(cell.workload, paths, seed), capacity, cell.workload.programs)
    peers, bounds = roles()
    results: dict[str, dict[str, float]] = {}
    gated_share = 0.0
    for policy in ["legato", *peers, *bounds]:
        trace: list[CallTrace] = []
        outcome = simulate(workload, policy, config, concurrency=cell.concurrency, trace=trace)
        if policy == "legato":
            gated_share = outcome.extra.get("legato_gated_share", 0.0)
        results[policy] = {
            "steps_per_min": steps_per_min(outcome),
            "mean_tct_s": mean_tct_s(outcome),
            # What explains a ratio: steps/min is calls over the makespan (a straggler sets it),
            # recomputation shows in prefill tokens computed and preemptions.
            "makespan_s": outcome.makespan_s,
            "prefill_tokens_computed": outcome.prefill_tokens_computed,
            "preemptions": outcome.preemptions,
            # Prefill that memory-bound decode steps could not hide: what makespan it added.
            "prefill_exposed_s": outcome.extra.get("prefill_exposed_s", 0.0),
            # Memory at work: the decode batch and the KV share requests or pins held.
            "mean_decode_batch": outcome.extra.get("mean_decode_batch", 0.0),
            "kv_in_use_share": outcome.extra.get("kv_in_use_share", 0.0),
            # Where a call's time went: held by the policy, queued in the engine, running.
            **call_phases(trace),
        }
    legato = results["legato"]
    best_steps = max(peers, key=lambda p: (results[p]["steps_per_min"], p))
    best_tct = min(peers, key=lambda p: (results[p]["mean_tct_s"], p))
    bound = compute(workload, config)
    return {
        "cell": cell.key,
        "workload": cell.workload.label,
        "gpu": cell.gpu,
        "concurrency": cell.concurrency,
        "tiers": list(cell.tiers),
        "programs": len(workload.programs),
        "llm_calls": workload.total_calls,
        "dropped": dropped,
        "policies": results,
        "best_peer_steps": best_steps,
        "steps_ratio": _ratio(legato["steps_per_min"], results[best_steps]["steps_per_min"]),
        "best_peer_tct": best_tct,
        "tct_ratio": _ratio(legato["mean_tct_s"], results[best_tct]["mean_tct_s"]),
        "kv_bound_steps_per_min": bound.steps_per_min,
        # Legato's regime where the engine may pack: the share of time it gated (`regime`; 0
        # where the engine packs throughout or the replica gates by its cost model).
        "legato_gated_share": gated_share,
        "seconds": time.perf_counter() - started,
    }


def call_phases(trace: Sequence[CallTrace]) -> dict[str, float]:
    """Mean seconds per call from ready to dispatched (held by the policy), dispatched to first
    admitted (queued in the engine) and admitted to finished (running, preemptions included).
    A ratio's cause shows here: a policy that admits more runs each call longer."""
    n = len(trace) or 1
    return {
        "mean_policy_wait_s": sum(t.dispatched_s - t.ready_s for t in trace) / n,
        "mean_engine_queue_s": sum(t.admitted_s - t.dispatched_s for t in trace) / n,
        "mean_run_s": sum(t.finished_s - t.admitted_s for t in trace) / n,
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def _worker(args: tuple[Cell, dict[str, str], int]) -> dict[str, Any]:
    return run_cell(*args)


def resolve_trace(path: str) -> str:
    """A relative trace path as given (from the working directory) or, when that is absent, from
    the repository root (so the `../shared/traces/...` defaults work from any directory in it)."""
    if Path(path).is_absolute() or Path(path).is_file():
        return path
    beside_repo = Path(__file__).resolve().parents[2] / path
    return str(beside_repo) if beside_repo.is_file() else path


def run_matrix(
    cells: Sequence[Cell],
    paths: dict[str, str],
    jobs: int = 2,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    seed: int = 0,
    suite: str = "main",
) -> dict[str, Any]:
    """Run every cell (in `jobs` processes) and summarise; the result is independent of `jobs`.
    `suite` is recorded in the result (the cells say what ran)."""
    paths = {label: resolve_trace(path) for label, path in paths.items()}
    for label, path in paths.items():
        if any(f"{{{label}}}" in c.workload.name for c in cells) and not Path(path).is_file():
            raise ValueError(f"trace file for {label} not found: {path} (give its path with --{label})")
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    work = [(cell, paths, seed) for cell in cells]
    if jobs <= 1:
        for i, args in enumerate(work):
            results[args[0].key] = _worker(args)
            if progress is not None:
                progress(i + 1, len(work), results[args[0].key])
    else:
        from multiprocessing import get_context

        # Each worker builds a workload the first time one of its cells needs it (`_CACHE`).
        with get_context("spawn").Pool(jobs) as pool:
            for i, result in enumerate(pool.imap_unordered(_worker, work, chunksize=1)):
                results[result["cell"]] = result
                if progress is not None:
                    progress(i + 1, len(work), result)
    ordered = [results[c.key] for c in cells]
    peers, bounds = roles()
    return {
        "model": MODEL,
        "suite": suite,
        "seed": seed,
        "paths": paths,
        "peers": peers,
        "bounds": bounds,
        "cells": ordered,
        "worst_steps": min(ordered, key=lambda r: r["steps_ratio"])["cell"] if ordered else None,
        "worst_tct": max(ordered, key=lambda r: r["tct_ratio"])["cell"] if ordered else None,
        "worst": _worst(ordered),
        "passed": sum(passes(c) for c in ordered),
        "wall_s": time.perf_counter() - started,
    }


def _worst(cells: Sequence[dict[str, Any]]) -> str | None:
    """The cell furthest from the target (steps >= best peer's, TCT <= best peer's): the lowest of
    steps ratio and inverse TCT ratio."""
    if not cells:
        return None
    return str(min(cells, key=lambda r: min(r["steps_ratio"], _ratio(1.0, r["tct_ratio"])))["cell"])


def render(result: dict[str, Any]) -> Any:
    from rich.table import Table

    suite = result.get("suite", "main")
    title = f"legato bench matrix ({result['model']}, {suite}, seed {result['seed']}): Legato / best peer"
    table = Table(title=title)
    for column in ("workload", "gpu", "c", "tiers", "progs", "steps/min", "best peer", "ratio"):
        table.add_column(
            column, justify="right" if column in ("c", "progs", "steps/min", "ratio") else "left"
        )
    for column in ("mean TCT s", "best peer ", "ratio ", "inf-kv", "KV bound"):
        table.add_column(column, justify="left" if column == "best peer " else "right")
    for r in result["cells"]:
        legato = r["policies"]["legato"]
        inf = [r["policies"][b]["steps_per_min"] for b in result["bounds"]]
        table.add_row(
            r["workload"],
            r["gpu"],
            str(r["concurrency"]),
            "+".join(r["tiers"]) or "none",
            str(r["programs"]),
            f"{legato['steps_per_min']:.0f}",
            r["best_peer_steps"],
            _mark(r["steps_ratio"], r["steps_ratio"] >= STEPS_BAR),
            f"{legato['mean_tct_s']:.1f}",
            r["best_peer_tct"],
            _mark(r["tct_ratio"], r["tct_ratio"] <= TCT_BAR),
            f"{inf[0]:.0f}" if inf else "-",
            f"{r['kv_bound_steps_per_min']:.0f}",
        )
    return table


def _mark(value: float, ok: bool) -> str:
    return f"{value:.2f}x" if ok else f"[bold red]{value:.2f}x[/]"


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=2, sort_keys=True))


def plot(result: dict[str, Any], path: Path) -> None:
    """Heat maps of the two ratios: rows are workloads, columns GPU x concurrency x tiers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = result["cells"]
    rows = list(dict.fromkeys(r["workload"] for r in cells))
    cols = list(dict.fromkeys(r["cell"].split("/", 1)[1] for r in cells))
    width = max(11.0, 2.4 + 1.1 * len(cols) * 2)
    fig, axes = plt.subplots(1, 2, figsize=(width, 2.0 + 0.5 * len(rows)), squeeze=False)
    panels = (
        ("steps_ratio", "steps/min, Legato / best peer (>= 1 is better)", "RdYlGn"),
        ("tct_ratio", "mean TCT, Legato / best peer (<= 1 is better)", "RdYlGn_r"),
    )
    for ax, (key, title, cmap) in zip(axes[0], panels, strict=True):
        grid = [[float("nan")] * len(cols) for _ in rows]
        for r in cells:
            grid[rows.index(r["workload"])][cols.index(r["cell"].split("/", 1)[1])] = r[key]
        image = ax.imshow(grid, cmap=cmap, vmin=0.5, vmax=1.5, aspect="auto")
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                if value == value:
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
