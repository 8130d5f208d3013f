"""`ProgramTracker`: turns a stream of OpenAI-style requests into program events.

Clients of the OpenAI-compatible proxy declare no graph; they only tag each request with a
`program_id` (and optionally hints). That is enough for the scheduler to treat the calls as one
program — affinity, pins through tool calls, program-level fair share — if it sees the same
events a declared program produces. This class derives them:

- first call of `(tenant, program_id)` -> `RunStarted`;
- a call ends without `is_last_step` -> `ToolStarted` (the hinted tool, or `CLIENT_STEP` when the
  client did not say what runs next: the program is alive but waiting on something outside);
- the program's next call arrives -> `ToolFinished` with the measured gap;
- `release`, a call with `is_last_step`, or no call for `idle_timeout_s` -> `RunFinished`.

Program ids are namespaced by the **authenticated** tenant: the key is `(tenant, program_id)`,
and the run id is a digest of both plus a generation counter, so tenant A's "p1" and tenant B's
"p1" are different runs, and a program id reused after its release starts a fresh run.

The tracker is synchronous and never awaits (like `CallScheduler.notify`); idle expiry is swept
lazily on every call and by `sweep()` (the app's periodic reaper), so no task of its own exists.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from legato.scheduler.base import CallScheduler
from legato.scheduler.events import CallHints, RunFinished, RunStarted, ToolFinished, ToolStarted

CLIENT_STEP = "client"  # tool name for the gap between calls when the client gave no tool hint
DEFAULT_IDLE_TIMEOUT_S = 300.0
DEFAULT_MAX_PROGRAMS = 10_000


class TooManyPrograms(Exception):
    """The tenant holds `max_programs_per_tenant` live programs; release some first."""


@dataclass(slots=True)
class Program:
    tenant: str
    program_id: str
    run_id: str
    started_at: float
    last_seen: float
    in_flight: int = 0
    calls: int = 0
    tool: str | None = None  # the step running between calls, if any
    tool_since: float = 0.0
    finishing: bool = False  # is_last_step seen: finish when the last in-flight call ends


class ProgramTracker:
    def __init__(
        self,
        scheduler: CallScheduler,
        *,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        max_programs_per_tenant: int = DEFAULT_MAX_PROGRAMS,
        clock: Callable[[], float] = time.monotonic,
        on_finish: Callable[[Program, str, str, float], None] | None = None,
    ) -> None:
        """`on_finish(program, status, why, seconds)` runs when a program ends (metrics: TCT)."""
        self.scheduler = scheduler
        self.on_finish = on_finish
        self.idle_timeout_s = idle_timeout_s
        self.max_programs_per_tenant = max_programs_per_tenant
        self.clock = clock
        self.programs: dict[tuple[str, str], Program] = {}
        self._per_tenant: dict[str, int] = {}
        self._gen = itertools.count(1)
        self.finished = {"released": 0, "last_step": 0, "idle": 0}

    @staticmethod
    def run_id_for(tenant: str, program_id: str, generation: int) -> str:
        digest = hashlib.sha256(f"{len(tenant)}:{tenant}|{program_id}".encode()).hexdigest()[:20]
        return f"prog-{digest}-{generation}"

    @staticmethod
    def group_key(tenant: str, group: str) -> str:
        """The scheduler's name of a tenant's group of runs (tenants never share KV)."""
        digest = hashlib.sha256(f"{len(tenant)}:{tenant}|{group}".encode()).hexdigest()[:20]
        return f"group-{digest}"

    def begin_call(self, tenant: str, program_id: str, group: str | None = None) -> Program:
        """A call of the program arrives: start the run or close the step that ran since.
        `group`: runs that share a prompt (an RL group's samples), told when the run starts."""
        now = self.clock()
        self.sweep(now)
        key = (tenant, program_id)
        program = self.programs.get(key)
        if program is None:
            if self._per_tenant.get(tenant, 0) >= self.max_programs_per_tenant:
                raise TooManyPrograms(
                    f"tenant holds {self.max_programs_per_tenant} live programs; release finished ones "
                    "with POST /v1/proxy/programs/{program_id}/release"
                )
            run_id = self.run_id_for(tenant, program_id, next(self._gen))
            program = Program(tenant, program_id, run_id, started_at=now, last_seen=now)
            self.programs[key] = program
            self._per_tenant[tenant] = self._per_tenant.get(tenant, 0) + 1
            named = None if group is None else self.group_key(tenant, group)
            self.scheduler.notify(RunStarted(run_id, program_id, tenant, group=named))
        elif program.tool is not None:
            self.scheduler.notify(
                ToolFinished(program.run_id, program.tool, max(0.0, now - program.tool_since))
            )
            program.tool = None
        program.in_flight += 1
        program.calls += 1
        program.last_seen = now
        return program

    def end_call(self, program: Program, hints: CallHints, *, ok: bool) -> None:
        """A call of the program ended (answered, failed or abandoned by the client)."""
        now = self.clock()
        program.in_flight -= 1
        program.last_seen = now
        if self.programs.get((program.tenant, program.program_id)) is not program:
            return  # released while the call ran
        if ok and hints.is_last_step:
            program.finishing = True
        if program.in_flight > 0:
            return
        if program.finishing:
            self._finish(program, "succeeded", "last_step")
            return
        tool = hints.next_tool or CLIENT_STEP
        program.tool, program.tool_since = tool, now
        self.scheduler.notify(ToolStarted(program.run_id, tool, hints.expected_tool_latency_s))

    def release(self, tenant: str, program_id: str) -> Program | None:
        """End the program now (the client says it is done); None if it is not live."""
        program = self.programs.get((tenant, program_id))
        if program is not None:
            self._finish(program, "succeeded", "released")
        return program

    def sweep(self, now: float | None = None) -> int:
        """Finish programs with no call in flight and none for `idle_timeout_s`."""
        now = self.clock() if now is None else now
        cutoff = now - self.idle_timeout_s
        idle = [p for p in self.programs.values() if p.in_flight == 0 and p.last_seen < cutoff]
        for program in idle:
            self._finish(program, "cancelled", "idle")
        return len(idle)

    def _finish(self, program: Program, status: str, why: str) -> None:
        del self.programs[(program.tenant, program.program_id)]
        left = self._per_tenant[program.tenant] - 1
        if left:
            self._per_tenant[program.tenant] = left
        else:
            del self._per_tenant[program.tenant]
        self.finished[why] += 1
        self.scheduler.notify(RunFinished(program.run_id, status))
        if self.on_finish is not None:
            self.on_finish(program, status, why, self.clock() - program.started_at)

    # --- what /metrics shows ---------------------------------------------------------------

    def active(self) -> int:
        """Programs with a call in flight."""
        return sum(1 for p in self.programs.values() if p.in_flight > 0)

    def between_calls(self) -> int:
        """Live programs waiting between calls (a tool or the client is running)."""
        return sum(1 for p in self.programs.values() if p.in_flight == 0)
