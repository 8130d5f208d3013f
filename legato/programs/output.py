"""Turning an LLM's text into the value a node writes: raw text, or JSON with a fallback.

Small models (and the built-in seeded model) often wrap JSON in prose or produce none at all, so
parsing looks for the first balanced `{...}` / `[...]` and, when that fails, the node's
`on_parse_error` decides: keep the raw text, write `parse_default`, or fail the step.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import JsonValue

from legato.programs.calls import StepError
from legato.programs.spec import LLMNodeSpec

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}


def extract_json(text: str) -> Any:
    """The first JSON object or array in `text`; raises ValueError when there is none."""
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                value, _end = decoder.raw_decode(text, i)
            except json.JSONDecodeError:
                continue
            return value
    raise ValueError("no JSON object or array found in the output")


def check_schema(value: Any, schema: dict[str, JsonValue]) -> None:
    """A deliberately small check: top-level `type` and `required` keys (not full JSON Schema)."""
    expected = schema.get("type")
    if isinstance(expected, str) and expected in _JSON_TYPES:
        ok = isinstance(value, _JSON_TYPES[expected]) and not (
            expected in ("number", "integer") and isinstance(value, bool)
        )
        if not ok:
            raise ValueError(f"expected a JSON {expected}, got {type(value).__name__}")
    required = schema.get("required")
    if isinstance(value, dict) and isinstance(required, list):
        missing = [k for k in required if isinstance(k, str) and k not in value]
        if missing:
            raise ValueError(f"missing required key(s) {', '.join(missing)}")


def parse_output(node: LLMNodeSpec, text: str) -> Any:
    if node.output_schema is None:
        return text
    try:
        value = extract_json(text)
        check_schema(value, node.output_schema)
        return value
    except ValueError as exc:
        if node.on_parse_error == "raw":
            return text
        if node.on_parse_error == "default":
            return node.parse_default
        raise StepError(
            f"node {node.name!r}: output is not valid JSON for its schema: {exc}", "parse"
        ) from exc
