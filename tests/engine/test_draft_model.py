"""The `draft-model` drafter: its drafts are the draft model's greedy continuation of the text
whatever was accepted or rejected before (its KV cache cut back and extended, checked against a
dense recompute); a draft model equal to the target has every draft accepted; output stays
token-identical to decoding without speculation; bad configurations and requests are refused."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from legato.engine_adapter.base import EngineError, GenerateRequest, SamplingParams, SpeculativeParams
from legato.engine_adapter.torch import ByteTokenizer, EngineCore, save_checkpoint
from legato.engine_adapter.torch.checkpoint import CheckpointError, build_default_model
from legato.engine_adapter.torch.config import ConfigError
from legato.engine_adapter.torch.draft_model import DraftModelDrafter
from legato.engine_adapter.torch.model import LlamaForCausalLM
from legato.spec.context import ProgramContext
from legato.spec.drafter import make_drafter
from tests.engine.conftest import TEST_DEVICE
from tests.tiny_model import TINY, tiny_model_config

SMALL = dataclasses.replace(TINY, num_hidden_layers=1)


def _dense_greedy(model: LlamaForCausalLM, tokens: list[int], k: int) -> list[int]:
    seq, out = list(tokens), []
    for _ in range(k):
        out.append(int(model.dense_logits(seq)[-1].argmax()))
        seq.append(out[-1])
    return out


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(3, 255), min_size=1, max_size=20),
    st.lists(
        st.tuples(st.integers(0, 6), st.lists(st.integers(3, 255), max_size=3), st.integers(1, 6)), max_size=6
    ),
)
def test_drafts_equal_a_dense_greedy_continuation_after_any_accept_or_reject(
    prompt: list[int], steps: list[tuple[int, list[int], int]]
) -> None:
    """Each step keeps some of the last draft (accepted), appends other tokens (the target's,
    possibly rejecting the rest) and drafts again: the draft must be what the model would say
    about the whole text from scratch."""
    model = build_default_model(1, SMALL)
    drafter = DraftModelDrafter(model)
    ctx = ProgramContext("agent")
    ctx.add_prompt(prompt)
    draft = drafter.propose(ctx, 4)
    assert list(draft.tokens) == _dense_greedy(model, ctx.index.tokens(), 4)
    for kept, other, k in steps:
        ctx.add_output_tokens([*draft.tokens[:kept], *other] or [7])
        draft = drafter.propose(ctx, k)
        assert list(draft.tokens) == _dense_greedy(model, ctx.index.tokens(), k)
        probs = draft.probs
        assert all(0 < p <= 1 for p in probs) and list(probs) == sorted(probs, reverse=True)


def test_text_longer_than_the_draft_models_positions_drafts_from_its_tail() -> None:
    model = build_default_model(1, dataclasses.replace(SMALL, max_position_embeddings=32))
    drafter = DraftModelDrafter(model)
    ctx = ProgramContext("agent")
    starts = set()
    for i in range(12):
        ctx.add_output_tokens([(7 * i + j) % 250 + 3 for j in range(5)])
        draft = drafter.propose(ctx, 6)
        start = drafter._caches[ctx].start
        starts.add(start)
        assert len(ctx) - start + 6 <= 32  # the text it reads and the draft fit the positions
        assert list(draft.tokens) == _dense_greedy(model, ctx.index.tokens(start), 6)
    assert len(starts) > 2  # it moved on as the text grew


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("drafts")
    out = {
        "self": save_checkpoint(build_default_model(0, TINY), root / "self", ByteTokenizer()),
        "small": save_checkpoint(build_default_model(1, SMALL), root / "small", ByteTokenizer()),
    }
    wide = tiny_model_config()
    out["other-vocab"] = save_checkpoint(
        build_default_model(1, dataclasses.replace(wide, vocab_size=300)), root / "other", ByteTokenizer()
    )
    return out


def _outputs(core: EngineCore, n: int = 3, max_tokens: int = 40) -> dict[str, list[int]]:
    requests = [
        GenerateRequest(
            f"r{i}", tuple(range(10 + i, 30 + i)) * 2, SamplingParams(max_tokens, ignore_eos=True)
        )
        for i in range(n)
    ]
    return {
        rid: [t for c in chunks for t in c.token_ids]
        for rid, chunks in core.run_to_completion(requests).items()
    }


def test_a_draft_model_equal_to_the_target_has_every_draft_accepted(
    make_core: Callable[..., EngineCore], checkpoints: dict[str, Path]
) -> None:
    plain = make_core()
    spec = make_core(speculative_drafter="draft-model", draft_model=str(checkpoints["self"]))
    assert _outputs(spec) == _outputs(plain)
    assert spec.speculator is not None
    assert spec.speculator.drafted > 0 and spec.speculator.accepted == spec.speculator.drafted


def test_a_weaker_draft_model_keeps_output_identical(
    make_core: Callable[..., EngineCore], checkpoints: dict[str, Path]
) -> None:
    plain = make_core()
    spec = make_core(speculative_drafter="draft-model", draft_model=str(checkpoints["small"]), num_blocks=16)
    assert _outputs(spec, n=4) == _outputs(plain, n=4)  # 16 blocks: preemption too
    assert spec.speculator is not None and spec.speculator.accepted <= spec.speculator.drafted


def test_a_request_can_ask_for_the_draft_model(
    make_core: Callable[..., EngineCore], checkpoints: dict[str, Path]
) -> None:
    core = make_core(draft_model=str(checkpoints["self"]))  # no default drafter
    sampling = SamplingParams(max_tokens=30, ignore_eos=True, speculative=SpeculativeParams("draft-model", 4))
    out = core.run_to_completion([GenerateRequest("r", tuple(range(10, 40)), sampling)])
    assert core.speculator is not None and core.speculator.accepted == core.speculator.drafted > 0
    assert out["r"][-1].spec_accepted == core.speculator.accepted


def test_bad_draft_model_configurations_are_refused(
    make_core: Callable[..., EngineCore], checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="'draft_model' is not set"):
        make_core(speculative_drafter="draft-model")
    with pytest.raises(CheckpointError, match="does not exist"):
        make_core(draft_model=str(tmp_path / "missing"))
    for unreadable in ("x" * 5000, "bad\ud800", "nul\x00"):  # too long, unencodable, a NUL
        with pytest.raises(CheckpointError, match="draft model directory"):
            make_core(draft_model=unreadable)
    with pytest.raises(CheckpointError, match="vocab_size 300 but the target has 264"):
        make_core(draft_model=str(checkpoints["other-vocab"]))
    with pytest.raises(ConfigError, match="draft_model"):
        make_core(draft_model="  ")
    with pytest.raises(ValueError, match="runs a model"):
        make_drafter("draft-model")


def test_asking_for_the_draft_model_without_one_is_an_engine_error(
    make_core: Callable[..., EngineCore],
) -> None:
    core = make_core()
    sampling = SamplingParams(max_tokens=4, speculative=SpeculativeParams("draft-model", 4))
    with pytest.raises(EngineError, match="needs an engine started with a draft model"):
        core.add_request(GenerateRequest("r", (10, 11, 12), sampling))


def test_the_draft_model_runs_on_the_targets_device(
    checkpoints: dict[str, Path], make_core: Callable[..., EngineCore]
) -> None:
    core = make_core(draft_model=str(checkpoints["small"]))
    assert core.draft_model is not None
    assert core.draft_model.lm_head.weight.device.type == torch.device(TEST_DEVICE).type
