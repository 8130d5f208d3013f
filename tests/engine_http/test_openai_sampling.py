"""`legato engine serve`'s OpenAI API with the official `openai` client, beyond one greedy sample:
`n` (one prefill, forked KV: the engine's /metrics counters prove it), `top_logprobs` against the
dense forward pass, penalties and `logit_bias`, logprob `bytes` of lone UTF-8 bytes, `echo` and
`best_of`. The server runs in a thread around the tiny torch engine (real socket, real engine)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch

from legato.engine_adapter.server import create_engine_app
from legato.engine_adapter.torch import TorchEngine, load_engine
from tests.engine_http.serving import serve_in_thread
from tests.server.proxy_harness import metric
from tests.tiny_model import TINY

MODEL = "legato-default"
MESSAGES = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def engine() -> TorchEngine:
    return load_engine(model_config=TINY, num_blocks=256, max_num_batched_tokens=256, seed=0)


@pytest.fixture(scope="module")
def url(engine: TorchEngine) -> Iterator[str]:
    with serve_in_thread(create_engine_app(engine, on_shutdown=engine.close)) as served:
        yield served


@pytest.fixture
def client(url: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=60, max_retries=0)


def _counters(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    names = ("legato:prefill_tokens_total", "legato:forked_samples_total", "vllm:prompt_tokens_total")
    return {name: metric(text, name) for name in names}


def test_n_samples_share_one_prefill(client: Any, url: str) -> None:
    before = _counters(url)
    messages = [{"role": "user", "content": "A prompt nobody sent before: n=4, prefilled once."}]
    out = client.chat.completions.create(
        model=MODEL, messages=messages, n=4, max_tokens=12, temperature=1.0, seed=7
    )
    after = _counters(url)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert len({c.message.content for c in out.choices}) > 1  # four samples, not one copied
    assert 4 <= out.usage.completion_tokens <= 4 * 12
    prompt = out.usage.prompt_tokens
    assert after["legato:prefill_tokens_total"] - before["legato:prefill_tokens_total"] == prompt
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == prompt
    assert after["legato:forked_samples_total"] - before["legato:forked_samples_total"] == 3
    # streamed, the same seeded request reassembles to the same four choices
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, n=4, max_tokens=12, temperature=1.0, seed=7, stream=True
    )
    texts = ["", "", "", ""]
    reasons: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    assert texts == [c.message.content for c in out.choices]
    assert sorted(reasons) == [0, 1, 2, 3]


def test_completions_n_and_best_of(client: Any) -> None:
    out = client.completions.create(
        model=MODEL, prompt="Once upon", n=3, max_tokens=6, temperature=1.0, seed=1
    )
    assert [c.index for c in out.choices] == [0, 1, 2]
    streamed = ["", "", ""]
    for chunk in client.completions.create(
        model=MODEL, prompt="Once upon", n=3, max_tokens=6, temperature=1.0, seed=1, stream=True
    ):
        for c in chunk.choices:
            streamed[c.index] += c.text
    assert streamed == [c.text for c in out.choices]
    # best_of 4, n 2: the two samples with the highest total logprob, logprobs not asked for
    best = client.completions.create(
        model=MODEL, prompt="Once upon", n=2, best_of=4, max_tokens=6, temperature=1.0, seed=1
    )
    assert [c.index for c in best.choices] == [0, 1] and all(c.logprobs is None for c in best.choices)
    ranked = client.completions.create(
        model=MODEL, prompt="Once upon", n=4, max_tokens=6, temperature=1.0, seed=1, logprobs=0
    )
    totals = sorted((sum(c.logprobs.token_logprobs) for c in ranked.choices), reverse=True)
    texts = {c.text: sum(c.logprobs.token_logprobs) for c in ranked.choices}
    assert [texts[c.text] for c in best.choices] == pytest.approx(totals[:2])


def test_top_logprobs_match_the_dense_forward(client: Any, engine: TorchEngine) -> None:
    out = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    tok = engine.tokenizer
    seq = tok.apply_chat_template(MESSAGES)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens == 6
    for entry in content:
        ref = torch.log_softmax(engine.core.model.dense_logits(seq)[-1].double(), dim=-1)
        values, ids = torch.topk(ref, 3)
        assert len(entry.top_logprobs) == 3
        for alt, tid, want in zip(entry.top_logprobs, ids.tolist(), values.tolist(), strict=True):
            assert alt.bytes == list(tok.token_bytes(tid))
            assert alt.logprob == pytest.approx(want, abs=1e-4)
        token = ids.tolist()[0]  # greedy: the sampled token is the top alternative
        assert entry.bytes == list(tok.token_bytes(token))
        assert entry.logprob == pytest.approx(float(ref[token]), abs=1e-4)
        seq.append(token)
    # completions: `logprobs: 3` lists the 3 alternatives (plus the sampled token when it is not one)
    comp = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=4, temperature=0, logprobs=3)
    lp = comp.choices[0].logprobs
    assert len(lp.tokens) == 4 and all(3 <= len(d) <= 4 for d in lp.top_logprobs)
    assert all(
        d[t] == pytest.approx(v)
        for d, t, v in zip(lp.top_logprobs, lp.tokens, lp.token_logprobs, strict=True)
    )


def test_logprob_bytes_of_a_lone_utf8_byte(client: Any) -> None:
    # logit_bias forces the first byte of "€" (e2 82 ac), which is no UTF-8 on its own
    out = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=1, temperature=0, logprobs=True, logit_bias={"226": 100}
    )
    entry = out.choices[0].logprobs.content[0]
    assert entry.bytes == [0xE2]
    assert entry.token == "\\xe2"


def test_penalties_change_the_output(client: Any) -> None:
    def tokens(**extra: Any) -> list[int]:
        out = client.completions.create(
            model=MODEL,
            prompt="Hello, w",
            max_tokens=24,
            temperature=0,
            extra_body={"ignore_eos": True, "return_token_ids": True},
            **extra,
        )
        return list(out.choices[0].token_ids)

    plain = tokens()
    assert len(set(plain)) < len(plain)  # the seeded model repeats itself here
    penalised = tokens(frequency_penalty=2.0, presence_penalty=2.0)
    assert len(set(penalised)) > len(set(plain))


def test_echo(client: Any) -> None:
    out = client.completions.create(model=MODEL, prompt="Echo me:", max_tokens=3, temperature=0, echo=True)
    plain = client.completions.create(model=MODEL, prompt="Echo me:", max_tokens=3, temperature=0)
    assert out.choices[0].text == "Echo me:" + plain.choices[0].text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"best_of": 1, "n": 2}, "best_of"),
        ({"best_of": 3, "stream": True}, "best_of"),
        ({"suffix": "end"}, "suffix"),
        ({"echo": True, "logprobs": 1}, "echo"),
        ({"logprobs": 21}, "logprobs"),
        ({"store": True}, "store"),
        ({"user": "u" * 300}, "user"),
        ({"stream_options": {"include_obfuscation": True}}, "include_obfuscation"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_unsupported_values_are_a_400_naming_the_field(url: str, body: dict[str, Any], field: str) -> None:
    r = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "x", **body}, timeout=30)
    assert r.status_code == 400, r.text
    assert field in r.json()["error"]["message"]


@pytest.mark.parametrize("kind", ["vllm-completions", "vllm-generate", "sglang"])
async def test_http_engines_pass_penalties_and_bias_through(url: str, engine: TorchEngine, kind: str) -> None:
    """The vLLM / SGLang HTTP engines send the penalties and `logit_bias` on (here to this
    server's vLLM- and SGLang-shaped routes): the output equals the engine's own."""
    from legato.engine_adapter.base import GenerateRequest, SamplingParams, collect
    from legato.engine_adapter.http import SGLangEngine, VLLMEngine

    sp = SamplingParams(
        max_tokens=16, ignore_eos=True, frequency_penalty=1.5, presence_penalty=0.5, logit_bias=((101, 3.0),)
    )
    prompt = tuple(engine.tokenizer.encode("Hello, w"))
    expected = await collect(engine, GenerateRequest(f"local-{kind}", prompt, sp))
    plain = await collect(engine, GenerateRequest(f"plain-{kind}", prompt, SamplingParams(max_tokens=16)))
    assert expected.token_ids != plain.token_ids
    if kind == "sglang":
        http: VLLMEngine | SGLangEngine = SGLangEngine(url, engine.tokenizer, timeout=60)
    else:
        http = VLLMEngine(url, MODEL, engine.tokenizer, endpoint=kind.split("-")[1], timeout=60)  # type: ignore[arg-type]
    try:
        got = await collect(http, GenerateRequest(f"http-{kind}", prompt, sp))
    finally:
        await http.close()
    assert got.token_ids == expected.token_ids


def test_vllm_token_api_lists_alternatives(url: str) -> None:
    body = {"token_ids": [72, 105], "sampling_params": {"max_tokens": 3, "temperature": 0, "logprobs": 2}}
    r = httpx.post(f"{url}/inference/v1/generate", json=body, timeout=30)
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 3 and all(len(c["top_logprobs"]) == 2 for c in content)
    assert all(c["top_logprobs"][0]["token"].startswith("token_id:") for c in content)


@pytest.mark.parametrize("path", ["/generate", "/inference/v1/generate"])
def test_native_routes_refuse_n(url: str, path: str) -> None:
    key = "input_ids" if path == "/generate" else "token_ids"
    r = httpx.post(f"{url}{path}", json={key: [72, 105], "sampling_params": {"n": 2}}, timeout=30)
    assert r.status_code == 400 and "sampling_params.n" in r.json()["error"]["message"]


@pytest.mark.parametrize("endpoint", ["completions", "generate"])
async def test_vllm_engine_passes_n_through(url: str, engine: TorchEngine, endpoint: str) -> None:
    """`VLLMEngine` sends `n` on /v1/completions (whatever its route for n = 1) and streams the
    choices back by index: the samples equal the engine's own forked samples."""
    from legato.engine_adapter.base import GenerateRequest, SamplingParams, assemble_samples
    from legato.engine_adapter.http import VLLMEngine

    sp = SamplingParams(max_tokens=10, temperature=1.0, seed=5, ignore_eos=True, n=3)
    prompt = tuple(engine.tokenizer.encode("Three samples over HTTP"))
    local_req = GenerateRequest(f"local-n-{endpoint}", prompt, sp)
    expected = assemble_samples(local_req, [c async for c in engine.generate(local_req)])
    http = VLLMEngine(url, MODEL, engine.tokenizer, endpoint=endpoint, timeout=60)  # type: ignore[arg-type]
    try:
        remote_req = GenerateRequest(f"http-n-{endpoint}", prompt, sp)
        chunks = [c async for c in http.generate(remote_req)]
    finally:
        await http.close()
    assert [c.finished for c in chunks].count(True) == 1 and chunks[-1].finished
    got = assemble_samples(remote_req, chunks)
    assert [r.token_ids for r in got] == [r.token_ids for r in expected]
    assert [r.finish_reason for r in got] == ["length"] * 3


@pytest.mark.parametrize("endpoint", ["completions", "generate"])
async def test_vllm_engine_passes_top_logprobs_through(url: str, engine: TorchEngine, endpoint: str) -> None:
    from legato.engine_adapter.base import GenerateRequest, SamplingParams, collect
    from legato.engine_adapter.http import VLLMEngine

    sp = SamplingParams(max_tokens=6, ignore_eos=True, logprobs=True, top_logprobs=4)
    prompt = tuple(engine.tokenizer.encode("Alternatives over HTTP"))
    expected = await collect(engine, GenerateRequest(f"local-top-{endpoint}", prompt, sp))
    http = VLLMEngine(url, MODEL, engine.tokenizer, endpoint=endpoint, timeout=60)  # type: ignore[arg-type]
    try:
        got = await collect(http, GenerateRequest(f"http-top-{endpoint}", prompt, sp))
    finally:
        await http.close()
    assert got.token_ids == expected.token_ids
    assert got.top_logprobs is not None and expected.top_logprobs is not None
    assert [[t for t, _ in row] for row in got.top_logprobs] == [
        [t for t, _ in row] for row in expected.top_logprobs
    ]
    for mine, theirs in zip(got.top_logprobs, expected.top_logprobs, strict=True):
        assert [v for _, v in mine] == pytest.approx([v for _, v in theirs], abs=1e-4)


def test_return_tokens_as_token_ids(client: Any) -> None:
    out = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=2,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body={"return_tokens_as_token_ids": True},
    )
    entry = out.choices[0].logprobs.content[0]
    assert entry.token.startswith("token_id:") and all(
        a.token.startswith("token_id:") for a in entry.top_logprobs
    )
