"""Wire models of OpenAI's tool calling and structured output: `tools`, `tool_choice`,
`tool_calls` (in requests' assistant messages, in responses and as streamed deltas) and
`response_format`. Shapes follow OpenAI's chat completions API, so the official client,
LangChain and LangGraph send and read them unchanged; a field these shapes do not declare is a
400 naming it (`openai_fields` lists how every request field is honoured).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Wire(BaseModel):
    """Request-side shapes (also echoed in responses): undeclared fields are refused, as in every
    OpenAI request model (`openai_api.OpenAIRequest`; the server answers a 400 naming the field)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class _Delta(BaseModel):
    """Response-only shapes (streamed deltas): they keep unknown fields, as `openai_api`'s
    responses do."""

    model_config = ConfigDict(extra="allow")


class FunctionDefinition(_Wire):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="JSON Schema of the arguments object (omitted: no arguments)."
    )
    strict: bool | None = None


class ToolDefinition(_Wire):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Wire):
    name: str


class NamedToolChoice(_Wire):
    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(_Wire):
    name: str
    arguments: str = Field(description="The arguments as a JSON text.")


class ToolCall(_Wire):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionCallDelta(_Delta):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Delta):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` extra (its `json` and `grammar` forms; a Lark grammar is read
    by llguidance, as vLLM's `guidance` backend reads it). Other forms are refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    grammar: str | None = None


class JsonSchemaFormat(_Wire):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None
