"""Events the program-level scheduler consumes.

The executor (real time) and the simulator (virtual time) emit the same event objects; policy
objects receive them together with a `now` and return decisions (see DESIGN.md, "policies are
pure"). Events are plain frozen data: no engine handles, no awaitables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from legato.engine_adapter.base import SamplingParams


@dataclass(frozen=True, slots=True)
class CallHints:
    """What the caller knows about what happens after this call."""

    next_tool: str | None = None  # the tool the program will run with this call's output
    expected_tool_latency_s: float | None = None
    is_last_step: bool = False  # no further LLM call of this run reuses this prefix
    # A speculative prefill (`PREFILL_ONLY`): it warms the KV of a later call; nobody reads its output
    prefill_only: bool = False


@dataclass(frozen=True, slots=True)
class LLMCall:
    """One LLM call of a program run, as the scheduler sees it."""

    call_id: str
    run_id: str
    program: str  # program name: a declarative program's id, or a dynamic agent's name
    node: str  # node name (declarative) or call site label (dynamic agents)
    tenant: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # Leading tokens that come from named prefix parts (shared across calls and programs).
    shared_prefix_tokens: int = 0
    hints: CallHints = field(default_factory=CallHints)
    # Prompt length when `prompt_token_ids` is not materialised (the simulator replays prompts
    # as identified segments, not token ids). None: use len(prompt_token_ids).
    num_prompt_tokens: int | None = None
    # Leading tokens shared with the other runs of the run's group (an RL group's prompt, which
    # its samples forked from). None: all of the group's first call's prompt after the named
    # prefix parts (a sibling whose first call is the group prompt itself).
    group_prefix_tokens: int | None = None
    # Leading prompt tokens that repeat the context (prompt, then output) of the run's call this
    # one follows: KV the run computed before. A node may open with other prefix parts than the
    # call before it, so a prompt's length alone can mislead. The simulator fills it from its
    # segments, the real-time `PolicyScheduler` from token ids. None: not known; a policy then
    # takes a prompt at least as long as the run's last context to extend it (a conversation's
    # next turn) and a shorter one to reuse none of it.
    reused_context_tokens: int | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids) if self.num_prompt_tokens is None else self.num_prompt_tokens


class ProgramShape(Protocol):
    """What a policy may ask of a declarative program's graph (`legato.programs.model.ProgramGraph`
    answers it), so the scheduler never imports the programs layer."""

    def reuses_first_prefix_after(self, node: str) -> bool | None:
        """Does an LLM node reachable from `node` start with `node`'s first prefix part? None
        when unknown (not a node of the graph, or `node` has no prefix part)."""
        ...


@dataclass(frozen=True, slots=True)
class RunStarted:
    run_id: str
    program: str
    tenant: str
    # The declarative program's graph when there is one; None for dynamic agents.
    spec: ProgramShape | None = None
    # Runs that share a prompt and are best served together (an RL GRPO group's siblings).
    group: str | None = None


@dataclass(frozen=True, slots=True)
class CallArrived:
    call: LLMCall


@dataclass(frozen=True, slots=True)
class CallFinished:
    call_id: str
    run_id: str
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int
    finish_reason: str
    # Seconds from reaching the engine to its first admission (vLLM's queued -> scheduled
    # interval); None where the engine does not report it.
    queued_s: float | None = None


@dataclass(frozen=True, slots=True)
class ToolStarted:
    run_id: str
    tool: str
    expected_latency_s: float | None = None


@dataclass(frozen=True, slots=True)
class ToolFinished:
    run_id: str
    tool: str
    duration_s: float
    ok: bool = True


@dataclass(frozen=True, slots=True)
class RunFinished:
    run_id: str
    status: str  # "succeeded" | "failed" | "cancelled" | "interrupted"


@dataclass(frozen=True, slots=True)
class TenantWeight:
    """A tenant's fair-share weight was set or changed (the server sends its tenant records'
    weights, keyed by tenant id as its calls are). Weighted policies use it; others ignore it."""

    tenant: str
    weight: float


@dataclass(frozen=True, slots=True)
class Tick:
    """Periodic wake-up so policies can expire pins, resume paused programs, etc."""


# What a caller tells a `CallScheduler` besides its calls (`notify`).
ProgramEvent = RunStarted | ToolStarted | ToolFinished | RunFinished | TenantWeight
Event = (
    RunStarted | CallArrived | CallFinished | ToolStarted | ToolFinished | RunFinished | TenantWeight | Tick
)
