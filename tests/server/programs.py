"""Programs (wire-format JSON) the REST tests submit."""

from __future__ import annotations

from typing import Any


def qa_program(max_tokens: int = 8) -> dict[str, Any]:
    """LLM answer -> pure tool (word count)."""
    return {
        "name": "qa",
        "state": [{"name": "question"}, {"name": "answer"}, {"name": "words"}],
        "prefix_parts": {"system": "You are a concise assistant.\n"},
        "nodes": [
            {
                "kind": "llm",
                "name": "answer",
                "prompt": {"parts": ["system"], "slots": [{"var": "question"}], "suffix": "Answer:"},
                "output": "answer",
                "max_tokens": max_tokens,
            },
            {
                "kind": "tool",
                "name": "count",
                "tool": "word_count",
                "args": {"text": {"var": "answer"}},
                "output": "words",
            },
        ],
        "entry": "answer",
        "edges": [{"source": "answer", "target": "count"}],
    }


def gated_program(gate_tool: str = "gate", max_tokens: int = 6) -> dict[str, Any]:
    """draft (LLM) -> record (side effect, not pure) -> wait (`gate_tool`) -> final (LLM).

    `gate` waits on a file and is pure (re-run after a crash); `effect_gate` is not (the run ends
    `interrupted`); `ask_client` is a client tool: the run waits until the test posts a result."""
    wait_args: dict[str, Any]
    if gate_tool == "ask_client":
        wait_args = {"question": {"var": "draft"}}
    elif gate_tool == "gate":
        wait_args = {"path": {"var": "gate_file"}, "value": {"var": "draft"}}
    else:
        wait_args = {"path": {"var": "gate_file"}, "log": {"var": "effect_log"}}
    return {
        "name": f"gated_{gate_tool}",
        "state": [
            {"name": n}
            for n in (
                "topic",
                "draft",
                "recorded",
                "gated",
                "final",
                "record_file",
                "gate_file",
                "effect_log",
            )
        ],
        "prefix_parts": {"system": "Write one short line.\n"},
        "nodes": [
            {
                "kind": "llm",
                "name": "draft",
                "prompt": {
                    "parts": ["system"],
                    "slots": [{"var": "topic", "label": "Topic: "}],
                    "suffix": "Line:",
                },
                "output": "draft",
                "max_tokens": max_tokens,
            },
            {
                "kind": "tool",
                "name": "record",
                "tool": "record",
                "args": {"path": {"var": "record_file"}, "text": {"var": "draft"}},
                "output": "recorded",
            },
            {"kind": "tool", "name": "wait", "tool": gate_tool, "args": wait_args, "output": "gated"},
            {
                "kind": "llm",
                "name": "final",
                "prompt": {
                    "parts": ["system"],
                    "slots": [{"var": "draft", "label": "Draft: "}, {"var": "gated", "label": "Gate: "}],
                    "suffix": "Final:",
                },
                "output": "final",
                "max_tokens": max_tokens,
            },
        ],
        "entry": "draft",
        "edges": [
            {"source": "draft", "target": "record"},
            {"source": "record", "target": "wait"},
            {"source": "wait", "target": "final"},
        ],
    }
