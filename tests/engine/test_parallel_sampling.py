"""`n > 1` in the torch engine: the prompt is prefilled once, its blocks are shared by the samples
(copy-on-write for the partly filled last block), and every sample decodes as if it ran alone."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legato.engine_adapter.base import GenerateRequest, SamplingParams
from legato.engine_adapter.torch import EngineCore
from legato.engine_adapter.torch.outputs import RequestOutput
from tests.engine.conftest import assert_matches_reference
from tests.engine.test_correctness import batch_mixes


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


def test_the_largest_seed_with_several_samples_wraps_instead_of_failing(
    make_core: Callable[..., EngineCore],
) -> None:
    core = make_core()
    sp = SamplingParams(max_tokens=4, temperature=1.0, seed=2**64 - 1, ignore_eos=True, n=3)
    samples = _by_sample(core.run_to_completion([GenerateRequest("r", (1, 2, 3), sp)])["r"], 3)
    assert [len(s) for s in samples] == [4, 4, 4]


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


def test_one_token_samples_finish_in_the_fork_step(make_core: Callable[..., EngineCore]) -> None:
    core = make_core()
    req = GenerateRequest("r", (1, 2, 3, 4), SamplingParams(max_tokens=1, temperature=1.0, seed=0, n=3))
    outputs = core.run_to_completion([req])["r"]
    assert sorted(o.index for o in outputs) == [0, 1, 2]
    assert all(o.finish_reason == "length" for o in outputs) and outputs[-1].finished
    assert core.stats().used_blocks == 0 and not core.has_unfinished()


def test_fork_without_prefix_caching(make_core: Callable[..., EngineCore]) -> None:
    core = make_core(enable_prefix_caching=False, block_size=8)
    prompt = list(range(30, 51))  # 21 tokens: the third block is shared half full
    req = GenerateRequest("r", tuple(prompt), SamplingParams(max_tokens=10, ignore_eos=True, n=2))
    for got in _by_sample(core.run_to_completion([req])["r"], 2):
        assert_matches_reference(core, prompt, got)
    assert core.stats().prefill_tokens == len(prompt) and core.stats().used_blocks == 0


def test_block_sharing_and_copy_on_write_count_references() -> None:
    from legato.engine_adapter.torch.block_manager import BlockManager

    blocks = BlockManager(num_blocks=4, block_size=4)
    table = blocks.allocate(2)
    assert table is not None
    blocks.fork(table)  # a second sequence shares both blocks
    assert all(blocks.is_shared(b) for b in table) and blocks.num_free == 2
    private = blocks.copy_on_write(table[1])
    assert private is not None and private != table[1]
    assert not blocks.is_shared(table[1]) and blocks.num_free == 1
    assert blocks.copy_on_write(table[1]) == table[1]  # the last holder writes in place
    blocks.release([table[0], table[1]])
    blocks.release([table[0], private])
    assert blocks.num_free == 4


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mix=batch_mixes(),
    ns=st.lists(st.integers(1, 4), min_size=5, max_size=5),
    budget=st.sampled_from([8, 17, 64]),
    blocks=st.sampled_from([16, 24, 64]),
)
def test_mixed_n_batches_match_the_dense_reference(
    make_core: Callable[..., EngineCore],
    mix: list[tuple[list[int], int]],
    ns: list[int],
    budget: int,
    blocks: int,
) -> None:
    """Requests with and without n > 1 in one batch, under a small pool (preemption, recompute
    of forked samples) and a small token budget (chunked prefill before the fork)."""
    core = make_core(num_blocks=blocks, max_num_batched_tokens=budget, max_num_seqs=6)
    reqs = [
        GenerateRequest(f"r{i}", tuple(p), SamplingParams(max_tokens=m, ignore_eos=True, n=ns[i]))
        for i, (p, m) in enumerate(mix)
    ]
    outs = core.run_to_completion(reqs)
    for i, (prompt, max_tokens) in enumerate(mix):
        for tokens in _by_sample(outs[f"r{i}"], ns[i]):
            assert len(tokens) == max_tokens
            assert_matches_reference(core, prompt, tokens)
    stats = core.stats()
    assert stats.used_blocks == 0 and stats.running == 0 and stats.waiting == 0
    assert stats.forked_samples == sum(n - 1 for n in ns[: len(mix)])
