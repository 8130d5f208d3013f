"""Fixtures for the torch engine tests: a tiny seeded model so every test runs in milliseconds."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch

from legato.engine_adapter.torch import EngineCore, build_core
from tests.tiny_model import TINY


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    # The CI box has 2 shared cores; one intra-op thread avoids oversubscription stalls.
    torch.set_num_threads(1)


# `LEGATO_TEST_DEVICE=cuda` runs the tests that build their core here on a GPU (float32, so the
# tolerances that compare with the dense reference still hold); `scripts/gpu_check.sh` does.
TEST_DEVICE = os.environ.get("LEGATO_TEST_DEVICE", "cpu")


@pytest.fixture
def make_core() -> Callable[..., EngineCore]:
    def make(**overrides: Any) -> EngineCore:
        overrides.setdefault("num_blocks", 64)
        overrides.setdefault("max_num_batched_tokens", 64)
        if TEST_DEVICE != "cpu":
            overrides.setdefault("dtype", "float32")
        return build_core(device=TEST_DEVICE, model_config=TINY, **overrides)

    return make


def reference_greedy(
    core: EngineCore, prompt: list[int], max_tokens: int
) -> tuple[list[int], list[torch.Tensor]]:
    """Dense, uncached greedy decoding: the full sequence is recomputed for every token."""
    seq = list(prompt)
    out: list[int] = []
    logits_seen: list[torch.Tensor] = []
    for _ in range(max_tokens):
        logits = core.model.dense_logits(seq)[-1]
        tok = int(logits.argmax())
        out.append(tok)
        logits_seen.append(logits)
        seq.append(tok)
    return out, logits_seen


def assert_matches_reference(core: EngineCore, prompt: list[int], got: list[int], tol: float = 1e-4) -> None:
    """Engine greedy tokens must equal the dense reference's. Batched and paged float32 math can
    differ from the dense forward in the last bits, so where the tokens differ the reference must
    have a near-tie there (the engine's token within `tol` of the max logit); after such a
    legitimate divergence the continuations are no longer comparable and checking stops."""
    ref, logits = reference_greedy(core, prompt, len(got))
    for i, (a, b) in enumerate(zip(got, ref, strict=True)):
        if a != b:
            gap = float(logits[i].max() - logits[i][a])
            assert gap <= tol, f"token {i}: engine {a} vs reference {b}, logit gap {gap} (not a tie)"
            return
