"""What the Legato policy tracks per program run, and the KV footprint it derives from it.

A run's *footprint* is the private KV it needs resident now: the prompt of each live call plus
its output reserve, the context of each branch held through a tool, the context a finished
call hands to dependents that have not arrived yet, less the parts it shares (a tenant's system
prompt, an RL group's task prompt: held once per replica by the budget) and less the run's
first context where several parallel branches continue it (stored once in the prefix cache; a
sub-agent that starts from a prompt of its own shares none of it).

Its *projection* is the footprint over the calls ahead, up to the run's next pause point: the
policy re-decides at every tool boundary (hold or release, `pin_rule`) and pauses whole programs
when memory runs short, so an admission commits the run's memory until the next point at which
a pause drops no KV that a call is using — the next call when a pause parks the run's KV in a
tier or when its calls run one at a time (between calls nothing of it is on the engine), else
until it is next left with no call on the engine (a map's workers: a pause before then drops
KV that running calls are using, all of it recomputed). The growth is what past runs of the
program reached, at common future points (`HORIZONS`, in call cycles), times the chance it
makes its next call (its variance: it either holds that or has freed everything). Weighting each
point by the chance the run is still going then would fill more of the pool, but the pauses
that follow cost as much as that gains.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

from legato.scheduler.events import CallHints, LLMCall
from legato.scheduler.program_history import ProgramHistory

# Call cycles ahead at which admission checks the projected KV total (see `projected`): now,
# then a doubling grid (the resolution at which programs' growth is summed) up to the longest
# run a program history keeps (`ProgramHistory.max_lengths`).
HORIZONS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

NEW, WAITING, ACTIVE, PAUSED = range(4)


@dataclass(slots=True)
class Branch:
    """A finished call whose context waits for a tool before the next call reads it."""

    tool: str
    ctx: float
    shared: float  # leading tokens of `ctx` other programs hold too (`Run.call_shared`)
    root: float  # leading tokens of `ctx` that are the run's first context (`Run.call_root`)
    started: bool = False
    held: bool = True  # counted in the KV budget (False: released through its tool, see pin_rule)
    # Until its tool starts, the branch is only expected (from a hint or from what followed
    # this call site in past runs, which can be wrong: a map body's last round has no tool);
    # past this time without a `ToolStarted` it is dropped (`Legato._drop_unstarted`).
    expires_s: float = math.inf
    since_s: float = 0.0  # when its context started waiting (the call's end, or the tool start)


@dataclass(slots=True)
class Run:
    run_id: str
    program: str
    tenant: str
    group: str | None
    state: int = NEW
    replica: int | None = None  # where its KV lives (kept while paused)
    prio: int = 0  # engine priority: admission order
    held: list[str] = field(default_factory=list)  # arrived calls not yet dispatched
    live: dict[str, int] = field(default_factory=dict)  # arrived, unfinished call -> prompt tokens
    max_output: int = 0  # the latest call's max_tokens (the cost bound before any sample)
    dispatched: int = 0  # calls on an engine, unfinished
    sent_s: dict[str, float] = field(default_factory=dict)  # call on an engine -> dispatch time
    # Branches whose KV waits for a tool: entered when the call finishes with a tool expected,
    # so the footprint never dips between call and tool.
    acting: list[Branch] = field(default_factory=list)
    bridge: float = 0.0  # context a finished call hands to dependents that have not arrived yet
    bridge_s: float = 0.0  # when the bridge was last extended
    last_ctx: float = 0.0
    last_node: str = ""
    last_call_s: float | None = None  # when its latest call arrived (call-cycle samples)
    root_ctx: float | None = None  # context after the first call (what parallel branches share)
    shared: list[tuple[Hashable, float]] = field(default_factory=list)
    shared_tokens: float = 0.0
    # Live call -> leading prompt tokens other programs hold too: the run's shared prefix when
    # the call continues the run's context (or is its first), else the call's own named prefix
    # (a sub-agent with its own system prompt); `last_shared` is the latest finished call's.
    call_shared: dict[str, float] = field(default_factory=dict)
    last_shared: float = 0.0
    # Live call -> leading prompt tokens that are the run's first context, which parallel
    # branches hold once: all of the first call's, none of a call that starts from a prompt of
    # its own (a sub-agent), and a continuing call's from the context it continues (`lineage`:
    # a finished context's length -> its part of the first context, until a call continues it;
    # one not found is taken to continue the first context). `last_root`: the latest finished
    # call's.
    call_root: dict[str, float] = field(default_factory=dict)
    lineage: dict[float, float] = field(default_factory=dict)
    last_root: float = 0.0
    calls_done: int = 0
    known_calls: int = 0  # calls it is known to make: its right-censored length in the history
    queued_s: float = 0.0
    entered_s: float | None = None  # first queued (its place in the admission order)
    qver: int = 0  # waiting-queue entry version (lazy deletion)
    queued: bool = False
    engine_paused: bool = False  # a Pause decision is in force (its calls are parked)
    # Its KV was let go through a tool (`pin_rule`): on return it takes a new place in the
    # engine order (`AdmissionControl._activate`).
    released: bool = False
    # Parked in a tier while likelier to go on than a new program: on return it also
    # ranks behind programs admitted after it (`legato_admission.BEHIND_NEW`).
    behind_new: bool = False
    prev_prompt: int = 0  # prompt of the previous sequential call (growth samples)
    last_call_final: bool = False  # the latest call is the run's last step
    peak: float = 0.0  # largest footprint since the last call finished (history)
    prepaid: float = 0.0  # fair-share cost charged at admission, not yet used by calls
    live_paid: float = 0.0  # cost already charged for live calls (their prompts)
    costs: list[float] = field(default_factory=list)  # fair-share cost of each finished call
    tool_ver: int = 0
    hints: dict[str, tuple[str, CallHints]] = field(default_factory=dict)  # call -> (node, hints)
    # Live call -> leading prompt tokens the run computed before (`LLMCall.reused_context_tokens`).
    reused: dict[str, float] = field(default_factory=dict)
    # Live call -> tokens of the run's context still on the device when it arrived (a packing
    # replica's thrash meter: a prefix hit loaded back from a tier was dropped all the same).
    resident: dict[str, float] = field(default_factory=dict)
    deferred: list[str] = field(default_factory=list)  # admitted calls the fair-share gate holds


def branch_of(r: Run, tool: str) -> Branch | None:
    """The started branch of the run waiting for `tool` (the latest one)."""
    for b in reversed(r.acting):
        if b.tool == tool and b.started:
            return b
    return None


def reused_context(call: LLMCall, last_ctx: float) -> float:
    """Leading prompt tokens of `call` that its run computed before (`ThrashMeter`: KV found
    missing from them was dropped): what the driver says, else the run's last context when the
    prompt is at least as long (the next turn of a conversation), else none."""
    if call.reused_context_tokens is not None:  # within the prompt, whatever a driver says
        return float(min(max(call.reused_context_tokens, 0), call.prompt_len))
    return last_ctx if call.prompt_len >= last_ctx else 0.0


def output_reserve(r: Run, hist: ProgramHistory) -> float:
    """KV to reserve for a live call's output: the program's mean output, else the mean over
    every program seen, else nothing. Before any call has finished there is no estimate of
    the output, only its bound (`max_tokens`); reserving the bound held programs back that the
    engine (which reserves nothing) runs at once, and the first finished call replaces it with
    a measured mean. An overflow meanwhile is met by pauses (`AdmissionControl._relieve`)."""
    mean = hist.mean_output(r.program)
    return 0.0 if mean is None else mean


def footprint(r: Run, hist: ProgramHistory) -> float:
    """Private KV tokens the run needs resident now (see the module docstring)."""
    reserve = output_reserve(r, hist)
    branches = [(p + reserve, r.call_root.get(c, 0.0)) for c, p in r.live.items()]
    branches.extend((b.ctx, b.root) for b in r.acting if b.held)
    if r.bridge and not r.live:
        branches.append((r.bridge, r.last_root))
    if not branches:
        return 0.0
    total = sum(size for size, _ in branches)
    if len(branches) > 1:  # the first context, held once by the branches that continue it
        roots = [min(root, size, r.root_ctx or 0.0) for size, root in branches]
        total -= sum(roots) - max(roots)
    return max(0.0, total - r.shared_tokens)


def projected(r: Run, fp: float, hist: ProgramHistory, ahead: float) -> tuple[list[float], list[float]]:
    """Expected footprint at each horizon h (call cycles ahead, `HORIZONS`) and its variance.

    In a cycle the run makes one call per branch (its live calls and held tool branches), so h
    cycles are h x that many calls. The growth at h is the largest its program's past runs
    reached since the previous horizon, up to the run's next pause point `ahead` calls away
    (`AdmissionControl._ahead`), and it stays there past that point (the policy can pause the
    run then without dropping KV in use). Summed over runs at common future points rather than
    each at its own peak, programs whose peaks fall at different times share the room. The run
    holds that with probability s (it makes its next call, from the lengths of past runs of the
    program), nothing otherwise."""
    n = len(HORIZONS)
    if r.last_call_final:
        return [fp] + [0.0] * (n - 1), [0.0] * n
    done = r.calls_done
    width = max(1, len(r.live) + sum(1 for b in r.acting if b.held))
    s = hist.survival(r.program, done, 1)
    mean: list[float] = [fp]
    var: list[float] = [0.0]
    size, prev = fp, 0.0
    for h in HORIZONS[1:]:
        if prev >= ahead:  # past the pause point: the rest hold where it was
            mean.extend([s * size] * (n - len(mean)))
            var.extend([s * (1.0 - s) * size * size] * (n - len(var)))
            break
        calls = h * width
        learned = hist.footprint_growth(r.program, done, min(calls, ahead), prev)
        if learned is not None:
            size = fp + max(0.0, learned)
        elif h == 1:  # nothing learned: at least its mean growth, else this call's output
            growth = hist.mean_growth(r.program)
            size = fp + (growth if growth is not None else output_reserve(r, hist))
        prev = calls
        mean.append(s * size)
        var.append(s * (1.0 - s) * size * size)
    return mean, var
