"""Streaming tool calls: however the output is cut into chunks, the streamed content and
`tool_calls` deltas reassemble to exactly the message answered in one piece."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from legato.engine_adapter.chat.formats import HERMES, LLAMA3_JSON
from legato.engine_adapter.chat.output import ToolStream, chat_message
from legato.engine_adapter.chat.plan import ChatPlan

CALL = '<tool_call>\n{"name": "search", "arguments": {"q": "x"}}\n</tool_call>'
TEXTS = {
    HERMES: [
        "Let me look.\n" + CALL,
        CALL + "\n" + CALL.replace('"x"', '"y"'),
        "no call here <tool",
        "broken " + CALL.replace("}}", "}"),
        "  spaced  ",
    ],
    LLAMA3_JSON: [
        '{"name": "search", "parameters": {"q": "z"}}',
        '<|python_tag|>{"name": "search", "parameters": {"q": "z"}}; {"name": "search", "parameters": {}}',
        "plain answer",
        '{"not": "a call"}',
    ],
}


def _plan(fmt: str) -> ChatPlan:
    return ChatPlan([], None, None, fmt, frozenset({"search"}), True)


@given(
    st.sampled_from([(fmt, i) for fmt, texts in TEXTS.items() for i in range(len(texts))]),
    st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_streamed_pieces_reassemble_to_the_whole_message(case: tuple[str, int], cuts: list[int]) -> None:
    fmt, index = case
    text = TEXTS[fmt][index]
    plan = _plan(fmt)
    whole, whole_reason = chat_message(plan, text, "stop")
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    stream = ToolStream(plan)
    content = "".join(stream.push(text[a:b]) for a, b in itertools.pairwise(bounds))
    rest, deltas, reason = stream.finish("stop")
    content += rest
    assert reason == whole_reason
    assert (content or None) == whole.content
    calls = [(d.function.name, d.function.arguments) for d in deltas if d.function is not None]
    assert calls == [(c.function.name, c.function.arguments) for c in whole.tool_calls or ()]
    assert [d.index for d in deltas] == list(range(len(deltas)))
