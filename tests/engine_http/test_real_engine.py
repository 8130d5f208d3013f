"""`legato engine serve` (a real subprocess on a real socket, the seeded default torch model)
driven by the official `openai` client, `VLLMEngine` and `SGLangEngine`; their greedy output must
equal the in-process torch engine's on the same weights."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from legato.engine_adapter.base import GenerateRequest, SamplingParams, collect
from legato.engine_adapter.http import SGLangEngine, VLLMEngine
from legato.engine_adapter.torch import TorchEngine, load_engine
from tests.engine_http.serving import serve_cli

MODEL = "legato-tiny"


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    with serve_cli("--num-blocks", "512", "--seed", "0") as url:
        yield url


@pytest.fixture
async def local() -> AsyncIterator[TorchEngine]:
    engine = load_engine(None, num_blocks=256, seed=0)
    async with engine:
        yield engine


def _request(rid: str, prompt: tuple[int, ...], max_tokens: int = 8) -> GenerateRequest:
    return GenerateRequest(
        request_id=rid,
        prompt_token_ids=prompt,
        sampling=SamplingParams(max_tokens=max_tokens, logprobs=True, ignore_eos=True),
    )


def test_openai_client_streams_chat_completions(served: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{served}/v1", api_key="unused", timeout=60)
    assert [m.id for m in client.models.list().data] == [MODEL]
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons and reasons[-1] in ("stop", "length")
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.completion_tokens <= 12
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0
    # The same request again: the chat prompt's full blocks now come from the prefix cache.
    again = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=12, temperature=0
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert again.choices[0].message.content == streamed
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens >= 16 * (usage.prompt_tokens // 16) - 16


@pytest.mark.parametrize("kind", ["vllm-completions", "vllm-generate", "sglang"])
async def test_http_engines_match_in_process_greedy(served: str, local: TorchEngine, kind: str) -> None:
    prompt = tuple(local.tokenizer.encode(f"The {kind} engine says: the quick brown fox jumps over"))
    expected = await collect(local, _request(f"local-{kind}", prompt, 10))
    if kind == "sglang":
        engine: VLLMEngine | SGLangEngine = SGLangEngine(served, local.tokenizer, timeout=60)
    else:
        engine = VLLMEngine(served, MODEL, local.tokenizer, endpoint=kind.split("-")[1], timeout=60)  # type: ignore[arg-type]
    try:
        first = await collect(engine, _request(f"{kind}-1", prompt, 10))
        second = await collect(engine, _request(f"{kind}-2", prompt, 10))
    finally:
        await engine.close()
    assert first.token_ids == expected.token_ids
    assert first.text == expected.text
    assert first.finish_reason == expected.finish_reason == "length"
    assert first.logprobs is not None and expected.logprobs is not None
    assert first.logprobs == pytest.approx(expected.logprobs, abs=1e-4)
    assert first.prompt_tokens == len(prompt)
    assert second.token_ids == first.token_ids
    assert second.cached_tokens == 16 * ((len(prompt) - 1) // 16) > 0


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
async def test_abort_stops_a_real_generation(served: str, kind: str) -> None:
    from legato.engine_adapter.torch import ByteTokenizer

    tok = ByteTokenizer()
    engine = (
        SGLangEngine(served, tok)
        if kind == "sglang"
        else VLLMEngine(served, MODEL, tok, endpoint="completions")
    )
    rid = f"real-abort-{kind}"
    chunks = []
    try:
        with anyio.fail_after(30):
            async for chunk in engine.generate(_request(rid, tuple(tok.encode("abort me")), 2000)):
                chunks.append(chunk)
                if len(chunks) == 2:
                    await engine.abort(rid)
    finally:
        await engine.close()
    assert chunks[-1].finish_reason == "abort"
    assert sum(len(c.token_ids) for c in chunks) < 2000


def test_bad_requests_against_the_real_engine(served: str) -> None:
    limit = httpx.get(f"{served}/v1/models").json()["data"][0]["max_model_len"]
    too_long = httpx.post(
        f"{served}/v1/completions", json={"model": MODEL, "prompt": [65] * limit, "max_tokens": 4}
    )
    assert too_long.status_code == 400
    assert "shorten the prompt" in too_long.json()["error"]["message"]
    wrong = httpx.post(
        f"{served}/v1/chat/completions",
        json={"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]},
    )
    assert wrong.status_code == 404 and MODEL in wrong.json()["error"]["message"]
    zero = httpx.post(f"{served}/generate", json={"text": "x", "sampling_params": {"max_new_tokens": 0}})
    assert zero.status_code == 400 and "max_new_tokens" in zero.json()["error"]["message"]


def test_serve_with_a_bad_checkpoint_exits_with_the_reason(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from legato.cli import app

    (tmp_path / "config.json").write_text("{}")
    result = CliRunner().invoke(app, ["engine", "serve", "--port", "0", "--checkpoint", str(tmp_path)])
    assert result.exit_code == 2
    assert "model_type" in result.output
