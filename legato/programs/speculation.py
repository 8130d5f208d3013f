"""Program-level speculation: warm the next call's KV and run `pure` tools ahead of the program.

Three moves, all invisible in a program's result:

- **speculative prefill**: while a tool runs, the part of the next LLM call's prompt that is
  already known is sent as a prefill-only call (`PREFILL_ONLY`, through the scheduler like any
  call), so its KV is in the prefix cache when the tool returns;
- **early tool start**: a streamed reply whose tool call is complete before the generation ends
  starts that (pure) tool at once;
- **speculative tool execution**: the next pure tool call is predicted from the run's and the
  agent's history (`ToolCallPredictor`) and started while the LLM call that decides it runs.

A speculative tool result is used only when the program then asks for exactly the same tool
and arguments (canonical JSON) and nothing impure ran in the run's workspace since it started
(an impure tool bumps `epoch`); everything else is cancelled and discarded, so a wrong guess
costs CPU, never correctness. What a tenant may waste is bounded by `TenantToolBudget`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from legato.tools.base import ToolResult

log = logging.getLogger(__name__)

ToolKey = tuple[str, str]  # (tool name, canonical JSON of the arguments)


def tool_key(name: str, args: Mapping[str, Any]) -> ToolKey | None:
    """The identity of a call; None for arguments that are not JSON (never speculated on)."""
    try:
        return name, json.dumps(args, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class ProgramSpecConfig:
    """What program-level speculation may do. `max_concurrent_tools` and `cpu_seconds` bound one
    tenant's speculative tools (in flight at once; wall-seconds spent, refilled at
    `cpu_seconds` per `window_s`): operator limits on wasted work, not tuned values."""

    prefill: bool = True
    early_tools: bool = True
    predicted_tools: bool = True
    max_concurrent_tools: int = 2
    cpu_seconds: float = 30.0
    window_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_concurrent_tools <= 64:
            raise ValueError(f"max_concurrent_tools must be in [0, 64], got {self.max_concurrent_tools}")
        for name in ("cpu_seconds", "window_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value <= 86_400):
                raise ValueError(f"{name} must be in (0, 86400] seconds, got {value!r}")


SPEC_PARTS = ("prefill", "early", "predicted")


def parse_program_spec(value: str) -> ProgramSpecConfig | None:
    """The CLI's values -> a config or None: `off`, `on` (everything), or a `+`-joined subset of
    `prefill`, `early`, `predicted` (e.g. `prefill+early`). Anything else is a ValueError."""
    if value == "off":
        return None
    if value == "on":
        return ProgramSpecConfig()
    parts = value.split("+")
    if any(p not in SPEC_PARTS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(
            f"program-spec must be 'on', 'off' or a '+'-joined subset of {', '.join(SPEC_PARTS)}, "
            f"got {value!r}"
        )
    return ProgramSpecConfig(
        prefill="prefill" in parts, early_tools="early" in parts, predicted_tools="predicted" in parts
    )


class TenantToolBudget:
    """Per-tenant bound on speculative tools: at most `max_concurrent_tools` in flight and a
    bucket of `cpu_seconds` that each finished speculative run drains by its duration (wall
    time, an upper bound on a single-threaded tool's CPU time) and that refills linearly."""

    def __init__(self, config: ProgramSpecConfig) -> None:
        self.config = config
        self._in_flight: Counter[str] = Counter()
        self._level: dict[str, tuple[float, float]] = {}  # tenant -> (seconds left, at)

    def _left(self, tenant: str, now: float) -> float:
        left, at = self._level.get(tenant, (self.config.cpu_seconds, now))
        refill = (now - at) * self.config.cpu_seconds / self.config.window_s
        return min(self.config.cpu_seconds, left + refill)

    def acquire(self, tenant: str) -> bool:
        now = time.monotonic()
        if self._in_flight[tenant] >= self.config.max_concurrent_tools or self._left(tenant, now) <= 0:
            return False
        self._in_flight[tenant] += 1
        return True

    def release(self, tenant: str, seconds: float) -> None:
        now = time.monotonic()
        self._in_flight[tenant] -= 1
        if self._in_flight[tenant] <= 0:
            del self._in_flight[tenant]
        self._level[tenant] = (self._left(tenant, now) - max(0.0, seconds), now)

    def in_flight(self, tenant: str) -> int:
        return self._in_flight[tenant]


class ToolCallPredictor:
    """Which tool call followed which: counts of (previous call -> next call) over the calls of
    one agent (or program) across its runs. Bounded: the oldest successors are forgotten past
    `max_keys` distinct previous calls."""

    def __init__(self, max_keys: int = 4096) -> None:
        self._next: dict[ToolKey | None, Counter[ToolKey]] = {}
        self._max_keys = max_keys

    def record(self, previous: ToolKey | None, call: ToolKey) -> None:
        if previous not in self._next and len(self._next) >= self._max_keys:
            self._next.pop(next(iter(self._next)))
        self._next.setdefault(previous, Counter())[call] += 1

    def predict(self, previous: ToolKey | None) -> ToolKey | None:
        """The most frequent follower (ties: the first seen); None when never seen."""
        counts = self._next.get(previous)
        return counts.most_common(1)[0][0] if counts else None


class ToolRunner(Protocol):
    """What speculation needs of the tool runtime (`ToolRuntime.call` fits)."""

    async def call(
        self, name: str, args: dict[str, Any], *, run_id: str, call_id: str, tenant: str
    ) -> ToolResult: ...


@dataclass
class _Pending:
    epoch: int
    done: anyio.Event = field(default_factory=anyio.Event)
    result: ToolResult | None = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


@dataclass
class SpecCounters:
    """What one run's speculation did (reported in bench outcomes)."""

    prefills: int = 0
    tools_started: int = 0
    tools_used: int = 0
    tools_discarded: int = 0


class RunSpeculation:
    """One run's speculative tools and prefills, in a task group that lives as long as the run
    (`async with`); leaving it cancels whatever is still speculative."""

    def __init__(
        self,
        config: ProgramSpecConfig,
        budget: TenantToolBudget,
        tools: ToolRunner | None,
        is_pure: Callable[[str], bool],
        *,
        run_id: str,
        tenant: str,
        predictor: ToolCallPredictor | None = None,
    ) -> None:
        self.config = config
        self.budget = budget
        self.tools = tools
        self.is_pure = is_pure  # name -> bool: only pure tools are ever speculated
        self.run_id = run_id
        self.tenant = tenant
        self.predictor = predictor
        self.counters = SpecCounters()
        self.epoch = 0  # bumped when an impure tool starts and when it ends
        self._previous: ToolKey | None = None
        self._pending: dict[ToolKey, _Pending] = {}
        self._warm: Callable[[], Awaitable[object]] | None = None  # the prefill waiting for a tool
        self._tg: TaskGroup | None = None
        self._n = 0

    async def __aenter__(self) -> RunSpeculation:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        try:
            return await self._tg.__aexit__(*exc)
        finally:
            self._tg = None

    # -- tools -----------------------------------------------------------------------------
    def start_tool(self, name: str, args: Mapping[str, Any]) -> bool:
        """Start a pure tool speculatively; False when not allowed (impure, budget, running)."""
        key = tool_key(name, args)
        if (
            key is None
            or self._tg is None
            or self.tools is None
            or key in self._pending
            or self.epoch % 2  # an impure tool is changing the workspace right now
            or not self.is_pure(name)
            or not self.budget.acquire(self.tenant)
        ):
            return False
        pending = _Pending(self.epoch)
        self._pending[key] = pending
        self.counters.tools_started += 1
        self._tg.start_soon(self._run_tool, name, dict(args), pending)
        return True

    async def _run_tool(self, name: str, args: dict[str, Any], pending: _Pending) -> None:
        assert self.tools is not None
        self._n += 1
        started = time.monotonic()
        try:
            with pending.scope:
                pending.result = await self.tools.call(
                    name,
                    args,
                    run_id=self.run_id,
                    call_id=f"{self.run_id}:spec:{self._n}",
                    tenant=self.tenant,
                )
        except Exception:  # e.g. an unknown tool: the program's own call reports it
            log.debug("speculative tool %r of run %s failed", name, self.run_id, exc_info=True)
        finally:
            self.budget.release(self.tenant, time.monotonic() - started)
            pending.done.set()

    def predict_and_start(self) -> bool:
        """Speculative tool execution: start the call that followed the run's last call before."""
        if not self.config.predicted_tools or self.predictor is None:
            return False
        key = self.predictor.predict(self._previous)
        if key is None or key in self._pending:
            return False
        return self.start_tool(key[0], json.loads(key[1]))

    async def take(self, name: str, args: Mapping[str, Any]) -> ToolResult | None:
        """The program now calls `name(args)`: a speculative result of exactly that call from the
        current epoch, or None (run it for real). Every other speculative call is discarded. A
        prefill the program asked for (`start_prefill`) starts now if there is a wait to hide it
        in (the tool runs for real, or its speculative run is still going), else it is dropped."""
        key = tool_key(name, args)
        if key is not None and self.predictor is not None:
            self.predictor.record(self._previous, key)
        self._previous = key
        if not self.is_pure(name):
            self.impure()  # the caller calls `impure()` again when the tool ends
            self._launch_prefill()
            return None
        hit = self._pending.pop(key, None) if key is not None else None
        self._discard_all()
        if hit is None or hit.epoch != self.epoch:
            if hit is not None:
                self._discard(hit)
            self._launch_prefill()
            return None
        if hit.done.is_set():
            self._warm = None  # the result is here: no wait left to hide a prefill in
        else:
            self._launch_prefill()
        await hit.done.wait()
        result = hit.result
        if result is None or not result.ok:  # cancelled or failed: run it for real (pure)
            self.counters.tools_discarded += 1
            return None
        self.counters.tools_used += 1
        return result

    def call_started(self) -> None:
        """An LLM call starts: a prefill asked for before it is moot (the call prefills itself);
        speculative tool execution starts the call predicted to follow."""
        self._warm = None
        self.predict_and_start()

    def impure(self) -> None:
        """An impure tool starts or ends in the run's workspace: speculative reads are stale."""
        self.epoch += 1
        self._discard_all()

    def _discard(self, pending: _Pending) -> None:
        pending.scope.cancel()
        self.counters.tools_discarded += 1

    def _discard_all(self) -> None:
        for pending in self._pending.values():
            self._discard(pending)
        self._pending.clear()

    # -- prefill ---------------------------------------------------------------------------
    def start_prefill(self, warm: Callable[[], Awaitable[object]]) -> bool:
        """Speculative prefill: `warm()` (a prefill-only call) runs in the background once the
        run waits on a tool (see `take`); False when prefill speculation is off. Its failure is
        only logged, as the real call simply prefills what is missing."""
        if not self.config.prefill or self._tg is None:
            return False
        self._warm = warm
        return True

    def _launch_prefill(self) -> None:
        warm, self._warm = self._warm, None
        if warm is None or self._tg is None:
            return
        self.counters.prefills += 1

        async def guarded() -> None:
            try:
                await warm()
            except Exception:
                log.debug("speculative prefill of run %s failed", self.run_id, exc_info=True)

        self._tg.start_soon(guarded)


__all__ = [
    "SPEC_PARTS",
    "ProgramSpecConfig",
    "RunSpeculation",
    "SpecCounters",
    "TenantToolBudget",
    "ToolCallPredictor",
    "parse_program_spec",
    "tool_key",
]
