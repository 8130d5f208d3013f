"""`legato bench spec` decode speed: the torch engine decoding real agent text, with and without
speculation, at several batch sizes in one run.

A random model cannot write the trace's text, so acceptance measured on its own output means
nothing. Here the target model runs its full forward pass on every position it is given -- the
prompt, the last token and every drafted token -- so a verify step costs what it really costs,
but the logits it returns are replaced by a one-hot on the real trace's next token (an oracle
target that writes exactly the recorded output). The drafters see what they would in serving:
the request's prompt (its program's history up to this call) and output so far, plus the
finished outputs of earlier requests (the engine-wide history, seeded with the training half's
outputs as an agent's earlier runs).

Requests: per held-out session, its last assistant message whose prompt fits `max_prompt`
tokens (the latest call whose whole program context fits the model; the default keeps a batch of
32 inside the engine's decode workspace), up to `max_output` tokens of the real output. At batch
B, max(B, `min_requests`) of them run with B in flight. One engine (one prefix cache) serves
every run, so prompts are prefilled once; decode speed counts only the steps in which every
scheduled chunk decodes (no prefill), and the tokens those steps emit. Both modes emit identical
tokens (greedy verification is lossless), so their ratio is the speed-up on the same work. Runs
alternate which mode goes first, and each mode runs `repeats` times; medians and spreads are reported.

A serving engine keeps one speculator for its life, so its back-off has long measured what a
verify step costs against a plain one; a run here is a few dozen steps, and a new speculator
would spend a good part of it measuring (whole drafts verified until the step cost curve has a
shape: on a CPU where a step costs about its token count, enough to make speculation lose 10-15 %).
So each batch size first runs once with speculation, untimed, and every timed run's new
speculator starts from that run's step costs (`Speculator.learn_costs_from`: timing only; its
drafters' history and acceptance calibration are its own, so nothing of the text carries over).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from legato.engine_adapter.base import GenerateRequest, SamplingParams
from legato.engine_adapter.torch import EngineCore, ModelConfig
from legato.engine_adapter.torch.checkpoint import build_default_model
from legato.engine_adapter.torch.config import EngineConfig, describe_device
from legato.engine_adapter.torch.scheduler import ScheduledChunk
from legato.engine_adapter.torch.speculator import AGENT, Speculator
from legato.engine_adapter.torch.tokenizer import HFTokenizer
from legato.spec.adaptive import check_draft_len
from legato.spec.backoff import StepCostModel

# The target: a Llama of ~20M parameters with the BPE vocabulary. Its size only sets what a
# step costs on this machine (what a verify step adds over a decode step), not what is accepted.
REPLAY_MODEL = dict(
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=16384,
)


@dataclass(frozen=True, slots=True)
class DecodeConfig:
    batches: tuple[int, ...] = (1, 8, 32)
    drafter: str = "suffix"
    max_draft: int = 16
    max_prompt: int = 3072
    max_output: int = 128
    repeats: int = 2
    min_requests: int = 8  # requests decoded at every batch size (at least the batch)
    threads: int = 1  # torch threads: one, so a shared machine's contention cannot stall a barrier
    model: dict[str, int] = field(default_factory=lambda: dict(REPLAY_MODEL))
    device: str = "cpu"  # where the target runs: on a GPU a verify step costs about a decode step

    def __post_init__(self) -> None:
        if not self.batches or any(b < 1 for b in self.batches):
            raise ValueError(f"batch sizes must be >= 1, got {self.batches}")
        if self.max_prompt < 16 or self.max_output < 1 or self.repeats < 1:
            raise ValueError("need max_prompt >= 16, max_output >= 1 and repeats >= 1")


def decode_config(
    batches: str, max_draft: int, max_output: int, repeats: int, device: str = "cpu"
) -> DecodeConfig | None:
    """The CLI's decode options (None: no batch sizes, skip the replay); ValueError naming the
    bad option."""
    try:
        sizes = tuple(int(v) for v in batches.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--decode-batches must be a comma list of integers, got {batches!r}") from None
    if not sizes:
        return None
    check_draft_len(max_draft, "--decode-max-draft")
    if max_draft < 1:
        raise ValueError("--decode-max-draft must be >= 1")
    return DecodeConfig(
        batches=sizes, max_draft=max_draft, max_output=max_output, repeats=repeats, device=device
    )


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    prompt: tuple[int, ...]
    output: tuple[int, ...]  # the real output, cut to max_output


def pick_requests(
    sessions: Sequence[Sequence[tuple[bool, list[int]]]], max_prompt: int, max_output: int
) -> list[ReplayRequest]:
    """Per session, its last assistant message whose prompt fits `max_prompt` tokens."""
    out = []
    for msgs in sessions:
        ctx: list[int] = []
        best: ReplayRequest | None = None
        for is_output, ids in msgs:
            if is_output and ids and len(ctx) <= max_prompt:
                best = ReplayRequest(tuple(ctx), tuple(ids[:max_output]))
            ctx.extend(ids)
        if best is not None:
            out.append(best)
    return out


class OracleEngine:
    """An `EngineCore` on the replay model whose logits are one-hots on the recorded text."""

    def __init__(self, tokenizer: Any, cfg: DecodeConfig, num_tokens: int, seed: int = 0) -> None:
        shape: dict[str, Any] = dict(cfg.model)
        mc = ModelConfig(vocab_size=-(-tokenizer.get_vocab_size() // 64) * 64, **shape)
        eos = tokenizer.token_to_id("<|im_end|>")
        config = EngineConfig(
            device=cfg.device,
            seed=seed,
            kv_cache_tokens=num_tokens,
            max_num_batched_tokens=max(2048, max(cfg.batches) * (1 + cfg.max_draft)),
            max_num_seqs=max(cfg.batches),
        )
        model = build_default_model(seed, mc, device=cfg.device, dtype=config.resolved_dtype)
        self.core = EngineCore(model, HFTokenizer(tokenizer, eos), config)
        self.truth: dict[str, tuple[int, ...]] = {}
        self.eos = eos
        self.prefill_step = False
        # decode steps: tokens -> seconds (CPU time on the CPU, as the engine's own back-off
        # prices them; wall clock on a GPU, where the host thread mostly waits for the device)
        self.step_cost = StepCostModel(memory=math.inf)
        run = self.core.runner.run

        def oracle_run(chunks: list[ScheduledChunk]) -> tuple[list[ScheduledChunk], torch.Tensor | None]:
            self.prefill_step = any(c.seq.num_computed_tokens < c.seq.num_prompt_tokens for c in chunks)
            sampled, logits = run(chunks)
            if logits is None:
                return sampled, None
            targets: list[int] = []
            for c in sampled:
                seq, rows = c.seq, 1 + c.seq.num_draft
                truth = self.truth[seq.request_id]
                end = len(seq.token_ids)
                targets.extend(truth[p] if p < len(truth) else eos for p in range(end - rows + 1, end + 1))
            onehot = torch.full_like(logits, -1e4)
            at = torch.arange(len(targets), device=logits.device)
            onehot[at, torch.tensor(targets, device=logits.device)] = 0.0
            return sampled, onehot

        self.core.runner.run = oracle_run  # type: ignore[method-assign]

    def decode(
        self, requests: Sequence[ReplayRequest], batch: int, tag: str
    ) -> tuple[int, float, float, list[list[int]]]:
        """Run the requests with at most `batch` in flight (the next one is admitted as one
        finishes); returns (decode tokens, decode wall seconds, decode CPU seconds of this
        thread, every request's output)."""
        core = self.core
        outs: list[list[int]] = [[] for _ in requests]
        index = {f"{tag}-{i}": i for i in range(len(requests))}
        queued = list(index)
        in_flight = 0
        tokens, seconds, cpu = 0, 0.0, 0.0
        while queued or in_flight:
            while queued and in_flight < batch:
                rid = queued.pop(0)
                r = requests[index[rid]]
                self.truth[rid] = r.prompt + r.output
                sp = SamplingParams(max_tokens=len(r.output), ignore_eos=True)
                core.add_request(GenerateRequest(rid, r.prompt, sp))
                in_flight += 1
            t0, c0 = time.perf_counter(), time.thread_time()
            step = core.step()
            dt, dc = time.perf_counter() - t0, time.thread_time() - c0
            for o in step:
                outs[index[o.request_id]].extend(o.token_ids)
                if o.finished:
                    in_flight -= 1
                    self.truth.pop(o.request_id, None)
            if not self.prefill_step:
                tokens += sum(len(o.token_ids) for o in step)
                seconds += dt
                cpu += dc
                on_cpu = core.config.device == "cpu"
                self.step_cost.observe(sum(e - s for s, e in core.last_spans), dc if on_cpu else dt)
        return tokens, seconds, cpu, outs


def _speculator(cfg: DecodeConfig, history: Sequence[Sequence[int]]) -> Speculator:
    """A new speculator whose agent history is the training half's outputs."""
    spec = Speculator(cfg.drafter, cfg.max_draft)
    for ids in history:
        spec.history.add_output(AGENT, ids)
    return spec


def _check_lossless(outs: list[list[int]], reference: list[list[int]]) -> None:
    if outs != reference:
        raise RuntimeError("speculative decoding changed the output: verification is broken")


def _history_outputs(train: Sequence[Sequence[tuple[bool, list[int]]]]) -> list[list[int]]:
    return [ids for msgs in train for is_output, ids in msgs if is_output]


def run_decode_bench(
    tokenizer: Any,
    test: Sequence[Sequence[tuple[bool, list[int]]]],
    train: Sequence[Sequence[tuple[bool, list[int]]]],
    cfg: DecodeConfig,
    log: Callable[[str], None],
    acceptance: Mapping[int, float] | None = None,
) -> dict[str, Any]:
    """Decode tok/s with and without speculation per batch size (see the module docstring).
    `acceptance`: tokens per verify step by draft length (the drafter's, measured on the trace),
    for the bound."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(tokenizer, test, train, cfg, log, acceptance or {})
    finally:
        torch.set_num_threads(threads)


def _run(
    tokenizer: Any,
    test: Sequence[Sequence[tuple[bool, list[int]]]],
    train: Sequence[Sequence[tuple[bool, list[int]]]],
    cfg: DecodeConfig,
    log: Callable[[str], None],
    acceptance: Mapping[int, float],
) -> dict[str, Any]:
    pool = pick_requests(test, cfg.max_prompt, cfg.max_output)
    most = max(cfg.min_requests, *cfg.batches)
    if len(pool) < most:
        raise ValueError(f"only {len(pool)} held-out requests fit max_prompt, need {most}")
    need = sum(len(r.prompt) + len(r.output) + 2 * cfg.max_draft for r in pool[:most])
    engine = OracleEngine(tokenizer, cfg, need + 1024)
    history = _history_outputs(train)
    results = []
    for batch in cfg.batches:
        reqs = pool[: max(batch, cfg.min_requests)]
        engine.core.speculator = None
        # prefill once (later runs hit the prefix cache); its plain outputs are every run's reference
        reference = engine.decode(reqs, batch, f"warm{batch}")[3]
        # The back-off's step costs, learned in one untimed run with speculation (module docstring)
        learned = _speculator(cfg, history)
        engine.core.speculator = learned
        _check_lossless(engine.decode(reqs, batch, f"learn{batch}")[3], reference)
        runs: dict[str, list[tuple[int, float, float]]] = {"off": [], "on": []}
        spec_counts = [0, 0, 0]  # verify steps, drafted, accepted
        engine.step_cost = StepCostModel(memory=math.inf)  # plain means over every decode step
        for rep in range(cfg.repeats):
            for mode in ("off", "on") if rep % 2 == 0 else ("on", "off"):
                spec = None
                if mode == "on":
                    spec = _speculator(cfg, history)
                    spec.learn_costs_from(learned)
                engine.core.speculator = spec
                tokens, seconds, cpu, outs = engine.decode(reqs, batch, f"{mode}{batch}.{rep}")
                _check_lossless(outs, reference)
                runs[mode].append((tokens, seconds, cpu))
                if spec is not None:
                    spec_counts[0] += spec.verify_steps
                    spec_counts[1] += spec.drafted
                    spec_counts[2] += spec.accepted
        row = _row(batch, reqs, runs, spec_counts, engine.step_cost, acceptance)
        results.append(row)
        log(
            f"batch {batch:3d}: {row['tok_s_off']:8.1f} -> {row['tok_s_on']:8.1f} tok/s "
            f"x{row['speedup']:.2f} (x{row['speedup_min']:.2f}..x{row['speedup_max']:.2f}); "
            f"CPU time x{row['cpu_speedup']:.2f} "
            f"(x{row['cpu_speedup_min']:.2f}..x{row['cpu_speedup_max']:.2f}); "
            f"{row['accepted']}/{row['drafted']} drafted accepted; bound x{row['bound']['speedup']:.2f}"
        )
    return {
        "model": {"vocab_size": engine.core.model.config.vocab_size, **cfg.model},
        "drafter": cfg.drafter,
        "max_draft": cfg.max_draft,
        "max_prompt": cfg.max_prompt,
        "max_output": cfg.max_output,
        "repeats": cfg.repeats,
        "torch_threads": cfg.threads,
        "device": describe_device(cfg.device),
        "semantics": "oracle target (full forward, logits = one-hot on the trace's next token); "
        "decode-only steps timed (wall clock, and CPU time of the engine's thread); greedy, "
        "identical outputs in both modes; bound = max over draft length g of tokens per verify "
        "step E(g) (the acceptance table) x T(B) / T(B E(g)), T the step cost measured by step size",
        "results": results,
    }


def _row(
    batch: int,
    reqs: Sequence[ReplayRequest],
    runs: dict[str, list[tuple[int, float, float]]],
    spec_counts: list[int],
    cost: StepCostModel,
    acceptance: Mapping[int, float],
) -> dict[str, Any]:
    """One batch size's numbers: medians and spreads of the on/off ratios (runs paired in
    order), by wall clock and by CPU time, and the bound the step cost allows."""
    row: dict[str, Any] = {"batch": batch}
    for prefix, col in (("", 1), ("cpu_", 2)):
        off = [r[0] / r[col] for r in runs["off"]]
        on = [r[0] / r[col] for r in runs["on"]]
        ratios = [b / a for a, b in zip(off, on, strict=True)]
        row[f"{prefix}tok_s_off"] = round(statistics.median(off), 1)
        row[f"{prefix}tok_s_on"] = round(statistics.median(on), 1)
        row[f"{prefix}speedup"] = round(statistics.median(ratios), 3)
        row[f"{prefix}speedup_min"] = round(min(ratios), 3)
        row[f"{prefix}speedup_max"] = round(max(ratios), 3)
    row |= {
        "requests": len(reqs),
        "output_tokens": sum(len(r.output) for r in reqs),
        "verify_steps": spec_counts[0],
        "drafted": spec_counts[1],
        "accepted": spec_counts[2],
        "accepted_per_verify": round(spec_counts[2] / spec_counts[0], 3) if spec_counts[0] else 0.0,
        "bound": speedup_bound(batch, cost, acceptance),
    }
    return row


def speedup_bound(batch: int, cost: StepCostModel, acceptance: Mapping[int, float]) -> dict[str, Any]:
    """What speculation can gain at this batch size under the measured step cost `T(n)` (seconds
    per decode step of this run by its token count, both modes: `StepCostModel`; CPU time on the
    CPU, wall clock on a GPU) and the
    drafter's acceptance E(g) (tokens per verify step at draft length g, measured on the trace):

    - `uniform`: every sequence verifies a draft of g tokens each step: E(g) T(B) / T(B (g + 1));
    - `speedup`, the bound: a perfect choice of what to verify (only the tokens that will be
      accepted, which no back-off can beat): E(g) T(B) / T(B E(g)), maximised over g, where
      T(B E(g)) is the cheapest measured step of at least B E(g) tokens."""
    out: dict[str, Any] = {
        "step_s_by_tokens": {f"{n:.1f}": round(t, 6) for n, t in cost.sizes()},
        "fitted": cost.fitted,
        "speedup": 0.0,
        "uniform": 0.0,
        "by_draft_len": {},
    }
    if not cost.fitted:
        return out
    for g, e in sorted(acceptance.items()):
        rel = cost(batch * (g + 1)) / cost(batch)
        # verifying the B E accepted tokens, or more where a larger step is cheaper (the CPU's
        # small matrix kernels: 4 rows can cost less than 3)
        floor = min([cost(batch * e)] + [t for n, t in cost.sizes() if n >= batch * e])
        best = e * cost(batch) / floor
        out["by_draft_len"][str(g)] = {
            "tokens_per_step": e,
            "relative_cost": round(rel, 3),
            "uniform": round(e / rel, 3),
            "bound": round(best, 3),
        }
    rows = out["by_draft_len"].values()
    out["uniform"] = max(1.0, max((v["uniform"] for v in rows), default=0.0))  # drafting nothing: 1
    out["speedup"] = max(1.0, max((v["bound"] for v in rows), default=0.0))
    return out
