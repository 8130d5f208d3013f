"""What a benchmark workload is: programs made of LLM calls and tool steps, as plain data.

Workload generators (`legato.bench.workloads`) produce these; the simulator and the runtime
replay them. Prompts are described by **segments** rather than token ids: a segment is a run of
tokens with an identity (a tenant's system prompt, the output of step 3, a tool's result). Two
prompts share a KV prefix exactly as far as their leading segments are equal, which is what a
prefix cache sees, without materialising millions of token ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of `tokens` prompt tokens whose content is identified by `seg_id`.

    Equal `seg_id`s must mean equal content (and therefore equal length). Ids are unique
    across the whole workload: generators draw them from one counter.
    """

    seg_id: int
    tokens: int


@dataclass(frozen=True, slots=True)
class CallSpec:
    """One LLM call of a program, followed (optionally) by a tool step."""

    node: str  # node name within the program, e.g. "step-7" or "reducer"
    prompt: tuple[Segment, ...]
    output_tokens: int
    # The call's own output is appended to later prompts as this segment (when they reuse it).
    output_seg_id: int
    tool: str | None = None  # tool run on this call's output (None: no tool step after it)
    tool_latency_s: float = 0.0
    # Indices (into Program.calls) of calls whose call *and tool step* must finish first.
    # Empty for the program's first call(s). Sequential agents use (i - 1,).
    deps: tuple[int, ...] = ()

    @property
    def prompt_tokens(self) -> int:
        return sum(s.tokens for s in self.prompt)


def reused_context_tokens(calls: tuple[CallSpec, ...], j: int) -> int:
    """Leading prompt tokens of call `j` that repeat the context (prompt, then output segment)
    of the call it follows (its last dependency); 0 for a first call."""
    call = calls[j]
    if not call.deps:
        return 0
    before = calls[call.deps[-1]]
    context = (*before.prompt, Segment(before.output_seg_id, before.output_tokens))
    reused = 0
    for mine, theirs in zip(call.prompt, context, strict=False):  # the shorter decides
        if mine != theirs:
            break
        reused += mine.tokens
    return reused


@dataclass(frozen=True, slots=True)
class ProgramSpec:
    """One program run of a workload."""

    program_id: str
    tenant: str
    arrival_s: float  # when the program is submitted (the driver may admit it later)
    calls: tuple[CallSpec, ...]
    kind: str = ""  # workload name, for reports
    group: str | None = None  # RL: siblings sharing one prompt (GRPO group id)
    tenant_weight: float = 1.0
    # True when `arrival_s` is a real arrival (a replayed trace's): TCT then counts from it, so time
    # spent waiting for a client slot counts too. False for closed-loop generators, whose arrival
    # only orders submissions: TCT counts from submission.
    open_loop: bool = False


@dataclass(frozen=True, slots=True)
class Workload:
    """A whole workload: what every policy in one bench run replays identically."""

    name: str
    programs: tuple[ProgramSpec, ...]
    params: dict[str, object] = field(default_factory=dict)  # generator parameters, for reports

    @property
    def total_calls(self) -> int:
        return sum(len(p.calls) for p in self.programs)
