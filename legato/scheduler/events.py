"""Events the program-level scheduler consumes.

The executor (real time) and the simulator (virtual time) emit the same event objects; policy
objects receive them together with a `now` and return decisions (see DESIGN.md, "policies are
pure"). Events are plain frozen data: no engine handles, no awaitables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from legato.engine_adapter.base import SamplingParams


@dataclass(frozen=True, slots=True)
class CallHints:
    """What the caller knows about what happens after this call."""

    next_tool: str | None = None  # the tool the program will run with this call's output
    expected_tool_latency_s: float | None = None
    is_last_step: bool = False  # no further LLM call of this run reuses this prefix


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

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids) if self.num_prompt_tokens is None else self.num_prompt_tokens


@dataclass(frozen=True, slots=True)
class RunStarted:
    run_id: str
    program: str
    tenant: str
    # The declarative program (legato.programs spec) when there is one; None for dynamic agents.
    spec: object | None = None
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
class Tick:
    """Periodic wake-up so policies can expire pins, resume paused programs, etc."""


ProgramEvent = RunStarted | ToolStarted | ToolFinished | RunFinished
Event = RunStarted | CallArrived | CallFinished | ToolStarted | ToolFinished | RunFinished | Tick
