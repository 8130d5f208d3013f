"""The closed-loop workload client both replays share: the simulator (`sim/driver.py`, virtual
time) and the torch replay (`bench/torch_replay.py`, wall-clock time).

What a program run tells the scheduler and what it is charged must not depend on which engine
replays it, so the pieces are written once here: programs are submitted in arrival order (ties
by position); a call's shared prefix is its leading segments that calls of other programs start
with too (`SharedPrefixes`); each program's dependency graph; the `RunStarted` a program
announces (with its RL group); the call hints (next tool, the mean latency seen so far for that
tool, last step); and the VTC service cost charged per call (`legato.scheduler.fair_share.W_IN`,
`W_OUT`), with the per-tenant ledger of what was served.
"""

from __future__ import annotations

from collections.abc import Sequence

from legato.scheduler.events import CallHints, RunStarted
from legato.scheduler.fair_share import W_IN, W_OUT
from legato.sim.workload import ProgramSpec, Segment, Workload


def arrival_order(workload: Workload) -> list[ProgramSpec]:
    """The programs in the order the client submits them."""
    order = sorted(range(len(workload.programs)), key=lambda i: (workload.programs[i].arrival_s, i))
    return [workload.programs[i] for i in order]


class SharedPrefixes:
    """The leading prompt segments a call shares with calls of other programs: the prompt
    parts programs have in common (a system prompt, a database schema, tool descriptions),
    which an SDK program declares as shared prefix parts (`programs.prompt.PrefixPart`) and
    the simulator finds in the workload. A path counts when calls of more than one program
    start with it; programs of one RL group count as one (their common prompt is the group's,
    announced with the group). Built level by level, so only shared paths are extended."""

    def __init__(self, workload: Workload) -> None:
        self._paths: set[tuple[int, ...]] = set()
        owner = {i: p.group if p.group is not None else i for i, p in enumerate(workload.programs)}
        prompts = [(owner[i], c.prompt) for i, p in enumerate(workload.programs) for c in p.calls if c.prompt]
        depth = 1
        while prompts:
            users: dict[tuple[int, ...], set[object]] = {}
            for who, prompt in prompts:
                if len(prompt) >= depth:
                    users.setdefault(_path(prompt, depth), set()).add(who)
            level = {path for path, who in users.items() if len(who) > 1}
            self._paths |= level
            prompts = [(w, pr) for w, pr in prompts if len(pr) > depth and _path(pr, depth) in level]
            depth += 1

    def leading(self, prompt: Sequence[Segment]) -> Sequence[Segment]:
        """The shared leading segments of `prompt` (empty when its first is not shared)."""
        depth = 0
        while depth < len(prompt) and _path(prompt, depth + 1) in self._paths:
            depth += 1
        return prompt[:depth]


def _path(prompt: Sequence[Segment], depth: int) -> tuple[int, ...]:
    return tuple(s.seg_id for s in prompt[:depth])


def dependents(spec: ProgramSpec) -> list[list[int]]:
    """For each call of the program, the calls that wait for it (and its tool step)."""
    out: list[list[int]] = [[] for _ in spec.calls]
    for j, c in enumerate(spec.calls):
        for dep in c.deps:
            out[dep].append(j)
    return out


def run_started(spec: ProgramSpec) -> RunStarted:
    return RunStarted(spec.program_id, spec.kind or "program", spec.tenant, group=spec.group)


def service_cost(prompt_tokens: int, output_tokens: int) -> float:
    """The VTC cost of one call, as `RunOutcome.service_by_tenant` counts it."""
    return W_IN * prompt_tokens + W_OUT * output_tokens


class TenantLedger:
    """Service delivered per tenant (VTC cost) and, for fair-share reports, the *backlogged
    window*: from the start until some tenant has no program left that has not started (finished
    a call: got through the policy's and the engine's queues). Service finished inside it is
    what weighted fair sharing promises in proportion to weights; whole-run totals are just the
    workload's."""

    def __init__(self, specs: Sequence[ProgramSpec]) -> None:
        self.service: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self._unstarted: dict[str, int] = {}
        for spec in specs:
            self._unstarted[spec.tenant] = self._unstarted.get(spec.tenant, 0) + 1
        self._started: set[str] = set()
        self.backlog_open = bool(specs)
        self.backlog_end_s = 0.0
        self.backlog_service: dict[str, float] = {t: 0.0 for t in sorted(self._unstarted)}

    def submitted(self, spec: ProgramSpec) -> None:
        self.weights[spec.tenant] = spec.tenant_weight
        self.service.setdefault(spec.tenant, 0.0)

    def charge(self, spec: ProgramSpec, prompt_tokens: int, output_tokens: int, now: float) -> None:
        """A call of `spec`'s program finished at `now`."""
        tenant = spec.tenant
        cost = service_cost(prompt_tokens, output_tokens)
        self.service[tenant] += cost
        if not self.backlog_open:
            return
        self.backlog_service[tenant] += cost
        if spec.program_id not in self._started:
            self._started.add(spec.program_id)
            self._unstarted[tenant] -= 1
            if self._unstarted[tenant] == 0:
                self.backlog_open = False
                self.backlog_end_s = now


class ToolMeans:
    """Mean latency of each tool seen so far (what a runtime could know when a call arrives)."""

    def __init__(self) -> None:
        self._sums: dict[str, tuple[float, int]] = {}

    def mean(self, tool: str | None) -> float | None:
        st = None if tool is None else self._sums.get(tool)
        return None if st is None else st[0] / st[1]

    def record(self, tool: str, latency_s: float) -> None:
        s, c = self._sums.get(tool, (0.0, 0))
        self._sums[tool] = (s + latency_s, c + 1)

    def hints(self, tool: str | None, is_last_step: bool) -> CallHints:
        return CallHints(tool, self.mean(tool), is_last_step)


__all__ = [
    "SharedPrefixes",
    "TenantLedger",
    "ToolMeans",
    "arrival_order",
    "dependents",
    "run_started",
    "service_cost",
]
