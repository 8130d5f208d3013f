"""Tool-call formats: how a chat template writes tools and calls, and how calls are read back.

Two formats cover the open models that serve agents:
- `hermes` (Hermes, Qwen2/2.5/3, and the seeded model's built-in template): tools listed in the
  system turn inside `<tools></tools>`, each call written as
  `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, tool results sent back as a user
  turn wrapped in `<tool_response></tool_response>`.
- `llama3_json` (Llama 3.1/3.2/3.3 JSON tool calling): a call is a bare JSON object
  `{"name": ..., "parameters": {...}}` (optionally after `<|python_tag|>`), several separated by `;`.

The format is chosen from the template text (`format_for_template`); a template that mentions
neither has no tool format, and a request with tools is then refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HERMES = "hermes"
LLAMA3_JSON = "llama3_json"

_HERMES_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_HERMES_INSTRUCTIONS = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
_HERMES_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
HERMES_OPEN = "<tool_call>"


@dataclass(frozen=True, slots=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text of the arguments object


@dataclass(frozen=True, slots=True)
class ParsedOutput:
    content: str | None
    calls: tuple[ParsedCall, ...]


def format_for_template(template: str | None) -> str | None:
    """The tool format a Hugging Face chat template speaks (None: it has none). `None` as the
    template means the built-in ChatML rendering, which speaks `hermes`."""
    if template is None:
        return HERMES
    if "<tool_call>" in template:
        return HERMES
    if "<|python_tag|>" in template or ("ipython" in template and "tools" in template):
        return LLAMA3_JSON
    return None


def arguments_dict(arguments: str) -> dict[str, Any]:
    """A call's JSON arguments as templates want them (a dict); raises ValueError."""
    value = json.loads(arguments) if arguments.strip() else {}
    if not isinstance(value, dict):
        raise ValueError("tool call arguments must be a JSON object")
    return value


# --- the built-in (ChatML + hermes) rendering -----------------------------------------------------


def hermes_turns(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None
) -> list[tuple[str, str]]:
    """ChatML turns (role, text) of OpenAI messages, with tools, calls and results written in the
    hermes format (as Qwen2.5's template writes them); consecutive tool results share a turn."""
    turns: list[tuple[str, str]] = []
    rest = list(messages)
    if tools:
        system = ""
        if rest and rest[0].get("role") in ("system", "developer"):
            system = str(rest.pop(0).get("content") or "") + "\n\n"
        listed = "".join("\n" + json.dumps(dict(t), ensure_ascii=False) for t in tools)
        turns.append(("system", system + _HERMES_PREAMBLE + listed + _HERMES_INSTRUCTIONS))
    for message in rest:
        role = str(message.get("role", ""))
        content = str(message.get("content") or "")
        if role == "tool":
            block = f"<tool_response>\n{content}\n</tool_response>"
            if turns and turns[-1][0] == "user" and turns[-1][1].startswith("<tool_response>"):
                turns[-1] = ("user", turns[-1][1] + "\n" + block)
            else:
                turns.append(("user", block))
            continue
        calls = message.get("tool_calls") or ()
        for call in calls:
            fn = call.get("function", call)
            body = {"name": fn.get("name"), "arguments": fn.get("arguments", {})}
            written = json.dumps(body, ensure_ascii=False)
            content += ("\n" if content else "") + f"<tool_call>\n{written}\n</tool_call>"
        turns.append((role, content))
    return turns


# --- parsing --------------------------------------------------------------------------------------


def parse(fmt: str, text: str, names: frozenset[str]) -> ParsedOutput:
    """Split model output into content and tool calls. A call must be well-formed JSON naming a
    known tool; if any is not, the whole text is content (nothing is dropped)."""
    calls = _parse_hermes(text, names) if fmt == HERMES else _parse_llama3(text, names)
    if not calls:
        return ParsedOutput(text or None, ())
    if fmt == HERMES:
        head = text.split(HERMES_OPEN, 1)[0].rstrip()
        return ParsedOutput(head if head.strip() else None, calls)
    return ParsedOutput(None, calls)


def _call(obj: Any, names: frozenset[str], args_key: str) -> ParsedCall | None:
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get(args_key, obj.get("arguments", {}))
    if not isinstance(args, dict):
        return None
    return ParsedCall(str(obj["name"]), json.dumps(args, ensure_ascii=False))


def _parse_hermes(text: str, names: frozenset[str]) -> tuple[ParsedCall, ...] | None:
    if HERMES_OPEN not in text:
        return ()
    tail = HERMES_OPEN + text.split(HERMES_OPEN, 1)[1]
    blocks = _HERMES_BLOCK.findall(tail)
    if _HERMES_BLOCK.sub("", tail).strip():
        return None  # an unterminated call or text after the calls
    out = []
    for block in blocks:
        try:
            call = _call(json.loads(block), names, "arguments")
        except ValueError:
            return None
        if call is None:
            return None
        out.append(call)
    return tuple(out)


def _parse_llama3(text: str, names: frozenset[str]) -> tuple[ParsedCall, ...] | None:
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith("{"):
        return ()
    decoder = json.JSONDecoder()
    out = []
    pos = 0
    while pos < len(body):
        try:
            obj, end = decoder.raw_decode(body, pos)
        except ValueError:
            return None
        call = _call(obj, names, "parameters")
        if call is None:
            return None
        out.append(call)
        pos = end
        while pos < len(body) and body[pos] in " \n\t;":
            pos += 1
    return tuple(out)
