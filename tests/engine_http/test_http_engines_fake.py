"""VLLMEngine and SGLangEngine against the engine server (fake engine behind it), over real
sockets: generation, streaming, logprobs, cached tokens, pass-through, abort, error mapping."""

from __future__ import annotations

import socket

import anyio
import pytest

from legato.engine_adapter.base import EngineError, GenerateRequest, SamplingParams, collect
from legato.engine_adapter.http import SGLangEngine, VLLMEngine
from legato.engine_adapter.http.common import IncrementalDecoder, parse_prometheus
from tests.engine_http.fake_engine import FakeEngine, FakeTokenizer, expected_greedy

MODEL = FakeEngine.model_name
PROMPT = tuple(range(30, 70))  # 40 tokens: two full 16-token blocks


def _request(rid: str, max_tokens: int = 8, **kwargs: object) -> GenerateRequest:
    sampling = SamplingParams(max_tokens=max_tokens, logprobs=True)
    return GenerateRequest(request_id=rid, prompt_token_ids=PROMPT, sampling=sampling, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("endpoint", ["completions", "generate", "auto"])
async def test_vllm_engine_generates_with_logprobs_and_cached_tokens(fake_url: str, endpoint: str) -> None:
    engine = VLLMEngine(fake_url, MODEL, FakeTokenizer(), endpoint=endpoint, timeout=10)  # type: ignore[arg-type]
    try:
        salt = f"salt-{endpoint}"  # a fresh salt: the first request is a miss
        first = await collect(engine, _request(f"v-{endpoint}-1", cache_salt=salt))
        assert list(first.token_ids) == expected_greedy(PROMPT, 8)
        assert first.text == "".join(chr(t) for t in first.token_ids)
        assert first.finish_reason == "length"
        assert (
            first.logprobs is not None
            and len(first.logprobs) == 8
            and first.logprobs[0] == pytest.approx(-0.25)
        )
        assert (first.prompt_tokens, first.cached_tokens) == (40, 0)
        second = await collect(engine, _request(f"v-{endpoint}-2", cache_salt=salt))
        assert second.token_ids == first.token_ids
        assert second.cached_tokens == 32
        if endpoint == "auto":
            assert await engine.endpoint() == "generate"  # the server's OpenAPI lists the token route
    finally:
        await engine.close()


async def test_vllm_engine_streams_token_by_token_and_passes_salt(
    fake_url: str, fake_engine: FakeEngine
) -> None:
    engine = VLLMEngine(fake_url, MODEL, FakeTokenizer(), endpoint="completions", priority_scheduling=True)
    try:
        chunks = [c async for c in engine.generate(_request("v-stream", 5, cache_salt="t1", priority=4))]
    finally:
        await engine.close()
    assert [len(c.token_ids) for c in chunks] == [1, 1, 1, 1, 1]
    assert [c.finished for c in chunks] == [False] * 4 + [True]
    sent = next(r for r in fake_engine.requests if r.request_id == "v-stream")
    assert (sent.cache_salt, sent.priority) == ("t1", 4)


async def test_sglang_engine_generates_and_routes_by_session(fake_url: str, fake_engine: FakeEngine) -> None:
    engine = SGLangEngine(fake_url, FakeTokenizer(), priority_scheduling=True, timeout=10)
    try:
        result = await collect(engine, _request("s-1", session_id="run-7", priority=-1, cache_salt="salt-s"))
        again = await collect(engine, _request("s-2", session_id="run-7", cache_salt="salt-s"))
    finally:
        await engine.close()
    assert list(result.token_ids) == expected_greedy(PROMPT, 8)
    assert result.text == "".join(chr(t) for t in result.token_ids)
    assert result.logprobs is not None and len(result.logprobs) == 8
    assert (result.prompt_tokens, result.cached_tokens, again.cached_tokens) == (40, 0, 32)
    sent = next(r for r in fake_engine.requests if r.request_id == "s-1")
    assert (sent.session_id, sent.priority, sent.cache_salt) == ("run-7", -1, "salt-s")


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
async def test_abort_ends_the_stream_and_the_engine_request(
    slow_url: str, slow_engine: FakeEngine, kind: str
) -> None:
    tok = FakeTokenizer()
    engine = (
        VLLMEngine(slow_url, MODEL, tok, endpoint="completions")
        if kind == "vllm"
        else SGLangEngine(slow_url, tok)
    )
    rid = f"abort-{kind}"
    chunks = []
    try:
        with anyio.fail_after(10):
            async for chunk in engine.generate(_request(rid, 200)):
                chunks.append(chunk)
                if len(chunks) == 2:
                    await engine.abort(rid)
    finally:
        await engine.close()
    assert chunks[-1].finished and chunks[-1].finish_reason == "abort"
    assert len(chunks) < 100  # of the 200 asked for: the abort cut it short
    for _ in range(250):  # the server aborts the engine request within 5 s
        if rid in slow_engine.aborted:
            break
        await anyio.sleep(0.02)
    assert rid in slow_engine.aborted


async def test_connection_refused_is_a_clear_engine_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    for engine in (
        VLLMEngine(f"http://127.0.0.1:{port}", "m", FakeTokenizer(), endpoint="completions"),
        SGLangEngine(f"http://127.0.0.1:{port}", FakeTokenizer()),
    ):
        with pytest.raises(EngineError, match=r"cannot connect to .* is the server running"):
            await collect(engine, _request("refused"))
        await engine.close()


async def test_server_rejection_carries_the_servers_message(fake_url: str) -> None:
    engine = VLLMEngine(fake_url, "other-model", FakeTokenizer(), endpoint="completions")
    with pytest.raises(EngineError, match=r"rejected /v1/completions \(404\).*'fake-model'"):
        await collect(engine, _request("wrong-model"))
    await engine.close()
    sg = SGLangEngine(fake_url, FakeTokenizer())
    too_long = GenerateRequest(
        request_id="long", prompt_token_ids=(1,) * 450, sampling=SamplingParams(max_tokens=5)
    )
    with pytest.raises(EngineError, match=r"\(400\).*exceeds the 400"):
        await collect(sg, too_long)
    await sg.close()


async def test_capacity_from_metrics_and_server_info(fake_url: str) -> None:
    vllm = VLLMEngine(fake_url, MODEL, FakeTokenizer())
    sg = SGLangEngine(fake_url, FakeTokenizer())
    try:
        for engine in (vllm, sg):
            cap = await engine.capacity()
            assert (cap.block_size, cap.total_blocks, cap.free_blocks) == (16, 100, 75)
            assert await engine.cached_prefix_tokens(PROMPT) == 0
    finally:
        await vllm.close()
        await sg.close()


def test_incremental_decoder_holds_back_split_characters() -> None:
    decoder = IncrementalDecoder(FakeTokenizer())
    encoded = "é!".encode()  # é is two bytes: two tokens
    assert decoder.push([encoded[0]]) == ""
    assert decoder.push([encoded[1]]) == "é"
    assert decoder.push([encoded[2]], final=True) == "!"


def test_parse_prometheus_reads_labels_and_values() -> None:
    text = '# HELP x\nvllm:cache_config_info{block_size="16",num_gpu_blocks="8"} 1.0\nfoo 2.5\n'
    parsed = parse_prometheus(text)
    assert parsed["vllm:cache_config_info"] == [({"block_size": "16", "num_gpu_blocks": "8"}, 1.0)]
    assert parsed["foo"] == [({}, 2.5)]
