"""Model output to OpenAI's chat message: tool calls parsed out of the text (whole, or while
streaming), `finish_reason` "tool_calls" when there are any.

Streaming holds back text that may be the start of a call (a partial `<tool_call>` marker, or a
Llama-3.1 JSON call) and trailing whitespace, streams the rest as content, and emits the calls
as `tool_calls` deltas when the output ends: the deltas reassemble to exactly the calls (and the
content) of the same output answered in one piece.
"""

from __future__ import annotations

import uuid

from legato.engine_adapter.chat.formats import HERMES, HERMES_OPEN, ParsedOutput, parse
from legato.engine_adapter.chat.plan import ChatPlan
from legato.engine_adapter.openai_api import ChatResponseMessage
from legato.engine_adapter.openai_tools import FunctionCall, FunctionCallDelta, ToolCall, ToolCallDelta


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parsed_output(plan: ChatPlan | None, text: str) -> ParsedOutput:
    if plan is None or plan.tool_format is None:
        return ParsedOutput(text, ())
    out = parse(plan.tool_format, text, plan.tool_names)
    if not plan.parallel and len(out.calls) > 1:
        return ParsedOutput(out.content, out.calls[:1])  # parallel_tool_calls=false: one call
    return out


def chat_message(plan: ChatPlan | None, text: str, finish_reason: str) -> tuple[ChatResponseMessage, str]:
    """The response message of a whole output, and its finish reason."""
    out = parsed_output(plan, text)
    if not out.calls:
        return ChatResponseMessage(content=text), finish_reason
    calls = [
        ToolCall(id=call_id(), function=FunctionCall(name=c.name, arguments=c.arguments)) for c in out.calls
    ]
    return ChatResponseMessage(content=out.content, tool_calls=calls), "tool_calls"


class ToolStream:
    """The streaming counterpart of `chat_message` for one choice."""

    def __init__(self, plan: ChatPlan | None) -> None:
        self.plan = plan
        self.text = ""
        self.emitted = 0

    def push(self, delta: str) -> str:
        """Content that can be streamed now."""
        self.text += delta
        fmt = None if self.plan is None else self.plan.tool_format
        if fmt is None:
            out, self.emitted = self.text[self.emitted :], len(self.text)
            return out
        limit = len(self.text)
        if fmt == HERMES:
            marker = self.text.find(HERMES_OPEN)
            if marker >= 0:
                limit = marker
            else:
                for k in range(min(len(HERMES_OPEN) - 1, len(self.text)), 0, -1):
                    if self.text.endswith(HERMES_OPEN[:k]):
                        limit = len(self.text) - k
                        break
        else:
            head = self.text.lstrip()
            if not head or head[0] in "{<":
                limit = 0
        safe = len(self.text[:limit].rstrip())  # trailing whitespace waits: a call may follow
        safe = max(safe, self.emitted)
        out, self.emitted = self.text[self.emitted : safe], safe
        return out

    def finish(self, finish_reason: str | None) -> tuple[str, list[ToolCallDelta], str | None]:
        """The output ended: the content still to stream, the call deltas, the finish reason."""
        out = parsed_output(self.plan, self.text)
        if not out.calls:
            rest, self.emitted = self.text[self.emitted :], len(self.text)
            return rest, [], finish_reason
        content = out.content or ""
        rest = content[self.emitted :] if len(content) > self.emitted else ""
        deltas = [
            ToolCallDelta(
                index=i,
                id=call_id(),
                type="function",
                function=FunctionCallDelta(name=c.name, arguments=c.arguments),
            )
            for i, c in enumerate(out.calls)
        ]
        return rest, deltas, "tool_calls"
