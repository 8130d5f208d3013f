"""Sampling: seeds, top-k/top-p, stop strings and tokens, max_tokens, logprobs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from legato.engine_adapter.base import GenerateRequest, SamplingParams
from legato.engine_adapter.torch import EngineCore
from legato.engine_adapter.torch.sampler import SampleOutput, filter_logits
from tests.engine.conftest import reference_greedy

PROMPT = tuple(b"The agent called a tool and")


def _tokens(
    core: EngineCore, params: SamplingParams, rid: str = "r", prompt: tuple[int, ...] = PROMPT
) -> list[int]:
    out = core.run_to_completion([GenerateRequest(rid, prompt, params)])[rid]
    return [t for o in out for t in o.token_ids]


def test_seeded_sampling_is_reproducible_and_independent_of_batch(
    make_core: Callable[..., EngineCore],
) -> None:
    core = make_core()
    params = SamplingParams(max_tokens=20, temperature=1.0, seed=1234, ignore_eos=True)
    alone = _tokens(core, params, "a")
    # same request again, now sharing its batch with another sampled request
    outs = core.run_to_completion(
        [
            GenerateRequest("b", PROMPT, params),
            GenerateRequest("c", tuple(b"something else"), SamplingParams(max_tokens=20, temperature=1.0)),
        ]
    )
    assert [t for o in outs["b"] for t in o.token_ids] == alone
    other_seed = _tokens(core, SamplingParams(max_tokens=20, temperature=1.0, seed=99, ignore_eos=True), "d")
    assert other_seed != alone


def test_top_k_one_equals_greedy(make_core: Callable[..., EngineCore]) -> None:
    core = make_core()
    greedy = _tokens(core, SamplingParams(max_tokens=15, ignore_eos=True), "g")
    top1 = _tokens(
        core, SamplingParams(max_tokens=15, temperature=0.8, top_k=1, seed=3, ignore_eos=True), "k"
    )
    assert top1 == greedy


def test_filter_logits_top_k_and_top_p() -> None:
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    kept = filter_logits(logits, SamplingParams(temperature=1.0, top_k=2)).isfinite()
    assert kept.tolist() == [True, True, False, False, False]
    probs = torch.softmax(logits, -1)  # ~[0.64, 0.24, 0.09, 0.03, 0.01]
    assert probs[0] < 0.7 < probs[0] + probs[1]
    kept = filter_logits(logits, SamplingParams(temperature=1.0, top_p=0.7)).isfinite()
    assert kept.tolist() == [True, True, False, False, False]
    kept = filter_logits(logits, SamplingParams(temperature=1.0, top_p=0.5)).isfinite()
    assert kept.tolist() == [True, False, False, False, False]


@pytest.mark.parametrize(
    "extreme", [{"temperature": 2e-103}, {"top_p": 5e-324}], ids=["temperature", "top_p"]
)
def test_the_smallest_temperature_or_top_p_the_api_takes_draws_the_top_token(
    make_core: Callable[..., EngineCore], extreme: dict[str, float]
) -> None:
    """Found by the engine server's schemathesis run: logits / 2e-103 overflowed to inf, and a
    top_p of 5e-324 rounds to 0 in float32 and dropped every token, so the softmax was NaN and
    the engine step failed (every request of the batch with it)."""
    logits = torch.tensor([4.0, 3.0, float("-inf"), 1.0])
    probs = filter_logits(logits, SamplingParams(**{"temperature": 1.0, **extreme})).softmax(-1)
    assert probs.tolist() == [1.0, 0.0, 0.0, 0.0]
    core = make_core()
    greedy = _tokens(core, SamplingParams(max_tokens=8, ignore_eos=True), "g")
    drawn = _tokens(core, SamplingParams(max_tokens=8, ignore_eos=True, seed=5, **extreme), "x")
    assert drawn == greedy


def test_max_tokens_and_length_reason(make_core: Callable[..., EngineCore]) -> None:
    core = make_core()
    out = core.run_to_completion(
        [GenerateRequest("m", PROMPT, SamplingParams(max_tokens=7, ignore_eos=True))]
    )["m"]
    assert sum(len(o.token_ids) for o in out) == 7
    assert out[-1].finished and out[-1].finish_reason == "length"
    assert all(not o.finished for o in out[:-1])


def test_stop_token_ends_generation(make_core: Callable[..., EngineCore]) -> None:
    core = make_core()
    greedy = _tokens(core, SamplingParams(max_tokens=12, ignore_eos=True), "g")
    stop_at = greedy[4]
    first = greedy.index(stop_at)
    out = core.run_to_completion(
        [
            GenerateRequest(
                "s", PROMPT, SamplingParams(max_tokens=12, stop_token_ids=(stop_at,), ignore_eos=True)
            )
        ]
    )["s"]
    tokens = [t for o in out for t in o.token_ids]
    assert tokens == greedy[: first + 1]  # the stop token is reported, then generation ends
    assert out[-1].finish_reason == "stop"


def test_stop_string_is_cut_from_text(make_core: Callable[..., EngineCore]) -> None:
    core = make_core()
    # ASCII-only prompt and greedy continuation decoded as text; pick a stop string from inside it
    full = core.run_to_completion(
        [GenerateRequest("f", PROMPT, SamplingParams(max_tokens=30, ignore_eos=True))]
    )["f"]
    text = "".join(o.text for o in full)
    assert text == core.tokenizer.decode([t for o in full for t in o.token_ids])
    stop = text[10:12]
    cut = text.index(stop)
    out = core.run_to_completion(
        [GenerateRequest("s", PROMPT, SamplingParams(max_tokens=30, stop=(stop,), ignore_eos=True))]
    )["s"]
    got = "".join(o.text for o in out)
    assert got == text[:cut]
    assert stop not in got
    assert out[-1].finish_reason == "stop"


def test_logprobs_are_log_softmax_of_sampled_tokens(make_core: Callable[..., EngineCore]) -> None:
    core = make_core()
    params = SamplingParams(max_tokens=6, logprobs=True, ignore_eos=True)
    out = core.run_to_completion([GenerateRequest("l", PROMPT, params)])["l"]
    tokens = [t for o in out for t in o.token_ids]
    logprobs = [lp for o in out for lp in (o.logprobs or ())]
    assert len(logprobs) == len(tokens) == 6
    ref_tokens, ref_logits = reference_greedy(core, list(PROMPT), 6)
    assert tokens == ref_tokens
    for tok, lp, logits in zip(tokens, logprobs, ref_logits, strict=True):
        assert abs(lp - float(torch.log_softmax(logits, -1)[tok])) < 1e-4


def test_logprobs_absent_unless_asked(make_core: Callable[..., EngineCore]) -> None:
    core = make_core()
    out = core.run_to_completion([GenerateRequest("n", PROMPT, SamplingParams(max_tokens=3))])["n"]
    assert all(o.logprobs is None for o in out)


def _force_tokens(monkeypatch: pytest.MonkeyPatch, tokens: list[int]) -> None:
    """Make the engine's sampler emit `tokens` in order (one request), to test detokenization."""
    from legato.engine_adapter.torch import step_sampling

    queue = list(tokens)

    def forced(logits: torch.Tensor, *_: object) -> SampleOutput:
        return SampleOutput([queue.pop(0) for _ in range(logits.shape[0])], None, None)

    monkeypatch.setattr(step_sampling, "sample", forced)


@pytest.mark.parametrize("stop", [(), ("wör",)])
def test_streamed_text_of_split_multibyte_characters(
    make_core: Callable[..., EngineCore], monkeypatch: pytest.MonkeyPatch, stop: tuple[str, ...]
) -> None:
    """Byte tokens split two-, three- and four-byte characters; a special token in between has no
    text. Streamed deltas never show a half character and add up to the one-shot decoding."""
    text = "héllo wörld €5 👋!"
    raw = list(text.encode())
    tokens = [*raw[:3], 256, *raw[3:]]  # 256 (BOS): a special token, no text, inside the stream
    _force_tokens(monkeypatch, tokens)
    core = make_core()
    params = SamplingParams(max_tokens=len(tokens), stop=stop, ignore_eos=True)
    outs = core.run_to_completion([GenerateRequest("r", PROMPT, params)])["r"]
    deltas = [o.text for o in outs]
    assert all("\ufffd" not in d for d in deltas)
    want = text.split(stop[0])[0] if stop else text
    assert "".join(deltas) == want
    assert outs[-1].finish_reason == ("stop" if stop else "length")


def test_a_truncated_character_at_the_end_is_flushed_as_a_replacement(
    make_core: Callable[..., EngineCore], monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = list(b"ok ") + list("👋".encode())[:2]  # the output ends mid-character
    _force_tokens(monkeypatch, tokens)
    params = SamplingParams(max_tokens=len(tokens), ignore_eos=True)
    outs = make_core().run_to_completion([GenerateRequest("r", PROMPT, params)])["r"]
    assert "".join(o.text for o in outs) == "ok \ufffd"
