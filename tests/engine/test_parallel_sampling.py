"""`n > 1` in the torch engine: the prompt is prefilled once, its blocks are shared by the samples
(copy-on-write for the partly filled last block), and every sample decodes as if it ran alone."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from legato.engine_adapter.base import GenerateRequest, SamplingParams
from legato.engine_adapter.torch import EngineCore
from legato.engine_adapter.torch.outputs import RequestOutput
from tests.engine.conftest import assert_matches_reference


def _by_sample(outputs: list[RequestOutput], n: int) -> list[list[int]]:
    samples: list[list[int]] = [[] for _ in range(n)]
    for out in outputs:
        samples[out.index].extend(out.token_ids)
    return samples


@pytest.mark.parametrize("prompt_len", [37, 48])  # a partly filled last block (copy-on-write), and none
def test_greedy_samples_match_the_dense_reference_and_prefill_once(
    make_core: Callable[..., EngineCore], prompt_len: int
) -> None:
    core = make_core(block_size=16)
    prompt = [(7 * i + 3) % 250 for i in range(prompt_len)]
    req = GenerateRequest("r", tuple(prompt), SamplingParams(max_tokens=20, ignore_eos=True, n=4))
    outputs = core.run_to_completion([req])["r"]
    samples = _by_sample(outputs, 4)
    for got in samples:
        assert len(got) == 20
        assert_matches_reference(core, prompt, got)
    stats = core.stats()
    assert stats.prefill_tokens == prompt_len  # the prompt went through the model once
    assert stats.prompt_tokens == prompt_len
    assert stats.forked_samples == 3
    assert stats.generated_tokens == 80
    assert [o.finished for o in outputs].count(True) == 1 and outputs[-1].finished
    assert sorted(o.index for o in outputs if o.finish_reason is not None) == [0, 1, 2, 3]
    assert stats.used_blocks == 0  # every shared and copied block was given back


def test_seeded_samples_differ_and_reproduce(make_core: Callable[..., EngineCore]) -> None:
    def run(seed: int) -> list[list[int]]:
        core = make_core()
        sp = SamplingParams(max_tokens=12, temperature=1.0, seed=seed, ignore_eos=True, n=3)
        return _by_sample(core.run_to_completion([GenerateRequest("r", (1, 2, 3, 4, 5), sp)])["r"], 3)

    a, b = run(11), run(11)
    assert a == b
    assert len({tuple(s) for s in a}) == 3
    # sample i is the seed + i request of its own (vLLM's convention)
    core = make_core()
    single = SamplingParams(max_tokens=12, temperature=1.0, seed=12, ignore_eos=True)
    alone = core.run_to_completion([GenerateRequest("s", (1, 2, 3, 4, 5), single)])["s"]
    assert [t for o in alone for t in o.token_ids] == a[1]


def test_forked_samples_survive_preemption(make_core: Callable[..., EngineCore]) -> None:
    # 12 blocks of 4 tokens: 3 samples of 10 + 16 tokens cannot all stay resident.
    core = make_core(num_blocks=12, block_size=4, max_num_batched_tokens=32)
    prompt = list(range(10, 20))
    req = GenerateRequest("r", tuple(prompt), SamplingParams(max_tokens=16, ignore_eos=True, n=3))
    samples = _by_sample(core.run_to_completion([req])["r"], 3)
    assert core.stats().preemptions > 0
    for got in samples:
        assert len(got) == 16
        assert_matches_reference(core, prompt, got)
    assert core.stats().used_blocks == 0


def test_abort_ends_every_sample(make_core: Callable[..., EngineCore]) -> None:
    core = make_core()
    core.add_request(GenerateRequest("r", (1, 2, 3), SamplingParams(max_tokens=50, ignore_eos=True, n=4)))
    core.step()
    core.step()
    final = core.abort_request("r")
    assert final is not None and final.finished and final.finish_reason == "abort"
    assert not core.has_unfinished()
    assert core.stats().used_blocks == 0
