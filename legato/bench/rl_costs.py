"""What scheduling can save in `legato bench rl` on this machine: the CPU bound.

A policy cannot make the model's arithmetic cheaper; it can only avoid work. In the rollout
bench both policies decode exactly the same tokens (`ignore_eos`), so the only work one can skip
is prompt tokens computed more than once: a rollout's context recomputed after its KV was
evicted, a group's prompt prefilled per sample, tokens recomputed after a preemption. This
module measures, in the same run and on the same engine configuration as the bench's servers,
what a prompt token and a decoded token cost (process CPU seconds with the servers' torch
threads, one by default), and turns passthrough's measured work into the largest ratio of
tokens per server CPU second any policy could reach:

    avoidable = ((passthrough prefill tokens - floor) + preemptions * max_tokens) * prefill cost
    ratio    <= passthrough CPU seconds / (passthrough CPU seconds - avoidable)

`floor` is the prompt work no policy can skip: each distinct prompt token once (a group's
samples fork one prefill), each tool output once, and the last sampled token of every turn,
whose KV was never computed. A preempted sequence recomputes at most `max_tokens` generated
tokens besides its prompt (which the engine already counts as prefill).

The prompt token's cost is measured where recomputation happens, riding in the steps of a
decoding batch, and as dear as it gets there: tokens at the end of a rollout's last-turn
context (attention grows with position), priced as the CPU time those steps take over plain
decode steps per prompt token (which includes the fused decode-only path a step that prefills
loses). Both lean towards over-pricing avoidable work, so `max_ratio` is meant as an upper
bound; what it cannot see is a step that prefills only a few tokens, which loses the fused path
for fewer tokens than the measured full chunks (dearer per token). The
decoded token's cost is taken at the full batch of prompt-length contexts, where decode is
cheapest per token; with it `engine_only_max_ratio` is the bound if the server did nothing but
the engine's arithmetic (no HTTP, no scheduling, no per-step overhead): looser, for scale.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol


class RLBenchConfig(Protocol):
    """What this module reads of `rl_bench.RLBenchConfig` (a protocol: `rl_bench` imports this
    module, not the other way round)."""

    @property
    def groups(self) -> int: ...
    @property
    def n(self) -> int: ...
    @property
    def turns(self) -> int: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def env_tokens(self) -> int: ...
    @property
    def num_blocks(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def threads(self) -> int: ...


class RLRun(Protocol):
    """What this module reads of `rl_bench.RLRun`."""

    @property
    def policy(self) -> str: ...
    @property
    def tokens(self) -> int: ...
    @property
    def work(self) -> dict[str, float]: ...
    @property
    def cpu_s(self) -> float | None: ...


MAX_NUM_SEQS = 64  # the torch engine's default batch limit (EngineConfig.max_num_seqs)


@dataclass(frozen=True, slots=True)
class StepCosts:
    """CPU seconds per prompt token (prefill) and per decoded token (at the full batch)."""

    prefill_s_per_token: float
    decode_s_per_token: float

    @property
    def decode_over_prefill(self) -> float:
        return self.decode_s_per_token / self.prefill_s_per_token


@dataclass(frozen=True, slots=True)
class CpuBound:
    prefill_floor_tokens: int  # prompt tokens every policy must compute
    passthrough_prefill_tokens: float
    avoidable_tokens: float  # passthrough's prompt tokens above the floor, plus preemption recompute
    avoidable_cpu_s: float  # what those tokens cost at the measured prefill cost
    engine_cpu_s: float  # passthrough's run as engine arithmetic alone: prompt + decoded tokens
    passthrough_cpu_s: float  # measured: the server's CPU seconds (HTTP, scheduling, steps...)
    avoidable_fraction: float  # of passthrough's measured CPU seconds
    max_ratio: float  # best tokens per CPU second ratio any policy could reach
    engine_only_max_ratio: float  # the same if the server did nothing but engine arithmetic

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def prefill_floor(cfg: RLBenchConfig) -> int:
    """Prompt tokens no policy can avoid: the prompts' shared half once, each group's own half
    once (its samples fork one prefill), and per later turn the tool tokens plus the previous
    turn's last token."""
    shared = cfg.prompt_tokens // 2
    own = cfg.prompt_tokens - shared
    rollouts = cfg.groups * cfg.n
    return shared + cfg.groups * own + rollouts * (cfg.turns - 1) * (cfg.env_tokens + 1)


def _cpu_steps(core: Any, until: Callable[[list[Any]], bool]) -> tuple[float, int]:
    """(CPU seconds of this process, steps) of engine steps run until `until(outputs)` says stop."""
    t0 = time.process_time()
    steps = 0
    while True:
        steps += 1
        if until(core.step()):
            return time.process_time() - t0, steps


def measure_step_costs(cfg: RLBenchConfig, rounds: int = 3) -> StepCosts:
    """Median of `rounds` measurements (`measure_once`) with the servers' torch threads, timed
    by this process's CPU clock as the servers' CPU seconds are (with one thread, other
    processes on a shared machine neither stretch it nor, as spinning workers would, add to it)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        samples = [measure_once(cfg) for _ in range(rounds)]
    finally:
        torch.set_num_threads(threads)
    return StepCosts(
        statistics.median(c.prefill_s_per_token for c in samples),
        statistics.median(c.decode_s_per_token for c in samples),
    )


def last_context(cfg: RLBenchConfig) -> int:
    """Tokens of a rollout's context at its last turn: the deepest a recomputed token sits."""
    return cfg.prompt_tokens + cfg.turns * cfg.max_tokens + (cfg.turns - 1) * cfg.env_tokens


def measure_once(cfg: RLBenchConfig, decode_steps: int = 12, injected: int = 6) -> StepCosts:
    """Both costs on a fresh engine core like the servers' (`torch:num_blocks=...` over the seeded
    default model), in the step mix the servers run: a batch of prompt-length contexts decodes;
    its pure decode steps give the decoded token's cost, then `injected` prompts ride in the
    same steps (as a recomputed context does) and the extra CPU time over that many decode
    steps, per prompt token, is the prompt token's cost. The injected prompts compute their last
    `prompt_tokens` tokens on top of a cached prefix, ending at a rollout's last-turn context
    (`last_context`): the deepest, dearest positions (attention grows with them) at which a
    recomputed token sits. On the CPU the extra also includes what a step that prefills loses
    besides its prompt's arithmetic (the fused decode-only path), which recomputation costs."""
    from legato.engine_adapter.base import GenerateRequest, SamplingParams
    from legato.engine_adapter.torch.engine import build_core

    rng = random.Random(cfg.seed + 2)
    bs = 16  # the engine's block size (EngineConfig.block_size)
    batch = max(1, min(cfg.groups * cfg.n, MAX_NUM_SEQS) - injected)
    deep = max(0, last_context(cfg) - cfg.prompt_tokens) // bs * bs  # the injected prompts' cached part
    budget = 4 * decode_steps + injected * cfg.prompt_tokens + 64  # tokens each batch member decodes
    blocks = batch * -(-(cfg.prompt_tokens + budget) // bs) + (injected + 1) * -(
        -(deep + cfg.prompt_tokens) // bs
    )
    core = build_core(num_blocks=blocks + 1, max_num_seqs=MAX_NUM_SEQS)
    ids = iter(range(1 << 30))
    prefix = [rng.randrange(32, 127) for _ in range(deep)]

    def add(head: list[int], length: int, max_tokens: int) -> str:
        prompt = (*head, *(rng.randrange(32, 127) for _ in range(length)))
        sampling = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        request = GenerateRequest(request_id=f"cost-{next(ids)}", prompt_token_ids=prompt, sampling=sampling)
        core.add_request(request)
        return request.request_id

    started: set[str] = set()
    pending = {add([], cfg.prompt_tokens, budget) for _ in range(batch)}
    if deep:
        pending.add(add(prefix, 1, 1))  # caches the deep prefix

    def all_started(outputs: list[Any]) -> bool:
        started.update(o.request_id for o in outputs if o.token_ids)
        return pending <= started

    _cpu_steps(core, all_started)  # the batch's own prefill: not timed
    left = iter(range(1 << 30))
    decode_s, _ = _cpu_steps(core, lambda _: next(left) + 1 >= decode_steps)
    step_s = decode_s / decode_steps
    finished: set[str] = set()
    extra = {add(prefix, cfg.prompt_tokens, 1) for _ in range(injected)}

    def injected_done(outputs: list[Any]) -> bool:
        finished.update(o.request_id for o in outputs if o.finished)
        return extra <= finished

    mixed_s, mixed_steps = _cpu_steps(core, injected_done)
    prefill_s = max(mixed_s - mixed_steps * step_s, 0.0) / (injected * cfg.prompt_tokens)
    return StepCosts(prefill_s, step_s / batch)


def cpu_bound(cfg: RLBenchConfig, costs: StepCosts, runs: Sequence[RLRun], baseline: str) -> CpuBound | None:
    """The bound from `baseline`'s runs (medians of its work and CPU seconds); None without CPU
    times (not Linux) or without such runs."""
    mine = [r for r in runs if r.policy == baseline and r.cpu_s is not None]
    if not mine:
        return None
    prefill = statistics.median(r.work.get("prefill_tokens", 0.0) for r in mine)
    preemptions = statistics.median(r.work.get("preemptions", 0.0) for r in mine)
    cpu_s = statistics.median(r.cpu_s for r in mine if r.cpu_s is not None)
    decoded = statistics.median(r.tokens for r in mine)
    floor = prefill_floor(cfg)
    avoidable = max(0.0, prefill - floor) + preemptions * cfg.max_tokens
    avoidable_s = avoidable * costs.prefill_s_per_token
    engine_s = (prefill + preemptions * cfg.max_tokens) * costs.prefill_s_per_token
    engine_s += decoded * costs.decode_s_per_token
    fraction = min(avoidable_s / cpu_s, 1.0) if cpu_s > 0 else 0.0
    return CpuBound(
        prefill_floor_tokens=floor,
        passthrough_prefill_tokens=prefill,
        avoidable_tokens=avoidable,
        avoidable_cpu_s=avoidable_s,
        engine_cpu_s=engine_s,
        passthrough_cpu_s=cpu_s,
        avoidable_fraction=fraction,
        max_ratio=1.0 / (1.0 - fraction) if fraction < 1.0 else float("inf"),
        engine_only_max_ratio=engine_s / (engine_s - avoidable_s),
    )
