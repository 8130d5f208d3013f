"""Replay a bench `Workload` on the real embedded torch engine through `PolicyScheduler`.

The simulator's twin for `legato bench --engine torch`: the same workload and the same policy
objects, but real tokens, a real paged KV cache and wall-clock time.

- Tokens: every segment becomes deterministic token ids drawn from a generator seeded by its
  `seg_id` (equal segments = equal tokens = real prefix-cache hits), except a call's output
  segment, which is the tokens the engine actually generated for that call (so the next prompt
  extends exactly the KV the engine holds). Lengths are scaled by `token_scale` (at least 1
  token) so a CPU can run it.
- Outputs: `max_tokens` = the scaled output length, `ignore_eos=True`, greedy.
- Tools: a real `anyio.sleep(tool_latency_s * time_scale)`.
- Closed loop: at most `concurrency` programs in flight, submitted in arrival order (arrival
  times scaled by `time_scale` too); what a program announces and is charged comes from the
  client the simulator uses too (`legato.sim.client`), RL groups included.
- KV size: `kv_blocks` (default: `kv_pressure` x the blocks the first `concurrency` programs'
  final contexts need, at least what the largest call needs plus a margin), so KV pressure is
  real. Policies with `traits.unlimited_kv` (`infinite-kv`) get a pool large enough for every
  program's final context (capped at `MAX_UNLIMITED_TOKENS`).

`RunOutcome` comes from real measurements: TCTs are wall-clock seconds; cached prompt tokens
and preemptions from the engine's counters; `prefill_tokens_computed` = prompt tokens minus
first-admission hits (the engine exposes no counter of tokens recomputed after a preemption, so
recomputation is not included); `engine_busy_s` is the time some call was inside the engine.
Numbers are **not deterministic** (real time, thread scheduling), unlike the simulator's.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from legato.engine_adapter.base import SamplingParams
from legato.scheduler.events import LLMCall, RunFinished, ToolFinished, ToolStarted
from legato.scheduler.policy import Decision, Policy
from legato.scheduler.runtime import PolicyScheduler, UnsupportedPolicyError
from legato.sim.client import (
    SharedPrefixes,
    TenantLedger,
    ToolMeans,
    arrival_order,
    dependents,
    run_started,
)
from legato.sim.outcome import ProgramOutcome, RunOutcome
from legato.sim.workload import ProgramSpec, Workload

TOKEN_RANGE = 256  # byte-level token ids: inside every default vocabulary, never special tokens
DEFAULT_TOKEN_SCALE = 1 / 32
DEFAULT_TIME_SCALE = 0.05
DEFAULT_KV_PRESSURE = 0.5
MAX_UNLIMITED_TOKENS = 1 << 17
TORCH_PARAMS = ("token_scale", "time_scale", "kv_blocks", "kv_pressure", "max_num_batched_tokens")


def scaled(n: int, token_scale: float) -> int:
    return max(1, round(n * token_scale))


def segment_tokens(seg_id: int, length: int) -> tuple[int, ...]:
    rng = random.Random(seg_id * 2654435761 + 97)
    return tuple(rng.randrange(TOKEN_RANGE) for _ in range(length))


def _context_tokens(p: ProgramSpec, token_scale: float) -> int:
    """Largest prompt + output of any of the program's calls, scaled."""
    return max(
        (
            sum(scaled(s.tokens, token_scale) for s in c.prompt) + scaled(c.output_tokens, token_scale)
            for c in p.calls
        ),
        default=0,
    )


def choose_kv_blocks(
    workload: Workload,
    concurrency: int,
    token_scale: float,
    block_size: int,
    pressure: float,
    unlimited: bool,
) -> int:
    contexts = [_context_tokens(p, token_scale) for p in workload.programs]
    largest = max(contexts, default=1)
    floor = -(-largest // block_size) + 4
    if unlimited:
        total = min(sum(contexts), MAX_UNLIMITED_TOKENS)
        return max(floor, -(-total // block_size) + 4)
    head = sorted(contexts, reverse=True)[:concurrency]
    return max(floor, int(pressure * sum(-(-c // block_size) for c in head)))


def check_policy(policy: Policy) -> None:
    """Raise `UnsupportedPolicyError` for a policy the real-time runtime cannot drive."""
    if policy.traits.oracle:
        raise UnsupportedPolicyError(
            f"policy {policy.name!r} needs future knowledge (a clairvoyant bound); it runs only with "
            "--engine sim, not on a real engine"
        )


class _Replay:
    def __init__(
        self, workload: Workload, sched: PolicyScheduler, token_scale: float, time_scale: float
    ) -> None:
        self.workload = workload
        self.sched = sched
        self.token_scale = token_scale
        self.time_scale = time_scale
        self.outcomes: list[ProgramOutcome] = []
        self.ledger = TenantLedger(workload.programs)
        self.tools = ToolMeans()
        self.cached_tokens = 0
        self.prompt_tokens = 0
        self.t0 = 0.0
        self.shared_prefixes = SharedPrefixes(workload)

    async def program(self, spec: ProgramSpec) -> None:
        sched = self.sched
        submitted = time.monotonic() - self.t0
        run_id = spec.program_id
        n = len(spec.calls)
        after = dependents(spec)
        done = [anyio.Event() for _ in range(n)]
        outputs: dict[int, tuple[int, ...]] = {}  # output_seg_id -> generated tokens
        totals = [0, 0, 0]  # calls, prompt tokens, output tokens
        self.ledger.submitted(spec)
        sched.notify(run_started(spec))

        async def step(j: int) -> None:
            cs = spec.calls[j]
            for dep in cs.deps:
                await done[dep].wait()
            prompt: list[int] = []
            for seg in cs.prompt:
                got = outputs.get(seg.seg_id)
                prompt.extend(
                    got
                    if got is not None
                    else segment_tokens(seg.seg_id, scaled(seg.tokens, self.token_scale))
                )
            leading = self.shared_prefixes.leading(cs.prompt)
            shared = sum(scaled(seg.tokens, self.token_scale) for seg in leading)
            call = LLMCall(
                call_id=f"{run_id}#{j}",
                run_id=run_id,
                program=spec.kind or "program",
                node=cs.node,
                tenant=spec.tenant,
                prompt_token_ids=tuple(prompt),
                sampling=SamplingParams(
                    max_tokens=scaled(cs.output_tokens, self.token_scale), ignore_eos=True
                ),
                shared_prefix_tokens=shared,
                hints=self.tools.hints(cs.tool, not after[j]),
            )
            out: list[int] = []
            cached = 0
            async for chunk in sched.generate(call):
                out.extend(chunk.token_ids)
                cached = chunk.cached_tokens or cached
            outputs[cs.output_seg_id] = tuple(out)
            totals[0] += 1
            totals[1] += len(prompt)
            totals[2] += len(out)
            self.prompt_tokens += len(prompt)
            self.cached_tokens += cached
            self.ledger.charge(spec, len(prompt), len(out), time.monotonic() - self.t0)
            if cs.tool is not None:
                sched.notify(ToolStarted(run_id, cs.tool, self.tools.mean(cs.tool)))
                await anyio.sleep(cs.tool_latency_s * self.time_scale)
                self.tools.record(cs.tool, cs.tool_latency_s * self.time_scale)
                sched.notify(ToolFinished(run_id, cs.tool, cs.tool_latency_s * self.time_scale))
            done[j].set()

        status = "failed"
        try:
            async with anyio.create_task_group() as tg:
                for j in range(n):
                    tg.start_soon(step, j)
            status = "succeeded"
        finally:
            sched.notify(RunFinished(run_id, status))
        self.outcomes.append(
            ProgramOutcome(
                spec.program_id,
                spec.tenant,
                spec.arrival_s * self.time_scale if spec.open_loop else submitted,
                time.monotonic() - self.t0,
                totals[0],
                totals[1],
                totals[2],
                submitted_s=submitted,
            )
        )


async def replay_async(
    workload: Workload,
    policy: Policy,
    *,
    concurrency: int,
    token_scale: float = DEFAULT_TOKEN_SCALE,
    time_scale: float = DEFAULT_TIME_SCALE,
    kv_blocks: int | None = None,
    kv_pressure: float = DEFAULT_KV_PRESSURE,
    engine_overrides: Mapping[str, Any] | None = None,
    model_config: Any = None,
    progress: Callable[[int, int], None] | None = None,
    timeout_s: float = 3600.0,
    decisions: list[Decision] | None = None,
) -> RunOutcome:
    """See `replay_on_torch`; this is its async body (tests call it inside their event loop).
    `decisions`, when given, receives every decision in the order it was applied."""
    from legato.engine_adapter.torch import load_engine

    check_policy(policy)
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if not token_scale > 0 or not time_scale >= 0:
        raise ValueError(f"token_scale must be > 0 and time_scale >= 0, got {token_scale}, {time_scale}")
    overrides = dict(engine_overrides or {})
    block_size = int(overrides.get("block_size", 16))
    if kv_blocks is None and "num_blocks" not in overrides:
        kv_blocks = choose_kv_blocks(
            workload, concurrency, token_scale, block_size, kv_pressure, policy.traits.unlimited_kv
        )
    if kv_blocks is not None:
        overrides["num_blocks"] = kv_blocks
    overrides.setdefault(
        "max_model_len",
        max(1024, max((_context_tokens(p, token_scale) for p in workload.programs), default=0) + 1),
    )
    engine = load_engine(None, "cpu", model_config=model_config, **overrides)
    specs = arrival_order(workload)
    async with engine, PolicyScheduler([engine], policy, decisions=decisions) as sched:
        replay = _Replay(workload, sched, token_scale, time_scale)
        replay.t0 = time.monotonic()
        next_index = 0

        async def client() -> None:
            nonlocal next_index
            while next_index < len(specs):
                spec = specs[next_index]
                next_index += 1
                delay = replay.t0 + spec.arrival_s * time_scale - time.monotonic()
                if delay > 0:
                    await anyio.sleep(delay)
                await replay.program(spec)
                if progress is not None:
                    progress(len(replay.outcomes), len(specs))

        with anyio.fail_after(timeout_s):
            async with anyio.create_task_group() as tg:
                for _ in range(min(concurrency, len(specs))):
                    tg.start_soon(client)
        stats = await engine.stats()
        busy = sum(sched.busy_s)
        sched_stats = dict(sched.stats)
    outcomes = sorted(replay.outcomes, key=lambda o: o.program_id)
    first = min((o.arrival_s for o in outcomes), default=0.0)
    last = max((o.finish_s for o in outcomes), default=0.0)
    prompt = sum(o.prompt_tokens for o in outcomes)
    return RunOutcome(
        policy=policy.name,
        programs=outcomes,
        makespan_s=last - first,
        prompt_tokens=prompt,
        prefill_tokens_computed=prompt - replay.cached_tokens,
        cached_prompt_tokens=replay.cached_tokens,
        preemptions=stats.preemptions,
        pauses=sched_stats["pauses"],
        replicas=1,
        engine_busy_s=busy,
        service_by_tenant=dict(sorted(replay.ledger.service.items())),
        tenant_weights=dict(sorted(replay.ledger.weights.items())),
        extra={
            "kv_blocks": float(stats.total_blocks),
            "engine_steps": float(stats.steps),
            "evicted_blocks": float(stats.evictions),
            "pins": float(sched_stats["pins"]),
            "prefetches_ignored": float(sched_stats["prefetches_ignored"]),
            "set_priority_unapplied": float(sched_stats["set_priority_unapplied"]),
            "bad_decisions": float(sched_stats["bad_decisions"]),
            "policy_errors": float(sched_stats["policy_errors"]),
            "control_errors": float(sched_stats["control_errors"]),
            "token_scale": token_scale,
            "time_scale": time_scale,
        },
    )


def replay_on_torch(
    workload: Workload,
    policy_name: str | Policy,
    *,
    concurrency: int,
    seed: int = 0,
    token_scale: float = DEFAULT_TOKEN_SCALE,
    time_scale: float = DEFAULT_TIME_SCALE,
    kv_blocks: int | None = None,
    kv_pressure: float = DEFAULT_KV_PRESSURE,
    engine_overrides: Mapping[str, Any] | None = None,
    model_config: Any = None,
    progress: Callable[[int, int], None] | None = None,
    timeout_s: float = 3600.0,
) -> RunOutcome:
    """Replay `workload` under a policy (registry name or object) on one embedded torch engine
    (the small default model on CPU; `model_config` shrinks it). `seed` seeds the engine's
    weights and unseeded sampling (greedy here, so only the weights). Blocking: runs its own
    event loop. Raises `UnsupportedPolicyError` for oracle policies (`oracle-evict`), `TimeoutError`
    when the whole replay takes longer than `timeout_s`."""
    from legato.sim.driver import resolve_policy

    policy = resolve_policy(policy_name)
    overrides = {"seed": seed, **(engine_overrides or {})}

    async def main() -> RunOutcome:
        return await replay_async(
            workload,
            policy,
            concurrency=concurrency,
            token_scale=token_scale,
            time_scale=time_scale,
            kv_blocks=kv_blocks,
            kv_pressure=kv_pressure,
            engine_overrides=overrides,
            model_config=model_config,
            progress=progress,
            timeout_s=timeout_s,
        )

    return anyio.run(main)


__all__ = [
    "TORCH_PARAMS",
    "check_policy",
    "choose_kv_blocks",
    "replay_async",
    "replay_on_torch",
    "segment_tokens",
]
