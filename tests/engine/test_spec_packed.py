"""Speculative verify chunks on the packed decode path: the last token and its draft run as decode
tokens sharing their sequence's workspace row (model_runner.py, decode_workspace.py), rejected
positions roll back (workspace row and blocks), and greedy output stays token-identical to
plain decoding, preemption included."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from legato.engine_adapter.base import GenerateRequest, SamplingParams
from legato.engine_adapter.torch import EngineCore
from legato.engine_adapter.torch.scheduler import ScheduledChunk
from legato.engine_adapter.torch.sequence import Sequence
from legato.engine_adapter.torch.speculator import Speculator
from legato.spec.backoff import StepCostModel
from legato.spec.context import ProgramContext
from legato.spec.suffix_index import Draft

PROMPT = tuple(range(40, 58)) * 2


def _tokens(core: EngineCore, requests: list[GenerateRequest]) -> dict[str, list[int]]:
    return {
        rid: [t for o in outs for t in o.token_ids] for rid, outs in core.run_to_completion(requests).items()
    }


def _greedy(rid: str, prompt: tuple[int, ...], max_tokens: int) -> GenerateRequest:
    return GenerateRequest(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True))


class ScriptedDrafter:
    """Drafts the true greedy continuation (known from a plain run) with every `wrong`-th draft
    token replaced, so acceptance stops at known positions and rejected KV must roll back."""

    name = "scripted"

    def __init__(self, truth: list[list[int]], wrong: int) -> None:
        self.truth = truth  # each request's full greedy token sequence
        self.wrong = wrong
        self.calls = 0

    def propose(self, ctx: ProgramContext, max_len: int) -> Draft:
        text = ctx.index.tokens()
        full = next(v for v in self.truth if v[: len(text)] == text)
        rest = full[len(text) : len(text) + max_len]
        self.calls += 1
        out = [t if (self.calls + i) % self.wrong else (t + 1) % 256 for i, t in enumerate(rest)]
        return Draft(tuple(out), tuple(1.0 for _ in out), len(text))


class _NeverFitted(StepCostModel):
    """A verify-step price that is never measured: the back-off keeps every draft whole, so
    these tests do not depend on the machine's timing."""

    def observe(self, tokens: int, seconds: float) -> None:
        return None


def _scripted(core: EngineCore, truth: list[list[int]], wrong: int, k: int) -> Speculator:
    spec = Speculator("ngram", k)
    spec.verify_cost = _NeverFitted()
    spec._drafters["ngram"] = ScriptedDrafter(truth, wrong)  # type: ignore[assignment]
    core.speculator = spec
    return spec


def _verify_logits(core: EngineCore, seq: Sequence, draft: list[int]) -> torch.Tensor:
    """One verify chunk (last token + `draft`) through the runner, rejected afterwards (the
    sequence is left as it was, its draft KV written but not counted)."""
    seq.token_ids.extend(draft)
    seq.num_draft = len(draft)
    bs = core.config.block_size
    need = -(-(seq.num_computed_tokens + 1 + len(draft)) // bs) - len(seq.block_table)
    if need > 0:
        got = core.blocks.allocate(need)
        assert got is not None
        seq.block_table.extend(got)
    sampled, logits = core.runner.run([ScheduledChunk(seq, 1 + len(draft))])
    del seq.token_ids[len(seq.token_ids) - len(draft) :]
    seq.num_draft = 0
    assert logits is not None and [c.seq for c in sampled] == [seq]
    return logits


@pytest.mark.parametrize("path", ["packed", "kernels", "gather", "torch-ops"])
def test_verify_chunk_logits_match_the_dense_model(make_core: Callable[..., EngineCore], path: str) -> None:
    """Row i of a verify chunk is the model's distribution after draft[:i], on every attention
    path: packed decode, per-layer C kernels, the paged gather (workspace too small), and plain
    torch ops (where the chunk is a prefill chunk)."""
    core = make_core(block_size=4)
    core.model.use_packed_decode = path == "packed"
    core.model.use_cpu_kernels = path != "torch-ops"
    if path == "gather":
        core.runner.workspace.max_bytes = 0
    core.add_request(_greedy("a", PROMPT, 40))
    for _ in range(4):  # prefill and a few plain decodes: the workspace row exists
        core.step()
    seq = core.scheduler.running[0]
    fills = core.runner.workspace.row_fills
    for draft in ([7, 9, 11], [1, 2, 3, 4, 5, 6], [200]):
        logits = _verify_logits(core, seq, draft)
        p = seq.num_computed_tokens
        full = seq.token_ids + draft
        want = core.model.dense_logits(full)[p : p + len(draft) + 1]
        torch.testing.assert_close(logits, want, atol=1e-4, rtol=1e-4)
    if path in ("packed", "kernels"):  # rejected drafts roll back in the row: never refilled
        assert core.runner.workspace.row_fills == fills


def test_packed_verify_is_token_identical_and_rolls_back(make_core: Callable[..., EngineCore]) -> None:
    """Drafts of the true continuation with every third token wrong: acceptance stops at known
    positions, the rejected KV is overwritten, and the output equals plain decoding. Verify steps
    take the packed path (no row refill after the first), and no sequence keeps blocks past its
    verified tokens between steps."""
    prompts = {"a": PROMPT, "b": tuple(range(90, 101)) * 3, "c": (5, 6, 7) * 5}
    plain = make_core(block_size=4, num_blocks=128)
    want = _tokens(plain, [_greedy(r, p, 30) for r, p in prompts.items()])
    truth = [list(p) + want[r] for r, p in prompts.items()]

    core = make_core(block_size=4, num_blocks=128)
    spec = _scripted(core, truth, wrong=3, k=5)
    decoder = core.model.packed_decoder(core.model.kernels_for(torch.device("cpu"), torch.float32))  # type: ignore[arg-type]
    assert decoder is not None
    for r, p in prompts.items():
        core.add_request(_greedy(r, p, 30))
    got: dict[str, list[int]] = {r: [] for r in prompts}
    steps_before = decoder.steps
    decode_steps = 0  # steps in which every running sequence decodes (verify chunks included)
    while core.has_unfinished():
        running = core.scheduler.running
        decode_steps += (
            bool(running)
            and not core.scheduler.waiting
            and all(s.num_computed_tokens == s.num_tokens - 1 for s in running)
        )
        for out in core.step():
            got[out.request_id].extend(out.token_ids)
        for seq in core.scheduler.running:
            assert seq.num_draft == 0
            assert len(seq.block_table) <= -(-(seq.num_computed_tokens + 1) // 4)
    assert got == want
    assert 0 < spec.accepted < spec.drafted  # some drafts accepted, some rejected
    assert spec.verify_steps >= decode_steps > 0
    assert decoder.steps - steps_before == decode_steps  # each one packed forward
    assert core.runner.workspace.row_fills == len(prompts)  # one fill per sequence, ever
    assert core.blocks.num_used == 0


def test_preempted_speculating_sequence_gets_a_fresh_row(make_core: Callable[..., EngineCore]) -> None:
    """Few blocks: speculating sequences are preempted and recomputed; each admission gets its
    own workspace row, so a row never serves KV past what was verified, and output is plain's."""
    prompts = {f"r{i}": tuple(range(20 + 7 * i, 31 + 7 * i)) * 2 for i in range(4)}
    kw = {"block_size": 4, "num_blocks": 30, "max_num_batched_tokens": 64}
    plain = make_core(**kw)
    want = _tokens(plain, [_greedy(r, p, 36) for r, p in prompts.items()])
    truth = [list(p) + want[r] for r, p in prompts.items()]
    core = make_core(**kw)
    spec = _scripted(core, truth, wrong=4, k=6)
    got = _tokens(core, [_greedy(r, p, 36) for r, p in prompts.items()])
    assert got == want
    assert core.scheduler.num_preemptions > 0 and spec.verify_steps > 0
    assert core.blocks.num_used == 0


def test_an_unmeasured_step_verifies_at_most_a_bounded_draft_total() -> None:
    """Before the verify price is known, drafts are verified whole but the step's draft tokens
    are capped (most promising first, whole prefixes), so a first step at a large batch stays
    at most about twice a decode step."""
    from legato.engine_adapter.torch.speculator import _cap_total

    candidates = [[0.9, 0.5, 0.2], [1.0, 1.0, 0.95, 0.3], [0.6]]
    assert _cap_total(candidates, 4) == [[0.9], [1.0, 1.0, 0.95], []]
    assert _cap_total(candidates, 100) == candidates
    assert _cap_total(candidates, 0) == [[], [], []]
