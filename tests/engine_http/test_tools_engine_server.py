"""Tool calling on `legato engine serve`'s app (the same plan, grammar and response builder as the
proxy): the official client against the torch engine, a model whose template has no tool format,
and the two call formats (hermes, Llama-3.1 JSON) rendered and parsed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest

from legato.engine_adapter.chat.formats import HERMES, LLAMA3_JSON, format_for_template, parse
from legato.engine_adapter.server import create_engine_app
from legato.engine_adapter.torch import load_engine
from tests.engine_http.serving import serve_in_thread
from tests.tiny_model import tiny_model_config

PARAMS = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
TOOLS: list[Any] = [{"type": "function", "function": {"name": "search", "parameters": PARAMS}}]

# A Llama-3.1-style template (abridged): tools as JSON in the user turn, calls as bare JSON.
LLAMA_TEMPLATE = (
    "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}"
    '{"name": "{{ c.function.name }}", "parameters": {{ c.function.arguments | tojson }}}'
    "{% endfor %}{% else %}{{ m.content }}{% endif %}<|eot_id|>{% endfor %}"
    "{% if tools %}{% for t in tools %}{{ t | tojson }}{% endfor %}<|python_tag|>{% endif %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@pytest.fixture(scope="module")
def torch_url() -> Iterator[str]:
    engine = load_engine(model_config=tiny_model_config(4096), num_blocks=1024, seed=0)
    with serve_in_thread(create_engine_app(engine, on_shutdown=engine.close)) as url:
        yield url


def test_engine_server_forced_call_with_the_openai_client(torch_url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{torch_url}/v1", api_key="EMPTY", max_retries=0)
    messages: list[Any] = [
        {"role": "user", "content": "find cats"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "search", "arguments": '{"q": "cats"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "3 cats"},
    ]
    reply = client.chat.completions.create(
        model="legato-default",
        messages=messages,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=150,
        temperature=1.0,
        seed=1,
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    for call in reply.choices[0].message.tool_calls or ():
        jsonschema.validate(json.loads(call.function.arguments), PARAMS)
    # /tokenize renders the same prompt (tools, the call, its result) as the chat completion.
    full = httpx.post(f"{torch_url}/tokenize", json={"messages": messages, "tools": TOOLS}, timeout=30).json()
    assert reply.usage is not None and reply.usage.prompt_tokens == full["count"]
    # The history's call and result are in the prompt: it is longer than without them.
    short = httpx.post(
        f"{torch_url}/tokenize", json={"messages": [{"role": "user", "content": "find cats"}]}, timeout=30
    ).json()["count"]
    assert reply.usage is not None and reply.usage.prompt_tokens > short + len('{"q": "cats"}3 cats')


def test_tools_on_a_model_without_a_tool_format_is_a_400(fake_url: str) -> None:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "tools": TOOLS}
    r = httpx.post(f"{fake_url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400
    assert "no tool-calling format" in r.json()["error"]["message"]


def test_formats_are_chosen_by_the_template_and_parsed() -> None:
    assert format_for_template(None) == HERMES
    assert format_for_template("{{ '<tool_call>' }}") == HERMES
    assert format_for_template(LLAMA_TEMPLATE) == LLAMA3_JSON
    assert format_for_template("{% for m in messages %}{{ m.content }}{% endfor %}") is None
    names = frozenset({"search"})
    out = parse(HERMES, 'ok\n<tool_call>\n{"name": "search", "arguments": {"q": "x"}}\n</tool_call>', names)
    assert out.content == "ok" and [(c.name, c.arguments) for c in out.calls] == [("search", '{"q": "x"}')]
    out = parse(LLAMA3_JSON, '<|python_tag|>{"name": "search", "parameters": {"q": "y"}}', names)
    assert out.content is None and [(c.name, c.arguments) for c in out.calls] == [("search", '{"q": "y"}')]
    # An unknown tool or broken JSON: nothing is dropped, the text stays content.
    for bad in ('<tool_call>{"name": "nope", "arguments": {}}</tool_call>', "<tool_call>{oops</tool_call>"):
        assert parse(HERMES, bad, names).calls == () and parse(HERMES, bad, names).content == bad


def test_a_hugging_face_template_gets_tools_and_dict_arguments() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    from legato.engine_adapter.torch import HFTokenizer

    raw = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    seen: list[str] = []
    tok = HFTokenizer(raw, 0, LLAMA_TEMPLATE)
    original = raw.encode

    def spy(text: str, **kw: Any) -> Any:
        seen.append(text)
        return original(text, **kw)

    raw.encode = spy  # type: ignore[method-assign]
    messages = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "search", "arguments": {"q": "z"}}}],
        },
    ]
    tok.apply_chat_template(messages, tools=TOOLS)
    assert '{"name": "search", "parameters": {"q": "z"}}' in seen[-1]
    assert '"name": "search"' in seen[-1].split("<|eot_id|>")[-1]  # the tools were rendered


@pytest.mark.parametrize("kind", ["vllm-generate", "vllm-completions", "sglang"])
async def test_http_engines_pass_the_grammar_through(torch_url: str, kind: str) -> None:
    """The vLLM and SGLang engines send the constraint in their servers' fields (vLLM's
    `structured_outputs`, SGLang's `json_schema`), which `legato engine serve` honours too."""
    from legato.engine_adapter.base import GenerateRequest, SamplingParams, collect
    from legato.engine_adapter.chat.grammar import json_schema_grammar
    from legato.engine_adapter.http.sglang import SGLangEngine
    from legato.engine_adapter.http.vllm import VLLMEngine
    from legato.engine_adapter.torch import ByteTokenizer

    tok = ByteTokenizer()
    engine: Any = (
        SGLangEngine(torch_url, tok)
        if kind == "sglang"
        else VLLMEngine(torch_url, "legato-default", tok, endpoint=kind.split("-")[1])  # type: ignore[arg-type]
    )
    sampling = SamplingParams(max_tokens=60, temperature=1.0, seed=4, grammar=json_schema_grammar(PARAMS))
    try:
        result = await collect(engine, GenerateRequest(f"g-{kind}", tuple(tok.encode("hello")), sampling))
    finally:
        await engine.close()
    assert result.finish_reason == "stop"
    jsonschema.validate(json.loads(result.text), PARAMS)


def test_a_grammar_that_cannot_be_compiled_is_a_400(torch_url: str) -> None:
    bad = {"type": "object", "properties": {"q": {"type": "string", "pattern": "(("}}}
    r = httpx.post(
        f"{torch_url}/inference/v1/generate",
        json={
            "token_ids": [1, 2, 3],
            "sampling_params": {"max_tokens": 4, "structured_outputs": {"json": bad}},
        },
        timeout=30,
    )
    assert r.status_code == 400
    assert "sampling_params.structured_outputs" in r.json()["error"]["message"]
    assert "unclosed group" in r.json()["error"]["message"]


RECORD = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "integer"}}},
    "required": ["name", "tags"],
}


@pytest.mark.parametrize("stream", [False, True])
def test_n_samples_with_a_json_schema_are_all_valid(torch_url: str, stream: bool) -> None:
    """n=3 with `response_format` json_schema: each forked sample keeps its own grammar, so all
    three choices are valid JSON of the schema (streamed: reassembled per `index`)."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{torch_url}/v1", api_key="EMPTY", max_retries=0)
    kw: dict[str, Any] = {
        "model": "legato-default",
        "messages": [{"role": "user", "content": "a record"}],
        "n": 3,
        "max_tokens": 80,
        "temperature": 1.0,
        "seed": 7,
        "response_format": {"type": "json_schema", "json_schema": {"name": "record", "schema": RECORD}},
    }
    texts = ["", "", ""]
    finishes: list[str | None] = [None, None, None]
    if stream:
        for chunk in client.chat.completions.create(stream=True, **kw):
            for c in chunk.choices:
                texts[c.index] += c.delta.content or ""
                finishes[c.index] = c.finish_reason or finishes[c.index]
    else:
        reply = client.chat.completions.create(**kw)
        assert sorted(c.index for c in reply.choices) == [0, 1, 2]
        for c in reply.choices:
            texts[c.index], finishes[c.index] = c.message.content or "", c.finish_reason
    assert finishes == ["stop"] * 3, texts
    for text in texts:
        jsonschema.validate(json.loads(text), RECORD)


def test_n_samples_each_get_their_tool_calls(torch_url: str) -> None:
    body = {
        "model": "legato-default",
        "messages": [{"role": "user", "content": "find cats"}],
        "tools": TOOLS,
        "tool_choice": "required",
        "n": 2,
        "max_tokens": 150,
        "temperature": 1.0,
        "seed": 2,
    }
    r = httpx.post(f"{torch_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    for c in choices:
        assert c["finish_reason"] == "tool_calls"
        for call in c["message"]["tool_calls"]:
            jsonschema.validate(json.loads(call["function"]["arguments"]), PARAMS)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "s", "parameters": PARAMS, "x_hint": 1}}]},
            "x_hint",
        ),
        ({"tools": [{**TOOLS[0], "cache_control": {}}]}, "cache_control"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "search", "v": 2}}}, "v"),
        ({"response_format": {"type": "json_object", "strict_mode": True}}, "strict_mode"),
    ],
)
def test_undeclared_fields_of_the_tool_models_are_a_400(
    torch_url: str, patch: dict[str, Any], field: str
) -> None:
    body = {
        "model": "legato-default",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 4,
        **patch,
    }
    r = httpx.post(f"{torch_url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert field in r.json()["error"]["message"]
    assert "does not support this field" in r.json()["error"]["message"]
