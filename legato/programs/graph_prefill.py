"""Speculative prefill for declarative programs: what a tool node's successor will be prompted
with, as far as it is known while the tool runs.

The LLM node an edge leads to from a tool node starts with its prefix parts, then its slots in
order. Only the tool node writes state between the two (its `output` and `error_output`), so
every slot before the first one that reads those variables renders now exactly as it will then,
and so does that slot's label (static text before the value).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from legato.programs.prompt import PrefixPart, PromptRenderer, RenderedPrompt, render_value
from legato.programs.spec import LLMNodeSpec, ToolNodeSpec
from legato.programs.state import lookup_path


def known_prompt(
    renderer: PromptRenderer,
    tool_node: ToolNodeSpec,
    successor: LLMNodeSpec,
    prefix_parts: Mapping[str, str],
    scope: Mapping[str, Any],
) -> RenderedPrompt:
    """The successor's prompt up to the first slot that waits on the tool node's writes."""
    written = {v for v in (tool_node.output, tool_node.error_output) if v is not None}
    prompt = successor.prompt
    text: list[str] = []
    for slot in prompt.slots:
        if slot.var.partition(".")[0] in written:
            text.append(slot.label)
            break
        text.append(f"{slot.label}{render_value(lookup_path(scope, slot.var))}{slot.suffix}")
    else:
        text.append(prompt.suffix)  # nothing waits on the tool: the whole prompt is known
    parts = [PrefixPart(name, prefix_parts[name]) for name in prompt.parts]
    return renderer.render(parts, "".join(text))


__all__ = ["known_prompt"]
