"""Grammars for structured output: `response_format` (json_object, json_schema) and forced tool
calls (`tool_choice` "required" or a named function), as `GrammarSpec`s the engines enforce.

The grammar engine is llguidance (Rust, no Python dependencies, a vLLM guided-decoding backend);
it was measured against xgrammar on CPU before being chosen (mask time per token, same JSON
Schema, random walks of the matcher, byte vocabulary / synthetic 32k BPE vocabulary):
llguidance 26 / 65 us, xgrammar 17 / 156 us, with no per-schema compile step (llguidance builds
its lexer lazily; xgrammar compiled in 3 / 105 ms). Its wheel is 3 MB with no dependencies;
xgrammar's requires `triton` (a 286 MB wheel, 1 GB installed), `transformers` and
`apache-tvm-ffi`. llguidance also takes a Lark grammar with embedded JSON Schemas (`%json`),
which expresses "one of these tools, wrapped in this template's call syntax" directly.

Every JSON Schema is compiled with compact separators and no free whitespace, and objects that
list `properties` but say nothing about `additionalProperties` get `false` (what OpenAI's strict
mode requires): the output is still valid against the user's schema, and a model cannot spin in
whitespace or invent keys forever.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

import llguidance

from legato.engine_adapter.base import GrammarSpec
from legato.engine_adapter.chat.formats import HERMES

# Separators match json.dumps' defaults, so a call the model writes looks like the calls the
# template renders back into the next prompt.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(ValueError):
    """A schema or grammar that cannot be compiled; the message names the problem."""


def _closed(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` wherever properties are listed and nothing is
    said about other keys (a deep copy; the caller's schema is untouched)."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def prepared_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    out = _closed(copy.deepcopy(dict(schema)))
    assert isinstance(out, dict)
    own = out.get("x-guidance")
    out["x-guidance"] = {**_JSON_OPTIONS, **(own if isinstance(own, dict) else {})}
    return out


def check_schema(schema: Mapping[str, Any], what: str) -> None:
    """Raise GrammarError naming `what` when the JSON Schema cannot be compiled."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(prepared_schema(schema)))
    except (ValueError, TypeError) as exc:
        raise GrammarError(f"{what} is not a valid JSON Schema: {exc}") from exc
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise GrammarError(f"{what} cannot be compiled: {error.strip()}")


def check_grammar(spec: GrammarSpec) -> None:
    """Raise GrammarError when `spec` cannot be compiled."""
    error = llguidance.LLMatcher.validate_grammar(ll_grammar(spec))
    if error:
        raise GrammarError(f"the output grammar cannot be compiled: {error.strip()}")


def ll_grammar(spec: GrammarSpec) -> str:
    """The llguidance grammar of a spec."""
    if spec.kind == "json_schema":
        return str(llguidance.LLMatcher.grammar_from_json_schema(spec.text))
    return str(llguidance.LLMatcher.grammar_from_lark(spec.text))


def grammar_of(json_schema: Mapping[str, Any] | str | None, lark: str | None) -> GrammarSpec | None:
    """The grammar of the engine APIs' constraint fields (a JSON Schema, as an object or its
    text, or a Lark grammar); raises GrammarError when it cannot be compiled or both are set."""
    if json_schema is not None and lark is not None:
        raise GrammarError("send a JSON Schema or a grammar, not both")
    if lark is not None:
        spec = GrammarSpec("lark", lark)
        check_grammar(spec)
        return spec
    if json_schema is None:
        return None
    if isinstance(json_schema, str):
        try:
            json_schema = json.loads(json_schema)
        except ValueError as exc:
            raise GrammarError(f"the JSON Schema is not valid JSON: {exc}") from exc
    if not isinstance(json_schema, dict):
        raise GrammarError("the JSON Schema must be a JSON object")
    check_schema(json_schema, "the JSON Schema")
    return json_schema_grammar(json_schema)


def json_schema_grammar(schema: Mapping[str, Any]) -> GrammarSpec:
    return GrammarSpec("json_schema", json.dumps(prepared_schema(schema), ensure_ascii=False))


def call_schema(name: str, parameters: Mapping[str, Any] | None, args_key: str) -> dict[str, Any]:
    """The schema of one call object of tool `name` (`{"name": name, args_key: {...}}`)."""
    params = dict(parameters) if parameters else {"type": "object", "properties": {}}
    return {
        "type": "object",
        "properties": {"name": {"const": name}, args_key: params},
        "required": ["name", args_key],
        "additionalProperties": False,
    }


def tool_call_grammar(
    fmt: str, tools: Sequence[tuple[str, Mapping[str, Any] | None]], parallel: bool
) -> GrammarSpec:
    """Output that is one (or, with `parallel`, one or more) schema-valid call of one of `tools`
    ((name, parameters schema) pairs), in the template's call syntax."""
    args_key = "arguments" if fmt == HERMES else "parameters"
    rules = []
    for i, (name, params) in enumerate(tools):
        schema = prepared_schema(call_schema(name, params, args_key))
        rules.append(f"f{i}: %json {json.dumps(schema, ensure_ascii=False)}")
    body = "body: " + " | ".join(f"f{i}" for i in range(len(tools)))
    if fmt == HERMES:
        call = 'call: "<tool_call>\\n" body "\\n</tool_call>"'
        start = 'start: call ("\\n" call)*' if parallel else "start: call"
    else:
        call = "call: body"
        start = 'start: call ("; " call)*' if parallel else "start: call"
    return GrammarSpec("lark", "\n".join([start, call, body, *rules]) + "\n")
