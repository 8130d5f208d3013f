"""The engine server's HTTP contract (OpenAI, SGLang and vLLM shapes) over a real socket,
against the deterministic fake engine, so every expected token is known."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.engine_http.fake_engine import FAIL_TOKEN, FakeEngine, FakeTokenizer, expected_greedy

MODEL = FakeEngine.model_name


def _events(response: httpx.Response) -> list[dict[str, object] | str]:
    out: list[dict[str, object] | str] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_health_models_and_openapi(fake_url: str) -> None:
    assert httpx.get(f"{fake_url}/health").json() == {"status": "ok", "model": MODEL}
    models = httpx.get(f"{fake_url}/v1/models").json()
    assert models["data"][0]["id"] == MODEL
    assert models["data"][0]["max_model_len"] == FakeEngine.max_model_len
    paths = httpx.get(f"{fake_url}/openapi.json").json()["paths"]
    for path in (
        "/v1/completions",
        "/v1/chat/completions",
        "/generate",
        "/inference/v1/generate",
        "/tokenize",
        "/detokenize",
    ):
        assert path in paths
        op = next(iter(paths[path].values()))
        if path not in ("/tokenize", "/detokenize"):
            assert {"400", "404"} <= set(op["responses"]), f"{path} must document its errors"


def test_completion_with_token_prompt_and_cached_tokens(fake_url: str) -> None:
    prompt = list(range(40, 80))  # 40 tokens: two full blocks can be cached
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": 0,
        "return_token_ids": True,
    }
    first = httpx.post(f"{fake_url}/v1/completions", json=body).json()
    choice = first["choices"][0]
    assert choice["token_ids"] == expected_greedy(prompt, 6)
    assert choice["text"] == "".join(chr(t) for t in choice["token_ids"])
    assert choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["token_logprobs"]) == 6
    assert first["usage"]["prompt_tokens"] == 40
    assert first["usage"]["completion_tokens"] == 6
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    again = httpx.post(f"{fake_url}/v1/completions", json=body).json()
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 32
    assert again["choices"][0]["token_ids"] == choice["token_ids"]


def test_completion_stream_has_openai_chunks_usage_and_done(fake_url: str) -> None:
    body = {
        "model": MODEL,
        "prompt": "hello",
        "max_tokens": 5,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{fake_url}/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])  # type: ignore[index]
    assert text == "".join(chr(t) for t in expected_greedy(FakeTokenizer().encode("hello"), 5))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5  # type: ignore[index]


def test_chat_completion_non_streaming_with_stop(fake_url: str) -> None:
    messages = [{"role": "user", "content": "hi"}]
    prompt = FakeTokenizer().apply_chat_template(messages)
    full = "".join(chr(t) for t in expected_greedy(prompt, 20))
    stop = next(c for i, c in enumerate(full) if i >= 3 and c not in full[:i])  # first new letter
    body = {"model": MODEL, "messages": messages, "max_tokens": 20, "temperature": 0, "stop": [stop]}
    data = httpx.post(f"{fake_url}/v1/chat/completions", json=body).json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": full[: full.index(stop)]}
    assert data["choices"][0]["finish_reason"] == "stop"


def test_sglang_generate_shape(fake_url: str) -> None:
    ids = [5, 6, 7, 8]
    body = {
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": 4, "temperature": 0},
        "return_logprob": True,
        "rid": "sg-1",
    }
    data = httpx.post(f"{fake_url}/generate", json=body).json()
    assert data["output_ids"] == expected_greedy(ids, 4)
    meta = data["meta_info"]
    assert meta["id"] == "sg-1"
    assert (meta["prompt_tokens"], meta["completion_tokens"], meta["cached_tokens"]) == (4, 4, 0)
    assert meta["finish_reason"] == {"type": "length", "length": 4, "matched": None, "message": None}
    assert [entry[1] for entry in meta["output_token_logprobs"]] == data["output_ids"]
    assert all(entry[0] < 0 and entry[2] is None for entry in meta["output_token_logprobs"])


def test_sglang_generate_stream_is_cumulative(fake_url: str) -> None:
    body = {"text": "abc", "sampling_params": {"max_new_tokens": 3, "temperature": 0}, "stream": True}
    with httpx.stream("POST", f"{fake_url}/generate", json=body) as response:
        events = _events(response)
    assert events[-1] == "[DONE]"
    dicts = [e for e in events if isinstance(e, dict)]
    assert [len(e["output_ids"]) for e in dicts] == [1, 2, 3]  # type: ignore[arg-type]
    assert dicts[-1]["meta_info"]["finish_reason"]["type"] == "length"  # type: ignore[index]
    assert dicts[0]["meta_info"]["finish_reason"] is None  # type: ignore[index]


def test_vllm_token_generate_shape(fake_url: str) -> None:
    body = {
        "model": MODEL,
        "token_ids": [1, 2, 3],
        "sampling_params": {"max_tokens": 3, "temperature": 0, "logprobs": 0},
        "request_id": "v-1",
    }
    data = httpx.post(f"{fake_url}/inference/v1/generate", json=body).json()
    choice = data["choices"][0]
    assert data["request_id"] == "v-1"
    assert choice["token_ids"] == expected_greedy([1, 2, 3], 3)
    assert [c["token"] for c in choice["logprobs"]["content"]] == [
        f"token_id:{t}" for t in choice["token_ids"]
    ]
    assert data["usage"]["prompt_tokens"] == 3


def test_tokenize_detokenize_round_trip(fake_url: str) -> None:
    tokens = httpx.post(f"{fake_url}/tokenize", json={"prompt": "héllo"}).json()
    assert tokens["tokens"] == list("héllo".encode()) and tokens["count"] == 6
    text = httpx.post(f"{fake_url}/detokenize", json={"tokens": tokens["tokens"]}).json()
    assert text == {"prompt": "héllo"}
    chat = httpx.post(f"{fake_url}/tokenize", json={"messages": [{"role": "user", "content": "x"}]}).json()
    assert chat["tokens"] == FakeTokenizer().apply_chat_template([{"role": "user", "content": "x"}])


def test_passes_priority_cache_salt_and_session(fake_url: str, fake_engine: FakeEngine) -> None:
    httpx.post(
        f"{fake_url}/v1/completions",
        json={
            "model": MODEL,
            "prompt": "p",
            "max_tokens": 1,
            "priority": -3,
            "cache_salt": "tenant-a",
            "request_id": "pp-1",
        },
    )
    httpx.post(
        f"{fake_url}/generate",
        json={
            "input_ids": [1],
            "rid": "pp-2",
            "priority": 2,
            "session_id": "run-9",
            "sampling_params": {"max_new_tokens": 1},
        },
    )
    seen = {r.request_id: r for r in fake_engine.requests}
    assert (seen["pp-1"].priority, seen["pp-1"].cache_salt) == (-3, "tenant-a")
    # SGLang's priority runs higher values first; the engine's runs lower values first.
    assert (seen["pp-2"].priority, seen["pp-2"].session_id) == (-2, "run-9")


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "'fake-model'"),
        (
            "/v1/completions",
            {"model": MODEL, "prompt": "x", "max_tokens": 0},
            400,
            "max_tokens: Input should be greater than or equal to 1",
        ),
        ("/v1/completions", {"model": MODEL, "prompt": "x" * 500, "max_tokens": 20}, 400, "context of 512"),
        ("/v1/completions", {"model": MODEL, "prompt": "x" * 450, "max_tokens": 10}, 400, "exceeds the 400"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 2}, 400, "draws one sample per request"),
        (
            "/v1/completions",
            {"model": MODEL, "prompt": "x", "n": 0},
            400,
            "n: Input should be greater than or equal to 1",
        ),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "logit_bias": {"a": 1}}, 400, "logit_bias"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "frobnicate": 1}, 400, "frobnicate"),
        ("/v1/completions", {"model": MODEL, "prompt": [1, 9999]}, 400, "outside the vocabulary"),
        ("/v1/completions", {"model": MODEL, "prompt": ""}, 400, "prompt: String should have at least 1"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": -1}, 400, "temperature"),
        ("/v1/chat/completions", {"model": MODEL}, 400, "messages"),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
            400,
            "role",
        ),
        ("/generate", {"text": "a", "input_ids": [1]}, 400, "exactly one of"),
        ("/generate", {"input_ids": [1], "sampling_params": {"max_new_tokens": 0}}, 400, "max_new_tokens"),
        ("/inference/v1/generate", {"token_ids": [1], "sampling_params": {"top_p": 0}}, 400, "top_p"),
        ("/abort_request", {"abort_all": True}, 400, "abort_all"),
    ],
)
def test_bad_requests_get_4xx_naming_the_fix(
    fake_url: str, path: str, body: dict[str, object], status: int, needle: str
) -> None:
    response = httpx.post(f"{fake_url}{path}", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert needle in error["message"], error
    assert error["code"] == status


def test_malformed_json_is_400(fake_url: str) -> None:
    response = httpx.post(
        f"{fake_url}/v1/completions",
        content=b'{"model": "fake-model", "prompt": ',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_stream_disconnect_aborts_engine_request(slow_url: str, slow_engine: FakeEngine) -> None:
    body = {"model": MODEL, "prompt": "abc", "max_tokens": 200, "stream": True, "request_id": "gone-1"}
    with httpx.stream("POST", f"{slow_url}/v1/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # one chunk received, then hang up
    deadline = time.monotonic() + 5
    while "gone-1" not in slow_engine.aborted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "gone-1" in slow_engine.aborted


def test_non_streaming_disconnect_aborts_engine_request(slow_url: str, slow_engine: FakeEngine) -> None:
    body = {"model": MODEL, "prompt": "abc", "max_tokens": 200, "request_id": "gone-2"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{slow_url}/v1/completions", json=body, timeout=0.3)
    deadline = time.monotonic() + 5
    while "gone-2" not in slow_engine.aborted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "gone-2" in slow_engine.aborted


def test_metrics_and_server_info_report_capacity(fake_url: str) -> None:
    text = httpx.get(f"{fake_url}/metrics").text
    assert 'vllm:cache_config_info{block_size="16",num_gpu_blocks="100"} 1.0' in text
    assert "vllm:kv_cache_usage_perc" in text
    info = httpx.get(f"{fake_url}/get_server_info").json()
    assert (info["page_size"], info["max_total_num_tokens"]) == (16, 1600)


def test_engine_failure_mid_request_is_503_or_an_error_event(fake_url: str) -> None:
    body = {"model": MODEL, "prompt": [FAIL_TOKEN, 1, 2], "max_tokens": 8}
    response = httpx.post(f"{fake_url}/v1/completions", json=body)
    assert response.status_code == 503
    assert "failed mid-request" in response.json()["error"]["message"]
    with httpx.stream("POST", f"{fake_url}/v1/completions", json={**body, "stream": True}) as stream:
        events = _events(stream)
    assert events[-1] == "[DONE]"
    assert "failed mid-request" in events[-2]["error"]["message"]  # type: ignore[index]


def test_chat_without_max_tokens_fills_the_room_left(fake_url: str) -> None:
    messages = [{"role": "user", "content": "go"}]
    data = httpx.post(f"{fake_url}/v1/chat/completions", json={"model": MODEL, "messages": messages}).json()
    prompt_len = len(FakeTokenizer().apply_chat_template(messages))
    # The fake's context (512) is smaller than its KV cache (1,600 tokens): the context bounds it.
    assert data["usage"]["completion_tokens"] == FakeEngine.max_model_len - prompt_len
    assert data["choices"][0]["finish_reason"] == "length"
