"""Speculation counters of the HTTP engines: `SGLangEngine` reads each finished request's
`meta_info` counts, `VLLMEngine.stats()` the server-wide Prometheus counters. Against a real
server (the tiny torch engine drafting with `ngram`, on a real socket) both must agree with each
other, and the parsers with the servers' own shapes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from legato.engine_adapter.base import GenerateRequest, SamplingParams, collect
from legato.engine_adapter.http import SGLangEngine, VLLMEngine
from legato.engine_adapter.http.common import parse_prometheus
from legato.engine_adapter.http.spec_counters import SGLangSpecTally, sglang_request_counts, vllm_spec_stats
from legato.engine_adapter.server import create_engine_app
from legato.engine_adapter.torch import TorchEngine, load_engine
from legato.server.metrics_spec import spec_families
from tests.engine_http.serving import serve_in_thread
from tests.tiny_model import TINY

MODEL = "legato-default"


@pytest.fixture
def served() -> Iterator[tuple[str, TorchEngine]]:
    """A fresh engine per test, so its counters hold only that test's requests."""
    engine: TorchEngine = load_engine(
        model_config=TINY, num_blocks=256, max_num_batched_tokens=256, speculative_drafter="ngram"
    )
    with serve_in_thread(create_engine_app(engine, on_shutdown=engine.close)) as url:
        yield url, engine


def _request(rid: str, engine: TorchEngine) -> GenerateRequest:
    # greedy, no logprobs: what the engine speculates on; the tiny model's greedy text repeats
    prompt = tuple(engine.tokenizer.encode("abcdefgh" * 6))
    return GenerateRequest(rid, prompt, SamplingParams(max_tokens=40, ignore_eos=True))


async def test_sglang_per_request_counts_add_up_to_vllms_server_counters(
    served: tuple[str, TorchEngine],
) -> None:
    url, engine = served
    sglang = SGLangEngine(url, engine.tokenizer, timeout=60)
    vllm = VLLMEngine(url, MODEL, engine.tokenizer, endpoint="completions", timeout=60)
    try:
        results = [await collect(sglang, _request(f"spec-{i}", engine)) for i in range(3)]
        tally = await sglang.stats()
        server = await vllm.stats()
    finally:
        await sglang.close()
        await vllm.close()
    drafted = sum(r.spec_drafted for r in results)
    accepted = sum(r.spec_accepted for r in results)
    assert drafted > 0 and 0 < accepted <= drafted
    assert (tally.spec_draft_tokens, tally.spec_accepted_tokens) == (drafted, accepted)
    # verify forwards: each emits the target's own token after the accepted ones
    assert tally.spec_drafts == sum(len(r.token_ids) - r.spec_accepted for r in results)
    assert (server.spec_draft_tokens, server.spec_accepted_tokens) == (drafted, accepted)
    assert sum(server.spec_drafted_by_position) == drafted
    assert sum(server.spec_accepted_by_position) == accepted
    assert 0 < server.spec_drafts <= tally.spec_drafts
    # what `legato serve` exports per replica from either
    names = {family.name: family.samples[0].value for family in spec_families([server])}
    assert names == {
        "legato_spec_verify_steps": server.spec_drafts,
        "legato_spec_draft_tokens": drafted,
        "legato_spec_accepted_tokens": accepted,
    }


async def test_without_speculation_the_counters_stay_zero() -> None:
    engine: TorchEngine = load_engine(model_config=TINY, num_blocks=256)
    with serve_in_thread(create_engine_app(engine, on_shutdown=engine.close)) as url:
        sglang = SGLangEngine(url, engine.tokenizer, timeout=60)
        vllm = VLLMEngine(url, MODEL, engine.tokenizer, endpoint="completions", timeout=60)
        try:
            result = await collect(sglang, _request("plain", engine))
            assert (result.spec_drafted, result.spec_accepted) == (0, 0)
            assert (await sglang.stats()).spec_drafts == 0
            server = await vllm.stats()
        finally:
            await sglang.close()
            await vllm.close()
    assert (server.spec_drafts, server.spec_draft_tokens, server.spec_accepted_by_position) == (0, 0, ())
    assert list(spec_families([server])) == []


# vLLM v1's exposition: one label set per engine core, the per-position counter by `position`
VLLM_METRICS = """\
# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 10.0
vllm:spec_decode_num_drafts_total{engine="1",model_name="m"} 5.0
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 30.0
vllm:spec_decode_num_draft_tokens_total{engine="1",model_name="m"} 15.0
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 21.0
vllm:spec_decode_num_accepted_tokens_total{engine="1",model_name="m"} 9.0
vllm:spec_decode_num_accepted_tokens_per_pos{engine="0",model_name="m",position="0"} 9.0
vllm:spec_decode_num_accepted_tokens_per_pos{engine="0",model_name="m",position="2"} 4.0
vllm:spec_decode_num_accepted_tokens_per_pos{engine="1",model_name="m",position="0"} 5.0
vllm:spec_decode_num_accepted_tokens_per_pos{engine="0",model_name="m",position="x"} 1.0
"""


def test_vllm_counters_sum_over_engine_cores_and_fill_positions() -> None:
    stats = vllm_spec_stats(parse_prometheus(VLLM_METRICS))
    assert (stats.spec_drafts, stats.spec_draft_tokens, stats.spec_accepted_tokens) == (15, 45, 30)
    assert stats.spec_accepted_by_position == (14, 0, 4)  # position 1 unreported: 0; "x" ignored
    assert stats.spec_drafted_by_position == ()  # vLLM drafts a fixed length: no such counter


BASE = {"completion_tokens": 40, "spec_verify_ct": 16}


@pytest.mark.parametrize(
    ("meta", "counts"),
    [
        # recent SGLang: accepted and drafted tokens by name
        ({**BASE, "spec_accept_token_num": 24, "spec_draft_token_num": 48}, (16, 48, 24)),
        # the other naming
        ({**BASE, "spec_accepted_drafts": 24, "spec_proposed_drafts": 48}, (16, 48, 24)),
        # only the verify count: accepted = completion - verify, drafted unknown
        ({**BASE, "spec_accept_length": 2.5}, (16, 0, 24)),
        # no speculation, or nonsense
        ({"completion_tokens": 40}, None),
        ({"completion_tokens": 40, "spec_verify_ct": 0}, None),
        ({"completion_tokens": 40, "spec_verify_ct": "16"}, None),
        ({"completion_tokens": 40, "spec_verify_ct": True}, None),
        ({"completion_tokens": 40, "spec_verify_ct": float("inf")}, None),
        ({"completion_tokens": 40, "spec_verify_ct": float("nan")}, None),
        ({**BASE, "spec_accept_token_num": float("inf")}, (16, 0, 24)),  # not a count: derived
        ({"completion_tokens": 2**70, "spec_verify_ct": 2**64}, (2**64, 0, 2**70 - 2**64)),
    ],
)
def test_sglang_meta_info_shapes(meta: dict[str, object], counts: tuple[int, int, int] | None) -> None:
    assert sglang_request_counts(meta) == counts
    tally = SGLangSpecTally()
    assert tally.add(meta) == ((counts[1], counts[2]) if counts else (0, 0))
    stats = tally.stats()
    assert (stats.spec_drafts, stats.spec_draft_tokens, stats.spec_accepted_tokens) == (counts or (0, 0, 0))


def test_broken_vllm_samples_count_as_zero_and_positions_stay_bounded() -> None:
    text = "\n".join(
        [
            'vllm:spec_decode_num_drafts_total{engine="0"} +Inf',
            'vllm:spec_decode_num_drafts_total{engine="1"} 4',
            "vllm:spec_decode_num_draft_tokens_total NaN",
            "vllm:spec_decode_num_accepted_tokens_total -3",
            'vllm:spec_decode_num_accepted_tokens_per_pos{position="99999999999"} 1',
            'vllm:spec_decode_num_accepted_tokens_per_pos{position="1"} 2',
        ]
    )
    stats = vllm_spec_stats(parse_prometheus(text))
    assert (stats.spec_drafts, stats.spec_draft_tokens, stats.spec_accepted_tokens) == (4, 0, 0)
    assert stats.spec_accepted_by_position == (0, 2)
