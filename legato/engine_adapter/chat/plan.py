"""A chat request's plan: the template inputs (messages, tools), the output grammar, and how the
output is read back (tool format and known tool names). Shared by `legato engine serve` and
Legato's proxy through `EngineService.chat_prompt`.

Rules: `tool_choice` "required" or a named function constrain the output to a schema-valid call
(one call unless `parallel_tool_calls`); "auto" lets the model choose and parses what it wrote
("none" renders the tools but parses nothing). `response_format` applies when no call is forced.
Bad input raises `PlanError` with a message that says what to fix (the servers answer 400).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from legato.engine_adapter.base import GrammarSpec
from legato.engine_adapter.chat.formats import arguments_dict, format_for_template
from legato.engine_adapter.chat.grammar import (
    GrammarError,
    check_schema,
    json_schema_grammar,
    tool_call_grammar,
)
from legato.engine_adapter.openai_api import ChatCompletionRequest, ChatMessage
from legato.engine_adapter.openai_tools import NamedToolChoice


class PlanError(ValueError):
    """A chat request that cannot be served as sent; `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class ChatPlan:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None  # OpenAI tool definitions for the template
    grammar: GrammarSpec | None
    tool_format: str | None  # parse tool calls from the output in this format (None: don't)
    tool_names: frozenset[str]
    parallel: bool


def template_message(message: ChatMessage, index: int) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.text()}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        calls = []
        for j, call in enumerate(message.tool_calls):
            try:
                args = arguments_dict(call.function.arguments)
            except ValueError as exc:
                raise PlanError(
                    f"messages[{index}].tool_calls[{j}].function.arguments must be a JSON object text: {exc}",
                    "messages",
                ) from exc
            calls.append(
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": args},
                }
            )
        out["tool_calls"] = calls
    return out


_MISSING = object()


def tool_format_of(tokenizer: Any) -> str | None:
    """The tool format of the tokenizer's chat template: a Hugging Face template's (`chat_template`
    text), hermes for the built-in ChatML rendering (`chat_template` None), and none for a
    tokenizer that does not say how it renders (no `chat_template` attribute)."""
    template = getattr(tokenizer, "chat_template", _MISSING)
    if template is _MISSING:
        return None
    return format_for_template(template if isinstance(template, str) else None)


def plan_chat(body: ChatCompletionRequest, tokenizer: Any) -> ChatPlan:
    messages = [template_message(m, i) for i, m in enumerate(body.messages)]
    choice = body.tool_choice
    tools = body.tools or []
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise PlanError(f"tool names must be unique, got {names}", "tools")
    for t in tools:
        params = t.function.parameters
        if params is not None:
            if params.get("type", "object") != "object":
                raise PlanError(
                    f"tools[{names.index(t.function.name)}] ({t.function.name}): parameters must be a JSON "
                    f"Schema of type 'object', got type {params.get('type')!r}",
                    "tools",
                )
            try:
                check_schema(params, f"the parameters of tool {t.function.name!r}")
            except GrammarError as exc:
                raise PlanError(str(exc), "tools") from exc
    if choice is not None and not tools and choice != "none":
        raise PlanError("tool_choice needs tools: send `tools` or drop `tool_choice`", "tool_choice")
    fmt = None
    if tools:
        fmt = tool_format_of(tokenizer)
        if fmt is None:
            raise PlanError(
                "this model's chat template has no tool-calling format (it neither writes <tool_call> "
                "blocks nor Llama-3.1 JSON calls); send the request without `tools`",
                "tools",
            )
    forced: list[tuple[str, Mapping[str, Any] | None]] = []
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise PlanError(
                f"tool_choice names {choice.function.name!r}, which is not among the tools {names}",
                "tool_choice",
            )
        forced = [
            (t.function.name, t.function.parameters) for t in tools if t.function.name == choice.function.name
        ]
    elif choice == "required":
        forced = [(t.function.name, t.function.parameters) for t in tools]
    grammar = None
    if forced:
        assert fmt is not None
        parallel = body.parallel_tool_calls and not isinstance(choice, NamedToolChoice)
        grammar = tool_call_grammar(fmt, forced, parallel)
    else:
        grammar = response_grammar(body)
    return ChatPlan(
        messages=messages,
        tools=[t.model_dump(exclude_none=True) for t in tools] or None,
        grammar=grammar,
        tool_format=fmt if tools and choice != "none" else None,
        tool_names=frozenset(names),
        parallel=body.parallel_tool_calls,
    )


def response_grammar(body: ChatCompletionRequest) -> GrammarSpec | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json_schema_grammar({"type": "object"})
    if fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise PlanError(
                "response_format of type 'json_schema' needs json_schema.schema (a JSON Schema)",
                "response_format",
            )
        try:
            check_schema(fmt.json_schema.schema_, "response_format.json_schema.schema")
        except GrammarError as exc:
            raise PlanError(str(exc), "response_format") from exc
        return json_schema_grammar(fmt.json_schema.schema_)
    raise PlanError(
        f"response_format type {fmt.type!r} is not supported; use 'text', 'json_object' or 'json_schema'",
        "response_format",
    )
