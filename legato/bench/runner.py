"""Run one workload under several policies, side by side, and build the report.

The workload is built **once** and the identical `Workload` object is replayed under every policy
(and every swept concurrency), so all policies see the same programs, prompts, tool latencies and
arrival sequence; differences in the numbers come from the policies alone. With `jobs > 1` the
replays run in worker processes, each holding an equal copy of the workload (generators are
deterministic), and the report is the same byte for byte.

Input is validated before anything runs; every problem a user can fix raises `BenchInputError`
naming it and the valid choices (the CLI turns it into exit status 2).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from legato.bench.metrics import PolicyMetrics, summarize
from legato.bench.report import build_report
from legato.bench.workloads import build_workload
from legato.sim.outcome import RunOutcome
from legato.sim.workload import Workload

ENGINES = ("sim", "torch")
SWEEP_PARAMS = ("concurrency",)

# progress(label, done_programs, total_programs); label is the policy, or "policy @ c=N" in a sweep.
ProgressFn = Callable[[str, int, int], None]


class BenchInputError(ValueError):
    """A bench argument the user must fix (unknown name, bad number, malformed list)."""


@dataclass(frozen=True, slots=True)
class BenchRun:
    """A finished bench: the JSON report plus the raw outcomes (plots need per-program TCTs)."""

    report: dict[str, Any]
    outcomes: dict[str, RunOutcome]  # at the main concurrency, by policy
    sweep: dict[int, dict[str, RunOutcome]]  # by swept concurrency, then policy


def parse_sweep(text: str) -> list[int]:
    """`concurrency=32,64,128` -> [32, 64, 128] (sorted, unique, each > 0)."""
    key, sep, values = text.partition("=")
    if not sep or key.strip() not in SWEEP_PARAMS:
        raise BenchInputError(
            f"--sweep must look like concurrency=32,64,128 (sweepable: {', '.join(SWEEP_PARAMS)})"
        )
    try:
        numbers = sorted({int(v) for v in values.split(",") if v.strip()})
    except ValueError:
        raise BenchInputError(f"--sweep values must be integers, got {values!r}") from None
    if not numbers or numbers[0] <= 0:
        raise BenchInputError(f"--sweep needs one or more integers > 0, got {values!r}")
    return numbers


def parse_params(items: Sequence[str]) -> dict[str, str]:
    """`["steps_max=30", "tenants=2"]` -> {"steps_max": "30", "tenants": "2"}."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BenchInputError(f"--param must look like key=value, got {item!r}")
        params[key.strip()] = value.strip()
    return params


def parse_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _check_positive(name: str, value: int) -> None:
    if value <= 0:
        raise BenchInputError(f"{name} must be > 0, got {value}")


def sim_config(gpu: str, model: str, replicas: int, tiers: Sequence[str]) -> Any:
    from legato.sim import hardware, models
    from legato.sim.driver import SimConfig

    try:
        hardware.gpu(gpu)
        models.model(model)
        hardware.tier_specs(list(tiers))  # host[:GB], redis[:GB], redis-slow[:GB]; fastest first
    except ValueError as exc:
        raise BenchInputError(f"--tiers: {exc}" if "tier" in str(exc) else str(exc)) from None
    return SimConfig(gpu=gpu, model=model, replicas=replicas, tiers=tuple(tiers))


def _check_fits(workload: Workload, config: Any) -> None:
    """Fail early, with the numbers, when the model or a single call cannot fit on one replica."""
    try:
        capacity = config.cost_model().kv_capacity_blocks(config.block_size) * config.block_size
    except ValueError as exc:
        raise BenchInputError(f"{exc}; pick a larger --gpu or a smaller --model") from None
    need, program, call = max(
        (
            (c.prompt_tokens + c.output_tokens, p.program_id, c.node)
            for p in workload.programs
            for c in p.calls
        ),
        default=(0, "", ""),
    )
    if need > capacity:
        raise BenchInputError(
            f"call {call} of {program} needs {need} tokens of KV but one replica of {config.model} on "
            f"{config.gpu} holds {capacity}; pick a larger --gpu, a smaller --model, or shrink the workload "
            "(--param, --programs)"
        )


def spec_label(policy: str, method: str) -> str:
    """A report row: the policy, with `+method` when it speculates."""
    return policy if method == "none" else f"{policy}+{method}"


def _check_spec(
    methods: Sequence[str], workload_name: str, engine: str
) -> list[tuple[str, tuple[tuple[int, float], ...]]]:
    """(method, measured acceptance) per --spec method; BenchInputError for a bad one."""
    from legato.sim.spec import acceptance

    if not methods:
        raise BenchInputError("--spec needs at least one method (none, suffix, ngram)")
    if len(set(methods)) != len(methods):
        raise BenchInputError(f"a --spec method is listed twice: {', '.join(methods)}")
    if engine != "sim" and list(methods) != ["none"]:
        raise BenchInputError(
            "--spec applies to --engine sim only (the torch replay does not turn speculation on)"
        )
    try:
        return [(method, acceptance(workload_name, method)) for method in methods]
    except ValueError as exc:
        raise BenchInputError(str(exc)) from None


def _check_policies(policies: Sequence[str]) -> None:
    from legato.scheduler.baselines import POLICIES

    if not policies:
        raise BenchInputError(f"give at least one policy; valid: {', '.join(POLICIES)}")
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise BenchInputError(f"unknown policy {', '.join(unknown)}; valid: {', '.join(POLICIES)}")
    if len(set(policies)) != len(policies):
        raise BenchInputError(f"a policy is listed twice: {', '.join(policies)}")


def build(workload_name: str, programs: int, seed: int, params: Mapping[str, object]) -> Workload:
    try:
        return build_workload(workload_name, programs, seed, params)
    except ValueError as exc:
        raise BenchInputError(str(exc)) from None


def execute_bench(
    workload_name: str,
    policies: Sequence[str],
    *,
    engine: str = "sim",
    programs: int,
    concurrency: int,
    seed: int = 0,
    gpu: str = "h100",
    model: str = "llama-3.1-8b",
    replicas: int = 1,
    tiers: Sequence[str] = (),
    workload_params: Mapping[str, object] | None = None,
    sweep: Sequence[int] = (),
    jobs: int = 1,
    progress: ProgressFn | None = None,
    spec: Sequence[str] = ("none",),
) -> BenchRun:
    """Validate, build the workload once, replay it under every policy (and concurrency), and
    under every speculation method in `spec` (sim only; rows `policy+method`)."""
    if engine not in ENGINES:
        raise BenchInputError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    from legato.bench.torch_replay import TORCH_PARAMS

    # Engine options travel in --param beside the workload's; taken out before the generator.
    names = TORCH_PARAMS if engine == "torch" else SIM_PARAMS
    workload_params, engine_options = _split_engine_params(workload_params or {}, names)
    for name, value in (
        ("programs", programs),
        ("concurrency", concurrency),
        ("replicas", replicas),
        ("jobs", jobs),
    ):
        _check_positive(name, value)
    for value in sweep:
        _check_positive("every --sweep value", value)
    _check_policies(policies)
    specs = _check_spec(spec, workload_name, engine)
    if engine == "torch":
        _check_torch(policies, replicas, tiers)
        config: Any = None
        model, gpu = "legato-default", "cpu"
    else:
        config = sim_config(gpu, model, replicas, tiers)
        if "max_num_batched_tokens" in engine_options:
            budget = int(engine_options["max_num_batched_tokens"])
            config = dataclasses.replace(config, max_num_batched_tokens=budget)
    workload = build(workload_name, programs, seed, workload_params or {})
    if config is not None:
        _check_fits(workload, config)

    runs = [(level, policy) for level in sorted({concurrency, *sweep}) for policy in policies]
    if engine == "torch":
        labels = {run: run[1] if not sweep else f"{run[1]} @ c={run[0]}" for run in runs}
        outcomes = _run_torch(workload, runs, labels, seed, engine_options, progress)
    else:
        outcomes = {}
        for method, table in specs:
            spec_config = dataclasses.replace(config, spec_acceptance=table)
            labels = {
                run: spec_label(run[1], method) + ("" if not sweep else f" @ c={run[0]}") for run in runs
            }
            if jobs == 1:
                part = _run_serial(workload, spec_config, runs, labels, seed, progress)
            else:
                build_args = (workload_name, programs, seed, dict(workload_params or {}))
                part = _run_parallel(
                    build_args, len(workload.programs), spec_config, runs, labels, seed, jobs, progress
                )
            outcomes.update({(level, spec_label(policy, method)): o for (level, policy), o in part.items()})
        policies = [spec_label(policy, method) for method, _ in specs for policy in policies]
        runs = [(level, policy) for level in sorted({concurrency, *sweep}) for policy in policies]
    results: dict[int, dict[str, RunOutcome]] = {}
    for level, policy in runs:
        results.setdefault(level, {})[policy] = outcomes[(level, policy)]

    def summaries(level: int) -> dict[str, PolicyMetrics]:
        return {policy: summarize(results[level][policy]) for policy in policies}

    report = build_report(
        workload=workload.name,
        engine=engine,
        model=model,
        gpu=gpu,
        seed=seed,
        programs=len(workload.programs),
        llm_calls=workload.total_calls,
        concurrency=concurrency,
        replicas=replicas,
        tiers=tiers,
        workload_params=workload.params,
        policies=summaries(concurrency),
        sweep={level: summaries(level) for level in sorted(set(sweep))} if sweep else None,
    )
    if engine == "torch":
        report["engine_params"] = _torch_engine_params(engine_options, results[concurrency])
    else:
        step_tokens, seats = config.batch_limits()
        report["engine_params"] = {"max_num_batched_tokens": step_tokens, "max_num_seqs": seats}
        from legato.bench.kv_bound import compute

        if not any(table for _, table in specs):  # the bound's step model has no speculation
            report["kv_bound"] = compute(workload, config).as_dict()
        if any(table for _, table in specs):
            from legato.sim.spec import provenance

            report["spec"] = {
                "methods": [method for method, _ in specs],
                "tokens_per_step": {method: dict(table) for method, table in specs if table},
                "source": provenance(workload_name),
            }
    return BenchRun(report=report, outcomes=results[concurrency], sweep={v: results[v] for v in sweep})


Run = tuple[int, str]  # (concurrency, policy)

# --- the torch engine (`--engine torch`): real time, through legato.scheduler.runtime ----------
# Options come as `--param key=value` and are taken out before the workload generator sees the
# params: token_scale (default 1/32), time_scale (0.05), kv_blocks (default: sized for pressure),
# kv_pressure (0.5), max_num_batched_tokens (engine step budget). Replays run one after another
# (`--jobs` is ignored: they would compete for the same cores and distort each other's times);
# `--gpu` / `--model` / `--tiers` do not apply (the report says model legato-default, gpu cpu).
# Results are wall-clock measurements: the JSON is not byte-identical from run to run.


# Simulated engine options (`--param`): the engine's token budget per step (vLLM's
# `--max-num-batched-tokens`: how large a prefill chunk a step may take; default: what `vllm
# serve` picks on the GPU, `hardware.GPUSpec.serve_batched_tokens`).
SIM_PARAMS = ("max_num_batched_tokens",)
COUNT_PARAMS = ("max_num_batched_tokens", "kv_blocks")  # engine options that count things: integers


def _split_engine_params(
    params: Mapping[str, object], names: Sequence[str]
) -> tuple[dict[str, object], dict[str, float]]:
    """(workload params, engine options named in `names`, each a positive number; an integer
    for those that count tokens or blocks, `COUNT_PARAMS`)."""
    rest: dict[str, object] = {}
    options: dict[str, float] = {}
    for key, value in params.items():
        if key not in names:
            rest[key] = value
            continue
        try:
            number = float(str(value))
        except ValueError:
            raise BenchInputError(f"--param {key} must be a number, got {value!r}") from None
        if not 0 < number < math.inf:
            raise BenchInputError(f"--param {key} must be > 0 and finite, got {value!r}")
        if key in COUNT_PARAMS and number != int(number):
            raise BenchInputError(f"--param {key} must be an integer, got {value!r}")
        options[key] = number
    return rest, options


def _torch_engine_params(options: Mapping[str, float], outcomes: Mapping[str, RunOutcome]) -> dict[str, Any]:
    """What the torch replays ran with (scales, KV size per policy), for the report."""
    from legato.bench.torch_replay import DEFAULT_KV_PRESSURE, DEFAULT_TIME_SCALE, DEFAULT_TOKEN_SCALE

    return {
        "token_scale": options.get("token_scale", DEFAULT_TOKEN_SCALE),
        "time_scale": options.get("time_scale", DEFAULT_TIME_SCALE),
        "kv_pressure": options.get("kv_pressure", DEFAULT_KV_PRESSURE),
        "kv_blocks": {name: int(o.extra.get("kv_blocks", 0)) for name, o in outcomes.items()},
        "deterministic": False,
    }


def _check_torch(policies: Sequence[str], replicas: int, tiers: Sequence[str]) -> None:
    from legato.scheduler.baselines import POLICIES

    if replicas != 1:
        raise BenchInputError(f"--engine torch runs one engine replica; got --replicas {replicas}")
    if tiers:
        raise BenchInputError("--engine torch has no KV tiers; drop --tiers")
    oracle = [p for p in policies if POLICIES[p]().traits.oracle]
    if oracle:
        raise BenchInputError(
            f"policy {', '.join(oracle)} needs future knowledge (a clairvoyant bound) and runs only with "
            "--engine sim; drop it for --engine torch"
        )


def _run_torch(
    workload: Workload,
    runs: list[Run],
    labels: dict[Run, str],
    seed: int,
    options: Mapping[str, float],
    progress: ProgressFn | None,
) -> dict[Run, RunOutcome]:
    from legato.bench.torch_replay import (
        DEFAULT_KV_PRESSURE,
        DEFAULT_TIME_SCALE,
        DEFAULT_TOKEN_SCALE,
        replay_on_torch,
    )

    overrides: dict[str, object] = {}
    if "max_num_batched_tokens" in options:
        overrides["max_num_batched_tokens"] = int(options["max_num_batched_tokens"])
    kv_blocks = options.get("kv_blocks")
    return {
        run: replay_on_torch(
            workload,
            run[1],
            concurrency=run[0],
            seed=seed,
            token_scale=options.get("token_scale", DEFAULT_TOKEN_SCALE),
            time_scale=options.get("time_scale", DEFAULT_TIME_SCALE),
            kv_blocks=None if kv_blocks is None else int(kv_blocks),
            kv_pressure=options.get("kv_pressure", DEFAULT_KV_PRESSURE),
            engine_overrides=overrides,
            progress=None if progress is None else _bind(progress, labels[run]),
        )
        for run in runs
    }


def _run_serial(
    workload: Workload,
    config: Any,
    runs: list[Run],
    labels: dict[Run, str],
    seed: int,
    progress: ProgressFn | None,
) -> dict[Run, RunOutcome]:
    from legato.sim.driver import simulate

    return {
        run: simulate(
            workload,
            run[1],
            config,
            concurrency=run[0],
            seed=seed,
            progress=None if progress is None else _bind(progress, labels[run]),
        )
        for run in runs
    }


# Per worker process: the workload (rebuilt from its arguments, which is cheaper than pickling it
# and yields an equal object because generators are deterministic) and the simulator config.
_WORKER: dict[str, Any] = {}


def _init_worker(build_args: tuple[str, int, int, dict[str, object]], config: Any) -> None:
    name, programs, seed, params = build_args
    _WORKER["workload"] = build_workload(name, programs, seed, params)
    _WORKER["config"] = config


def _simulate_in_worker(run: Run, seed: int) -> RunOutcome:
    from legato.sim.driver import simulate

    outcome: RunOutcome = simulate(
        _WORKER["workload"], run[1], _WORKER["config"], concurrency=run[0], seed=seed
    )
    return outcome


def _run_parallel(
    build_args: tuple[str, int, int, dict[str, object]],
    n_programs: int,
    config: Any,
    runs: list[Run],
    labels: dict[Run, str],
    seed: int,
    jobs: int,
    progress: ProgressFn | None,
) -> dict[Run, RunOutcome]:
    """Replays in `jobs` worker processes; progress is reported per finished replay."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(
        max_workers=min(jobs, len(runs)), initializer=_init_worker, initargs=(build_args, config)
    ) as pool:
        futures = {pool.submit(_simulate_in_worker, run, seed): run for run in runs}
        if progress is not None:
            for run in runs:
                progress(labels[run], 0, n_programs)
        outcomes = {}
        for future in as_completed(futures):
            run = futures[future]
            outcomes[run] = future.result()
            if progress is not None:
                progress(labels[run], n_programs, n_programs)
    return outcomes


def _bind(progress: ProgressFn, label: str) -> Callable[[int, int], None]:
    def callback(done: int, total: int) -> None:
        progress(label, done, total)

    return callback


def run_bench(
    workload_name: str,
    policies: Sequence[str],
    *,
    engine: str = "sim",
    programs: int,
    concurrency: int,
    seed: int = 0,
    gpu: str = "h100",
    model: str = "llama-3.1-8b",
    replicas: int = 1,
    tiers: Sequence[str] = (),
    workload_params: Mapping[str, object] | None = None,
    sweep: Sequence[int] = (),
    jobs: int = 1,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """The report document of `execute_bench` (see there)."""
    return execute_bench(
        workload_name,
        policies,
        engine=engine,
        programs=programs,
        concurrency=concurrency,
        seed=seed,
        gpu=gpu,
        model=model,
        replicas=replicas,
        tiers=tiers,
        workload_params=workload_params,
        sweep=sweep,
        jobs=jobs,
        progress=progress,
    ).report
