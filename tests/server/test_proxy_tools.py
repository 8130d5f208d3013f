"""Tool calling and structured output through `legato serve`'s proxy (the whole REST app on a real
socket, the torch engine's seeded model), driven by the official `openai` client and by a real
LangGraph ReAct agent (`ChatOpenAI.bind_tools`, `ToolNode`, `tools_condition`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
import pytest

from legato.engine_adapter.torch import load_engine
from tests.server.proxy_harness import Served, legato_server
from tests.tiny_model import tiny_model_config

MODEL = "legato-default"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Forecast", "parameters": WEATHER},
    }
]
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "scores": {"type": "array", "items": {"type": "integer"}}},
    "required": ["name", "scores"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    engine = load_engine(
        model_config=tiny_model_config(4096), num_blocks=2048, max_num_batched_tokens=1024, seed=0
    )
    with legato_server(tmp_path_factory.mktemp("tools"), engine) as s:
        yield s


def _client(served: Served) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{served.url}/v1", api_key=served.keys["acme"], timeout=120, max_retries=0)


def test_streamed_tool_call_deltas_reassemble_to_the_non_streamed_call(served: Served) -> None:
    client = _client(served)
    args: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Weather in Paris for 3 days?"}],
        "tools": TOOLS,
        "tool_choice": "required",
        "max_tokens": 200,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**args)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)

    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(**args, stream=True):
        for delta in chunk.choices[0].delta.tool_calls or ():
            slot = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            slot["id"] += delta.id or ""
            slot["name"] += delta.function.name or ""
            slot["arguments"] += delta.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (call.function.name, call.function.arguments)
    ]
    assert calls[0]["id"].startswith("call_")


def test_json_schema_outputs_validate_50_of_50(served: Served) -> None:
    client = _client(served)

    def one(seed: int) -> str:
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "A record, please."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "rec", "schema": SCHEMA, "strict": True},
            },
            max_tokens=48 + seed % 32,
            temperature=1.0,
            seed=seed,
        )
        assert reply.choices[0].finish_reason == "stop"
        return str(reply.choices[0].message.content)

    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(one, range(50)))
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)


def test_tool_choice_none_and_parallel_false(served: Served) -> None:
    client = _client(served)
    base: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": TOOLS,
        "max_tokens": 400,
        "temperature": 1.0,
        "seed": 5,
    }
    none = client.chat.completions.create(**base, tool_choice="none", max_completion_tokens=8)
    assert none.choices[0].message.tool_calls is None
    one = client.chat.completions.create(**base, tool_choice="required", parallel_tool_calls=False)
    assert len(one.choices[0].message.tool_calls) == 1
    named = client.chat.completions.create(
        **base, tool_choice={"type": "function", "function": {"name": "get_weather"}}
    )
    assert [c.function.name for c in named.choices[0].message.tool_calls] == ["get_weather"]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "wat"}}}]},
            "type 'object'",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"x": {"type": "foo"}}},
                        },
                    }
                ]
            },
            "Invalid type: foo",
        ),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "'nope'"),
        ({"response_format": {"type": "xml"}}, "response_format.type: Input should be 'text'"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "needs json_schema.schema",
        ),
        ({"tool_choice": "required"}, "tool_choice needs tools"),
    ],
)
def test_bad_tool_and_format_input_is_a_400_that_says_what_to_fix(
    served: Served, extra: dict[str, Any], words: str
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, **extra}
    r = httpx.post(f"{served.url}/v1/chat/completions", json=body, headers=served.headers("acme"), timeout=30)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"]


def test_langgraph_react_agent_calls_a_tool_and_sees_its_result(served: Served) -> None:
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    ran: list[dict[str, Any]] = []

    @tool
    def get_weather(city: str, days: int) -> str:
        """Forecast for a city."""
        ran.append({"city": city, "days": days})
        return f"sunny for {days} days"

    tools = [get_weather]
    llm = ChatOpenAI(
        model=MODEL,
        base_url=f"{served.url}/v1",
        api_key=served.keys["acme"],  # type: ignore[arg-type]
        max_tokens=200,
        temperature=1.0,
        seed=7,
        max_retries=0,
    )
    first = llm.bind_tools(tools, tool_choice="required")
    later = llm.bind_tools(tools)
    prompts: list[int] = []

    def agent(state: MessagesState) -> dict[str, Any]:
        model = later if any(isinstance(m, ToolMessage) for m in state["messages"]) else first
        reply = model.invoke(state["messages"])
        assert reply.usage_metadata is not None
        prompts.append(reply.usage_metadata["input_tokens"])
        return {"messages": [reply]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    app = graph.compile()
    out = app.invoke({"messages": [HumanMessage("Weather in Paris?")]}, {"recursion_limit": 12})

    messages = out["messages"]
    call_msg = messages[1]
    assert isinstance(call_msg, AIMessage) and call_msg.tool_calls
    for call in call_msg.tool_calls:
        jsonschema.validate(call["args"], get_weather.args_schema.model_json_schema())  # type: ignore[union-attr]
    assert ran and ran[0] == call_msg.tool_calls[0]["args"]
    assert isinstance(messages[2], ToolMessage) and "sunny" in str(messages[2].content)
    assert len(prompts) >= 2
    # The second prompt is the first plus the rendered call and its result (byte tokens).
    grown = prompts[1] - prompts[0]
    rendered = json.dumps(
        {"name": "get_weather", "arguments": call_msg.tool_calls[0]["args"]}, ensure_ascii=False
    )
    assert grown >= len(rendered.encode()) + len(str(messages[2].content).encode())


def test_with_structured_output_json_schema_and_function_calling(served: Served) -> None:
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    class Forecast(BaseModel):
        city: str
        days: int

    llm = ChatOpenAI(
        model=MODEL,
        base_url=f"{served.url}/v1",
        api_key=served.keys["acme"],  # type: ignore[arg-type]
        max_tokens=200,
        temperature=1.0,
        seed=3,
        max_retries=0,
    )
    for method in ("json_schema", "function_calling"):
        result = llm.with_structured_output(Forecast, method=method).invoke("Forecast for Oslo")
        assert isinstance(result, Forecast), method
