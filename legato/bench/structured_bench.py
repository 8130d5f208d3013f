"""`legato bench structured`: what structured output costs the torch engine's decode.

One run, same weights (the seeded default model), same batch of 8 prompts, same sampling: decode
tokens/s without a constraint, and with a `json_schema` constraint (the per-sequence llguidance
matcher, its mask in the sampler and the closing witness near the end of the budget). Decode
time is the sum of a side's steps after the one that produced every request's first token;
tokens are those these steps generated. The two sides run side by side, one engine each, stepped
alternately (which goes first alternates by round), so load from elsewhere on a shared machine
lands on both alike. Every round decodes the same tokens (seeded), so step k is the same work in
each: a side's decode time is the sum over its steps of each step's fastest time across rounds,
which drops a step the scheduler preempted unless it was preempted in every round (the best
whole round still carries the preemptions of its ~128 steps: on a loaded 2-core machine that
moved the ratio by +-15% from run to run). The same ratio in process CPU time per token is
reported too.
Target: constrained >= 0.9x.

The constrained outputs are also checked: each must end with "stop" and parse as JSON.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BATCH = 8
TARGET_RATIO = 0.9
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "unit": {"enum": ["metric", "imperial"]},
        "home": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
    "required": ["name", "age", "tags", "unit", "home"],
}


@dataclass(frozen=True, slots=True)
class StructuredResult:
    device: str
    batch: int
    prompt_tokens: int
    new_tokens: int
    repeats: int
    unconstrained_tok_s: float
    constrained_tok_s: float
    ratio: float
    target_ratio: float
    target_met: bool
    constrained_valid: int  # outputs that ended with "stop" and parse as JSON
    # The same ratio in process CPU time per token: steadier than wall time on a shared machine.
    cpu_ratio: float


class _Side:
    """One side of a round: its engine and requests, stepped by `_run` in turn with the other."""

    def __init__(self, core: Any, requests: list[Any]) -> None:
        self.core = core
        for r in requests:
            core.add_request(r)
        self.pending = {r.request_id for r in requests}  # no first token yet
        self.texts: dict[str, str] = {r.request_id: "" for r in requests}
        self.reasons: dict[str, str | None] = {}
        self.steps: list[tuple[float, float, int]] = []  # decode steps: wall, process CPU, tokens

    def step(self) -> None:
        decoding = not self.pending
        t, cpu = time.perf_counter(), time.process_time()
        outs = self.core.step()
        if decoding:
            self.steps.append(
                (time.perf_counter() - t, time.process_time() - cpu, sum(len(o.token_ids) for o in outs))
            )
        for out in outs:
            self.texts[out.request_id] += out.text
            if out.finished:
                self.reasons[out.request_id] = out.finish_reason
            if not decoding and out.token_ids:
                self.pending.discard(out.request_id)


def _fastest(rounds: list[list[tuple[float, float, int]]]) -> tuple[float, float]:
    """Wall and CPU seconds per token: each decode step's fastest time across rounds, summed."""
    columns = list(zip(*rounds, strict=False))  # the same steps in every round (seeded)
    tokens = max(1, sum(column[0][2] for column in columns))
    wall = sum(min(s[0] for s in column) for column in columns)
    cpu = sum(min(s[1] for s in column) for column in columns)
    return wall / tokens, cpu / tokens


def run(device: str = "cpu", quick: bool = False) -> StructuredResult:
    # The shortest valid output of SCHEMA is 79 byte tokens: quick runs still leave room for content.
    prompt_tokens, new_tokens, repeats = (16, 96, 1) if quick else (64, 128, 5)
    import torch

    # One intra-op thread for both sides: process CPU time is then the work done, not OpenMP
    # workers spinning while they wait (which dominates on a loaded 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(device, quick, prompt_tokens, new_tokens, repeats)
    finally:
        torch.set_num_threads(threads)


def _run(device: str, quick: bool, prompt_tokens: int, new_tokens: int, repeats: int) -> StructuredResult:
    from legato.engine_adapter.base import GenerateRequest, SamplingParams
    from legato.engine_adapter.chat.grammar import json_schema_grammar
    from legato.engine_adapter.torch import (
        ByteTokenizer,
        EngineConfig,
        EngineCore,
        ModelConfig,
        build_default_model,
    )

    # --quick (a smoke test) runs a 2-layer model of the same vocabulary: the grammar side costs
    # the same, the forward pass far less, so its ratio is a pessimistic one.
    small = ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2)  # fmt: skip
    model = build_default_model(0, config=small if quick else None, device=device)
    tokenizer = ByteTokenizer()
    config = EngineConfig(device=device, dtype="float32", num_blocks=512, max_num_batched_tokens=1024)
    rng = random.Random(0)
    prompts = [tuple(rng.randrange(32, 127) for _ in range(prompt_tokens)) for _ in range(BATCH)]
    grammar = json_schema_grammar(SCHEMA)
    steps: dict[bool, list[list[tuple[float, float, int]]]] = {False: [], True: []}
    valid = 0
    for round_ in range(repeats):
        sides = {
            constrained: _Side(
                EngineCore(model, tokenizer, config, model_name="bench"),
                [
                    GenerateRequest(
                        f"r{round_}-{constrained}-{i}",
                        p,
                        SamplingParams(
                            max_tokens=new_tokens,
                            temperature=1.0,
                            seed=i,
                            ignore_eos=not constrained,
                            grammar=grammar if constrained else None,
                        ),
                    )
                    for i, p in enumerate(prompts)
                ],
            )
            for constrained in (False, True)
        }
        order = [sides[False], sides[True]][:: 1 if round_ % 2 == 0 else -1]
        while any(side.core.has_unfinished() for side in order):
            for side in order:
                if side.core.has_unfinished():
                    side.step()
        for constrained, side in sides.items():
            steps[constrained].append(side.steps)
        done = sides[True]
        valid = sum(
            1 for rid, text in done.texts.items() if done.reasons.get(rid) == "stop" and _is_json(text)
        )
    (wall_plain, cpu_plain), (wall_guided, cpu_guided) = _fastest(steps[False]), _fastest(steps[True])
    plain, guided = 1 / wall_plain, 1 / wall_guided
    ratio = guided / plain
    return StructuredResult(
        device,
        BATCH,
        prompt_tokens,
        new_tokens,
        repeats,
        plain,
        guided,
        ratio,
        TARGET_RATIO,
        ratio >= TARGET_RATIO,
        valid,
        cpu_plain / cpu_guided,
    )


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def report(result: StructuredResult) -> str:
    return (
        f"structured decoding, torch engine on {result.device}, batch {result.batch}, "
        f"{result.new_tokens} new tokens, fastest of {result.repeats} rounds per step\n"
        f"  unconstrained   {result.unconstrained_tok_s:10.1f} tok/s\n"
        f"  json_schema     {result.constrained_tok_s:10.1f} tok/s   "
        f"({result.constrained_valid}/{result.batch} valid JSON)\n"
        f"  ratio           {result.ratio:10.3f}   (target >= {result.target_ratio}: "
        f"{'met' if result.target_met else 'NOT met'})\n"
        f"  CPU-time ratio  {result.cpu_ratio:10.3f}   (process CPU per token: steadier on a shared machine)"
    )


def main(json_out: Path | None, device: str = "cpu", quick: bool = False) -> StructuredResult:
    result = run(device, quick)
    print(report(result))
    if json_out is not None:
        json_out.write_text(json.dumps(asdict(result), indent=2))
        print(f"wrote {json_out}")
    return result
