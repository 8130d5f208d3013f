"""Speculative decoding in the torch engine is lossless: greedy output with speculation is
token-identical to without, over random prompts, stop strings, max_tokens and preemption; the
prefix cache never holds unverified tokens."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legato.engine_adapter.base import GenerateRequest, SamplingParams
from legato.engine_adapter.torch import EngineCore
from legato.engine_adapter.torch.checkpoint import build_default_model
from legato.engine_adapter.torch.config import ConfigError, EngineConfig
from legato.engine_adapter.torch.model import LlamaForCausalLM
from legato.engine_adapter.torch.speculator import AGENT, Speculator
from tests.engine.conftest import TEST_DEVICE
from tests.tiny_model import TINY


def _run(core: EngineCore, requests: list[GenerateRequest]) -> dict[str, tuple[list[int], str, str | None]]:
    outs = core.run_to_completion(requests)
    result = {}
    for rid, chunks in outs.items():
        tokens = [t for c in chunks for t in c.token_ids]
        result[rid] = (tokens, "".join(c.text for c in chunks), chunks[-1].finish_reason)
    return result


def _requests(prompts: list[list[int]], max_tokens: int, stop: tuple[str, ...]) -> list[GenerateRequest]:
    # a repeated prompt gives the drafters something to match
    return [
        GenerateRequest(f"r{i}", tuple(p), SamplingParams(max_tokens=max_tokens, stop=stop, ignore_eos=True))
        for i, p in enumerate(prompts)
    ]


@functools.cache
def _draft_model() -> LlamaForCausalLM:
    """A one-layer model on the engine's vocabulary, weights of another seed: a weak drafter."""
    config = dataclasses.replace(TINY, num_hidden_layers=1)
    return build_default_model(1, config, device=TEST_DEVICE)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.lists(st.integers(3, 255), min_size=2, max_size=12), min_size=1, max_size=4),
    st.integers(1, 40),
    st.sampled_from([(), ("\x07",), ("ab", "\xe4")]),
    st.sampled_from(["suffix", "ngram", "draft-model"]),
    st.integers(1, 6),
    st.sampled_from([32, 64]),
    st.sampled_from([5, 64]),
)
def test_greedy_output_is_identical_with_speculation(
    make_core: Callable[..., EngineCore],
    pieces: list[list[int]],
    max_tokens: int,
    stop: tuple[str, ...],
    drafter: str,
    k: int,
    num_blocks: int,
    budget: int,
) -> None:
    prompts = [p * 3 for p in pieces]  # repeats: drafts get accepted, not only rejected
    # few blocks: preemption; a small step budget: drafts cut short by the budget
    kw: dict[str, Any] = {"num_blocks": num_blocks, "block_size": 4, "max_num_batched_tokens": budget}
    plain = make_core(**kw)
    spec = make_core(**kw)
    spec.speculator = Speculator(drafter, k, draft_model=_draft_model())
    want = _run(plain, _requests(prompts, max_tokens, stop))
    got = _run(spec, _requests(prompts, max_tokens, stop))
    assert got == want
    assert spec.speculator.accepted <= spec.speculator.drafted


def test_speculation_accepts_drafts_and_saves_steps(make_core: Callable[..., EngineCore]) -> None:
    plain = make_core()
    spec = make_core(speculative_drafter="ngram", num_speculative_tokens=4)
    assert spec.speculator is not None and plain.speculator is None
    req = [GenerateRequest("a", tuple(range(10, 30)) * 2, SamplingParams(max_tokens=48, ignore_eos=True))]
    assert _run(spec, req) == _run(plain, req)
    assert spec.speculator.accepted > 0  # the seeded model's greedy output loops: drafts match
    assert spec.steps < plain.steps


def test_prefix_cache_holds_only_verified_tokens(make_core: Callable[..., EngineCore]) -> None:
    """After a speculating run, every cached block's hash chain is one of the real sequence's."""
    spec = make_core(block_size=4)
    spec.speculator = Speculator("ngram", 6)
    prompt = tuple(range(40, 52)) * 2
    out = _run(spec, [GenerateRequest("a", prompt, SamplingParams(max_tokens=40, ignore_eos=True))])
    full = list(prompt) + out["a"][0]
    real = set(spec._hashes(full, None))
    assert spec.blocks.cached and set(spec.blocks.cached) <= real
    # and the cached KV is right: continuing the full text from the cache matches a plain engine
    plain = make_core(block_size=4)
    cont = [GenerateRequest("b", tuple(full), SamplingParams(max_tokens=8, ignore_eos=True))]
    assert _run(spec, cont) == _run(plain, cont)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"speculative_drafter": "eagle"}, "'speculative_drafter' must be one of suffix"),
        ({"speculative_drafter": "ngram", "num_speculative_tokens": -1}, "must be between 0 and 64, got -1"),
        ({"num_speculative_tokens": 1000}, "'num_speculative_tokens' must be between 0 and 64"),
    ],
)
def test_bad_engine_speculation_config_is_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EngineConfig(**overrides)


def test_bad_speculation_options_are_refused() -> None:
    with pytest.raises(ValueError, match="max draft length must be between 0 and 64"):
        Speculator("ngram", -1)
    with pytest.raises(ValueError, match="max draft length"):
        Speculator("ngram", 10**6)
    with pytest.raises(ValueError, match="unknown drafter"):
        Speculator("medusa", 4)


def test_requests_that_cannot_speculate_share_the_batch_unchanged(
    make_core: Callable[..., EngineCore],
) -> None:
    """Sampled, n > 1, penalised and logit-biased requests are not speculated; batched with a
    speculating one they get exactly what they get without a speculator."""
    prompt = tuple(range(60, 75)) * 2

    def reqs() -> list[GenerateRequest]:
        return [
            GenerateRequest("greedy", prompt, SamplingParams(max_tokens=24, ignore_eos=True)),
            GenerateRequest(
                "n2", prompt, SamplingParams(max_tokens=12, n=2, temperature=0.9, seed=3, ignore_eos=True)
            ),
            GenerateRequest(
                "pen", prompt, SamplingParams(max_tokens=12, presence_penalty=1.5, ignore_eos=True)
            ),
            GenerateRequest(
                "bias", prompt, SamplingParams(max_tokens=12, logit_bias=((7, 5.0),), ignore_eos=True)
            ),
            GenerateRequest("lp", prompt, SamplingParams(max_tokens=12, logprobs=True, ignore_eos=True)),
        ]

    plain = make_core()
    spec = make_core()
    spec.speculator = Speculator("ngram", 4)
    assert _run(spec, reqs()) == _run(plain, reqs())
    assert spec.speculator.verify_steps > 0


def test_finished_outputs_feed_later_requests(make_core: Callable[..., EngineCore]) -> None:
    spec = make_core(speculative_drafter="suffix-agent", num_speculative_tokens=6)
    plain = make_core()
    req = [GenerateRequest("a", tuple(range(90, 110)), SamplingParams(max_tokens=30, ignore_eos=True))]
    assert _run(spec, req) == _run(plain, req)
    assert spec.speculator is not None and spec.speculator.accepted == 0  # no history yet
    again = [GenerateRequest("b", tuple(range(90, 110)), SamplingParams(max_tokens=30, ignore_eos=True))]
    assert _run(spec, again) == _run(plain, again)
    assert spec.speculator.accepted > 10  # the same output again: drafted from the first one


async def test_speculation_counters_reach_metrics(make_core: Callable[..., EngineCore]) -> None:
    from legato.engine_adapter.server.app import engine_counters

    core = make_core(speculative_drafter="ngram", num_speculative_tokens=4)
    _run(
        core, [GenerateRequest("a", tuple(range(10, 30)) * 2, SamplingParams(max_tokens=32, ignore_eos=True))]
    )
    stats = core.stats()
    assert stats.spec_drafts > 0 and 0 < stats.spec_accepted_tokens <= stats.spec_draft_tokens

    class _Stats:  # the one method engine_counters reads
        async def stats(self) -> object:
            return stats

    lines = "\n".join(await engine_counters(_Stats(), 'model="m"'))  # type: ignore[arg-type]
    assert f'vllm:spec_decode_num_accepted_tokens_total{{model="m"}} {stats.spec_accepted_tokens}' in lines


def test_drafting_that_costs_more_than_it_saves_is_skipped() -> None:
    """A compute-bound batch (no draft worth verifying) pays for drafting once per memory of
    the verify model, not every step; drafting that saves more than it costs runs every step."""

    def speculator() -> Speculator:
        spec = Speculator("suffix", 4)
        for n in (2, 2, 4, 4):  # verifying is priced (a size's first step is warm-up)
            spec.verify_cost.observe(n, 0.01)
        return spec

    spec = Speculator("suffix", 4)
    spec._weigh_drafting(8, 0.001, 0.0)  # verify steps unpriced: keep drafting to measure them
    assert spec.skipping(8) == 0
    spec = speculator()
    spec._weigh_drafting(8, 0.001, None)
    assert spec.skipping(8) == 0
    spec._weigh_drafting(8, 0.001, 0.0)
    assert spec.skipping(8) == int(spec.verify_cost.memory) - 1
    assert spec.skipping(1) == 0  # ... at that batch size only
    spec = speculator()
    spec._weigh_drafting(8, 0.001, 0.0005)
    assert spec.skipping(8) == 1  # saves half its cost: every other step drafts
    spec = speculator()
    spec._weigh_drafting(8, 0.001, 0.002)
    assert spec.skipping(8) == 0


def test_plain_decoding_is_measured_at_a_batch_size_before_drafting_there(
    make_core: Callable[..., EngineCore],
) -> None:
    """Plain decoding is priced from a real step at the batch size (not extrapolated from smaller
    ones, which overprices it and favours verifying): until then the speculator drafts nothing."""
    core = make_core(speculative_drafter="ngram", num_speculative_tokens=4)
    spec = core.speculator
    assert spec is not None
    prompt = tuple(range(10, 30)) * 2
    core.add_request(GenerateRequest("a", prompt, SamplingParams(max_tokens=48, ignore_eos=True)))
    core.step()  # prefill
    core.step()  # plain decode steps: the first is warm-up (not priced), the second priced
    core.step()
    assert spec.drafted == 0 and spec.decode_cost.covers(1) and not spec.decode_cost.covers(2)
    while core.has_unfinished():
        core.step()
    assert spec.drafted > 0


def test_prompts_are_indexed_when_prefilled_not_when_first_drafted(
    make_core: Callable[..., EngineCore],
) -> None:
    """Indexing a prompt for the drafters is a cost of the prompt: it happens in the step that
    prefills it, so the first decode step's drafting time (what the back-off weighs) is lookup
    only."""
    core = make_core(speculative_drafter="suffix", num_speculative_tokens=4)
    spec = core.speculator
    assert spec is not None
    prompt = tuple(range(10, 30)) * 2
    core.add_request(GenerateRequest("a", prompt, SamplingParams(max_tokens=8, ignore_eos=True)))
    core.step()  # the prefill step
    assert spec._reqs["a"].indexed == len(prompt)


def test_a_new_speculator_can_start_from_another_ones_step_costs_but_not_its_text() -> None:
    """`learn_costs_from` copies what was measured of the engine's steps (both cost models and
    the drafting back-off) and nothing learned from text (history, calibration); the copies are
    the new speculator's own from then on."""
    old = Speculator("suffix", 4)
    for n in (2, 2, 4, 4):
        old.verify_cost.observe(n, 0.01)
    for _ in range(2):
        old.decode_cost.observe(1, 0.004)
    old._weigh_drafting(8, 0.001, 0.0)
    old.history.add_output(AGENT, [5, 6, 7, 8])
    old.calibration.record([0.9, 0.9], 0)
    new = Speculator("suffix", 4)
    new.learn_costs_from(old)
    assert new.verify_cost.sizes() == old.verify_cost.sizes() and new.verify_cost.fitted
    assert new.decode_cost(1) == old.decode_cost(1) and new.skipping(8) == old.skipping(8)
    assert new.calibration.accepted == new.calibration.promised == 1.0
    assert new.history is not old.history
    new.verify_cost.observe(8, 1.0)
    new.verify_cost.observe(8, 1.0)
    assert new.verify_cost.sizes() != old.verify_cost.sizes()


def test_a_stale_back_off_re_prices_one_drafted_token_not_whole_drafts(
    make_core: Callable[..., EngineCore],
) -> None:
    """Once verifying is priced, a step that comes after the verify model's memory of plain steps
    re-prices verifying with the likeliest single drafted token (what decides whether drafting
    resumes), not whole drafts: on an engine whose step costs its tokens a whole-draft probe
    costs more than a plain step."""
    core = make_core(speculative_drafter="ngram", num_speculative_tokens=4)
    spec = core.speculator
    assert spec is not None
    prompt = tuple(range(10, 30)) * 3  # repeats: the n-gram drafter proposes full drafts
    for rid in ("a", "b"):
        core.add_request(GenerateRequest(rid, prompt, SamplingParams(max_tokens=40, ignore_eos=True)))
    while spec.verify_steps < 3 and core.has_unfinished():
        core.step()
    for n in (40, 40):  # a second size priced: the curve has a shape
        spec.verify_cost.observe(n, 0.01)
    assert spec.verify_cost.fitted
    spec._since_verify = int(spec.verify_cost.memory)  # backed off for as long as it remembers
    before = spec.drafted
    core.step()
    assert spec.drafted - before == 1
