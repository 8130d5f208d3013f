"""The HTTP engines against response shapes that only the real servers produce (a stand-in app
on a real socket): SGLang's incremental streaming mode, vLLM's non-streamed token endpoint, and
an old vLLM without `return_token_ids`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from legato.engine_adapter.base import EngineError, GenerateRequest, SamplingParams, collect
from legato.engine_adapter.http import SGLangEngine, VLLMEngine
from tests.engine_http.fake_engine import FakeTokenizer
from tests.engine_http.serving import serve_in_thread

OUT = [104, 105, 33]  # "hi!"


def _upstream_app() -> FastAPI:
    app = FastAPI()

    @app.post("/generate")
    async def sglang_incremental(request: Request) -> StreamingResponse:
        body = await request.json()
        assert body["input_ids"] and body["rid"] and body["stream"] is True

        async def events() -> AsyncIterator[str]:
            for i, token in enumerate(OUT):
                done = i == len(OUT) - 1
                meta = {
                    "id": body["rid"],
                    "prompt_tokens": len(body["input_ids"]),
                    "completion_tokens": i + 1,
                    "cached_tokens": 16,
                    "output_token_logprobs": [[-0.5 - i, token, None]],
                    "finish_reason": {"type": "stop", "matched": 33} if done else None,
                }
                event = {"text": chr(token), "output_ids": [token], "meta_info": meta}
                yield f"data: {json.dumps(event)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/inference/v1/generate")
    async def vllm_tokens(request: Request) -> JSONResponse:
        body = await request.json()
        content = [{"token": f"token_id:{t}", "logprob": -1.0} for t in OUT]
        return JSONResponse(
            {
                "request_id": body["request_id"],
                "choices": [
                    {"index": 0, "token_ids": OUT, "finish_reason": "stop", "logprobs": {"content": content}}
                ],
                "usage": {
                    "prompt_tokens": len(body["token_ids"]),
                    "completion_tokens": 3,
                    "total_tokens": 0,
                    "prompt_tokens_details": {"cached_tokens": 32},
                },
            }
        )

    @app.post("/v1/completions")
    async def old_vllm(request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            yield 'data: {"choices": [{"index": 0, "text": "hi", "finish_reason": null}]}\n\n'
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def _aborting_sglang_app() -> FastAPI:
    """Streams until `/abort_request` names the request, then ends with an abort reason."""
    app = FastAPI()

    aborted: set[str] = set()

    @app.post("/abort_request")
    async def abort_request(request: Request) -> Response:
        aborted.add((await request.json())["rid"])
        return Response(status_code=200)  # SGLang answers with an empty body

    @app.post("/generate")
    async def sglang_until_aborted(request: Request) -> StreamingResponse:
        rid = (await request.json())["rid"]

        async def events() -> AsyncIterator[str]:
            for i in range(1, 500):
                done = rid in aborted
                meta = {
                    "id": rid,
                    "completion_tokens": i,
                    "finish_reason": {"type": "abort"} if done else None,
                }
                yield f"data: {json.dumps({'text': 'a' * i, 'output_ids': [97] * i, 'meta_info': meta})}\n\n"
                if done:
                    break
                await anyio.sleep(0.02)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serve_in_thread(_upstream_app()) as url:
        yield url


@pytest.fixture(scope="module")
def aborting_upstream() -> Iterator[str]:
    with serve_in_thread(_aborting_sglang_app()) as url:
        yield url


def _request(rid: str) -> GenerateRequest:
    return GenerateRequest(
        request_id=rid, prompt_token_ids=tuple(range(40)), sampling=SamplingParams(logprobs=True)
    )


async def test_sglang_incremental_streaming_mode(upstream: str) -> None:
    engine = SGLangEngine(upstream, FakeTokenizer())
    try:
        chunks = [c async for c in engine.generate(_request("inc-1"))]
    finally:
        await engine.close()
    assert [c.token_ids for c in chunks] == [(104,), (105,), (33,)]
    assert "".join(c.text for c in chunks) == "hi!"
    assert [c.logprobs for c in chunks] == [(-0.5,), (-1.5,), (-2.5,)]
    assert chunks[-1].finish_reason == "stop" and chunks[-1].cached_tokens == 16


async def test_vllm_token_endpoint_answered_in_one_piece(upstream: str) -> None:
    engine = VLLMEngine(upstream, "m", FakeTokenizer())  # auto: the OpenAPI document lists the route
    try:
        assert await engine.endpoint() == "generate"
        result = await collect(engine, _request("one-piece"))
    finally:
        await engine.close()
    assert (list(result.token_ids), result.text, result.finish_reason) == (OUT, "hi!", "stop")
    assert result.logprobs == (-1.0, -1.0, -1.0)
    assert (result.prompt_tokens, result.cached_tokens) == (40, 32)


async def test_vllm_without_token_ids_says_which_version_is_needed(upstream: str) -> None:
    engine = VLLMEngine(upstream, "m", FakeTokenizer(), endpoint="completions")
    with pytest.raises(EngineError, match=r"return_token_ids.*0\.10\.2"):
        await collect(engine, _request("old"))
    await engine.close()


async def test_sglang_abort_accepts_an_empty_reply_and_ends_the_stream(aborting_upstream: str) -> None:
    engine = SGLangEngine(aborting_upstream, FakeTokenizer())
    chunks = []
    try:
        with anyio.fail_after(10):
            request = GenerateRequest(request_id="slow-1", prompt_token_ids=(1, 2, 3))
            async for chunk in engine.generate(request):
                chunks.append(chunk)
                if len(chunks) == 3:
                    await engine.abort("slow-1")
    finally:
        await engine.close()
    assert chunks[-1].finish_reason == "abort"
    assert "".join(c.text for c in chunks) == "a" * sum(len(c.token_ids) for c in chunks)
