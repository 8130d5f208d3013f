"""What a dynamic agent's runs leave behind: a trace of its calls per run, and the bounded
history of recent traces that predicts, for a call site, which step usually follows.

Split from `legato.programs.agent` (which re-exports these names) so the agent context stays
one concern.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from legato.scheduler.followers import Followers

# --- traces and history ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceEvent:
    kind: Literal["llm", "tool", "fork"]
    site: str  # label, or "function:line" of the call
    path: str  # position in the fork tree (also the journal key)
    started_s: float  # seconds since the run started
    finished_s: float
    prompt_tokens: int = 0
    shared_prefix_tokens: int = 0
    prefix_parts: tuple[str, ...] = ()
    output_tokens: int = 0
    tool: str | None = None
    ok: bool = True
    branches: int = 0  # forks: how many branches ran
    replayed: bool = False  # result came from the journal

    @property
    def branch(self) -> str:
        return self.path.rsplit(".", 1)[0] if "." in self.path else ""

    @property
    def seq(self) -> int:
        return int(self.path.rsplit(".", 1)[-1])


@dataclass
class AgentTrace:
    run_id: str
    agent: str
    started_at: float  # wall clock
    events: list[TraceEvent] = field(default_factory=list)
    status: str = "running"
    duration_s: float = 0.0


NextKind = Literal["llm", "tool", "fork", "end"]
_KINDS: dict[str, NextKind] = {"llm": "llm", "tool": "tool", "fork": "fork", "end": "end"}


@dataclass(frozen=True, slots=True)
class NextCallPrediction:
    kind: NextKind
    tool: str | None
    probability: float
    expected_latency_s: float | None  # mean duration of that tool after this site


class AgentHistory:
    """Recent traces of one agent and what they predict. Bounded: the last `max_runs` runs."""

    def __init__(self, max_runs: int = 256) -> None:
        self._traces: deque[AgentTrace] = deque(maxlen=max_runs)
        self._followers = Followers()  # site -> next step in the same branch (kind or "tool:NAME")

    def record(self, trace: AgentTrace) -> None:
        if len(self._traces) == self._traces.maxlen:
            self._count(self._traces[0], self._followers.forget)
        self._traces.append(trace)
        self._count(trace, self._followers.record)

    @staticmethod
    def _count(trace: AgentTrace, count: Callable[[str, str, float | None], None]) -> None:
        for event, nxt in _successors(trace.events):
            if nxt is None:
                count(event.site, "end", None)
            elif nxt.tool:
                count(event.site, f"{nxt.kind}:{nxt.tool}", nxt.finished_s - nxt.started_s)
            else:
                count(event.site, nxt.kind, None)

    def traces(self) -> list[AgentTrace]:
        return list(self._traces)

    def __len__(self) -> int:
        return len(self._traces)

    def sites(self) -> Counter[str]:
        return Counter(e.site for t in self._traces for e in t.events)

    def transitions(self) -> Counter[tuple[str, str]]:
        """(site, next site in the same branch) counts; next is "<end>" when the branch ends."""
        counts: Counter[tuple[str, str]] = Counter()
        for trace in self._traces:
            for event, nxt in _successors(trace.events):
                counts[(event.site, nxt.site if nxt else "<end>")] += 1
        return counts

    def predict_next(self, site: str) -> NextCallPrediction | None:
        """What most often followed `site` in the same branch (None: never seen; ties: the
        smallest follower name)."""
        likely = self._followers.most_likely(site)
        if likely is None:
            return None
        follower, probability = likely
        kind, _, tool = follower.partition(":")
        latency = self._followers.mean_duration(site, follower) if tool else None
        return NextCallPrediction(_KINDS[kind], tool or None, probability, latency)


def _successors(events: Sequence[TraceEvent]) -> list[tuple[TraceEvent, TraceEvent | None]]:
    by_branch: dict[str, list[TraceEvent]] = {}
    for e in events:
        by_branch.setdefault(e.branch, []).append(e)
    pairs: list[tuple[TraceEvent, TraceEvent | None]] = []
    for branch_events in by_branch.values():
        ordered = sorted(branch_events, key=lambda e: e.seq)
        pairs.extend(zip(ordered, [*ordered[1:], None], strict=True))
    return pairs
