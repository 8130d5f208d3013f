"""What a drafter may draw on: the program's own text so far, and earlier outputs of its agent.

`ProgramContext` is one program's running text (every prompt, output and tool result in order,
each prompt appended only where it extends what the context already holds, so an agent that
re-sends its whole history costs nothing twice). `AgentHistory` holds, per agent (program name or
call site), a bounded index of the outputs of its earlier calls: SuffixDecoding's global tree,
scoped to the agent instead of the whole server.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from legato.spec.adaptive import AdaptiveDraftLength
from legato.spec.suffix_index import SuffixIndex

# Memory bounds (not tuned: they only cap memory; a larger bound drafts at least as well).
MAX_AGENT_TOKENS = 1 << 20  # tokens of earlier outputs kept per agent
MAX_AGENTS = 256  # agents with a history (least recently used dropped)


class AgentHistory:
    """Per agent, a bounded index of its earlier outputs."""

    def __init__(self, max_tokens: int = MAX_AGENT_TOKENS, max_agents: int = MAX_AGENTS) -> None:
        if max_tokens < 1 or max_agents < 1:
            raise ValueError("max_tokens and max_agents must be >= 1")
        self.max_tokens = max_tokens
        self.max_agents = max_agents
        self._agents: OrderedDict[str, SuffixIndex] = OrderedDict()

    def index(self, agent: str) -> SuffixIndex | None:
        idx = self._agents.get(agent)
        if idx is not None:
            self._agents.move_to_end(agent)
        return idx

    def add_output(self, agent: str, tokens: Sequence[int]) -> None:
        """Remember one finished output of `agent`."""
        if not tokens:
            return
        idx = self._agents.get(agent)
        if idx is None:
            idx = self._agents[agent] = SuffixIndex(max_tokens=self.max_tokens)
            while len(self._agents) > self.max_agents:
                self._agents.popitem(last=False)
        self._agents.move_to_end(agent)
        idx.append_document(tokens)


class ProgramContext:
    """One program's text so far (one running document) and its drafting state."""

    def __init__(
        self,
        agent: str,
        history: AgentHistory | None = None,
        max_draft: int = 16,
        index: SuffixIndex | None = None,
    ) -> None:
        self.agent = agent
        self.history = history
        self.index = index if index is not None else SuffixIndex()
        self.draft_length = AdaptiveDraftLength(max_draft)
        self._prompt: list[int] = []  # the last prompt, to append only what a new one adds
        self._output_start = -1  # absolute start of the output being generated (-1: none)

    def __len__(self) -> int:
        return len(self.index)

    def tail(self, n: int) -> list[int]:
        """The last `n` tokens of the context (the query a drafter matches)."""
        return self.index.tokens(len(self.index) - n)

    def add_prompt(self, prompt: Sequence[int]) -> None:
        """A new call's prompt: append the part not already in the context. A prompt that
        extends the context (an agent re-sending its history plus a tool result) adds only its
        new tail; any other prompt is appended whole."""
        held = len(self.index)
        extends = held and len(prompt) >= held and self.index.held_tokens == held
        if extends and list(prompt[:held]) == self.index.tokens():
            self.index.extend(prompt[held:])
            return
        self.index.extend(prompt)

    def start_output(self) -> None:
        self._output_start = len(self.index)

    def add_output_tokens(self, tokens: Sequence[int]) -> None:
        """Tokens of the output being generated (verified ones only)."""
        if self._output_start < 0:
            self.start_output()
        self.index.extend(tokens)

    def finish_output(self) -> None:
        """The output is complete: remember it in the agent's history."""
        if self._output_start >= 0 and self.history is not None:
            self.history.add_output(self.agent, self.index.tokens(self._output_start))
        self._output_start = -1
