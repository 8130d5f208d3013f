"""What past runs of a program teach about its next runs (dynamic agents have no graph).

A dynamic `async def` agent declares nothing ahead of time, but its runs repeat: the same call
sites, the same tools after them, similar numbers of steps. Per program name this keeps
- the distribution of calls per finished run, to predict how much work a run still has (the mean
  residual number of calls given how many it has made: SJF without a declared length), and
  the calls runs still going are known to make (right-censored lengths: whether a run that
  outlived every finished one goes on is a Kaplan-Meier question, `continues_km`);
- the mean output tokens per call, to reserve KV for a call's output before it is generated,
  the mean growth of the context per call and the mean KV footprint after k calls (fan-outs
  show up there), to project how much KV a run will need soon;
- which tool followed each call site, for calls that arrive without a `next_tool` hint
  (`legato.scheduler.followers`, shared with dynamic agents' `AgentHistory`).

Before a program has samples of its own, the means fall back to those over every program seen
(the best prior there is), and to None before anything at all is known: callers say what they
do then (no constant stands in for an unseen workload).

Bounded memory: per program histograms of run lengths, finished and going (at most
`max_lengths` distinct values each), and one counter per call site.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from legato.scheduler.followers import Followers


@dataclass(slots=True)
class _Program:
    lengths: Counter[int] = field(default_factory=Counter)  # calls per finished run -> runs
    going: Counter[int] = field(default_factory=Counter)  # calls a running run is known to make -> runs
    runs: int = 0
    output_sum: float = 0.0
    output_n: int = 0
    cost_sum: float = 0.0  # prompt + 2 x output per call (the fair-share cost)
    cost_n: int = 0
    growth_sum: float = 0.0
    growth_n: int = 0
    footprint: dict[int, list[float]] = field(default_factory=dict)  # calls done -> [sum, n]
    rest_cost: dict[int, list[float]] = field(default_factory=dict)  # calls done -> [sum, n]
    next_tool: Followers = field(default_factory=Followers)  # call site -> tools run after it
    call_ends: int = 0  # finished calls
    call_ends_alone: int = 0  # ... that left the run with no other call live (arrived, unfinished)
    residual: dict[int, float] = field(default_factory=dict)  # cache: calls done -> residual
    growth_ahead: dict[tuple[int, float, float], float] = field(default_factory=dict)  # cache
    survival: dict[tuple[int, int], float] = field(default_factory=dict)  # cache


@dataclass(slots=True)
class _Mean:
    total: float = 0.0
    n: int = 0

    def add(self, x: float) -> None:
        self.total += x
        self.n += 1

    def get(self) -> float | None:
        return self.total / self.n if self.n else None


class ProgramHistory:
    def __init__(self, max_lengths: int = 512) -> None:
        self._programs: dict[str, _Program] = {}
        self.max_lengths = max_lengths
        # Over every program: the priors of a program without samples of its own.
        self._output = _Mean()
        self._cost = _Mean()
        self._growth = _Mean()
        self._calls = _Mean()

    def _get(self, program: str) -> _Program:
        p = self._programs.get(program)
        if p is None:
            p = self._programs[program] = _Program()
        return p

    def record_output(self, program: str, output_tokens: int) -> None:
        p = self._get(program)
        p.output_sum += output_tokens
        p.output_n += 1
        self._output.add(output_tokens)

    def mean_output(self, program: str) -> float | None:
        """Mean output tokens per call of the program (else of every program; None: none seen)."""
        p = self._programs.get(program)
        if p is None or p.output_n == 0:
            return self._output.get()
        return p.output_sum / p.output_n

    def record_call_cost(self, program: str, cost: float) -> None:
        p = self._get(program)
        p.cost_sum += cost
        p.cost_n += 1
        self._cost.add(cost)

    def mean_call_cost(self, program: str | None = None) -> float | None:
        """Mean fair-share cost of one call of the program (None: of every program)."""
        p = self._programs.get(program) if program is not None else None
        if p is None or p.cost_n == 0:
            return self._cost.get()
        return p.cost_sum / p.cost_n

    def record_costs(self, program: str, costs: list[float]) -> None:
        """A finished run's fair-share cost per call, in order: for each point `done` of the
        run, what it still cost from there (calls grow with the context, so the remaining cost
        is not remaining calls x mean call cost; a run far along costs more per call)."""
        p = self._get(program)
        rest = 0.0
        for done in range(len(costs) - 1, -1, -1):
            rest += costs[done]
            entry = p.rest_cost.get(done)
            if entry is None:
                if len(p.rest_cost) >= self.max_lengths:
                    continue
                p.rest_cost[done] = [rest, 1.0]
            else:
                entry[0] += rest
                entry[1] += 1.0

    def expected_remaining_cost(self, program: str, done: int) -> float | None:
        """Mean fair-share cost past runs still had after `done` calls (None: no run that
        long seen yet)."""
        p = self._programs.get(program)
        entry = p.rest_cost.get(done) if p is not None else None
        if entry is None:
            return None
        return entry[0] / entry[1]

    def record_growth(self, program: str, tokens: float) -> None:
        """How much a sequential call's prompt grew over the previous call's."""
        p = self._get(program)
        p.growth_sum += tokens
        p.growth_n += 1
        self._growth.add(tokens)

    def mean_growth(self, program: str) -> float | None:
        """Mean prompt growth per call (else of every program; None: none seen)."""
        p = self._programs.get(program)
        if p is None or p.growth_n == 0:
            return self._growth.get()
        return p.growth_sum / p.growth_n

    def record_footprint(self, program: str, done: int, tokens: float) -> None:
        """The peak KV footprint a run had while it had made `done` calls."""
        p = self._get(program)
        entry = p.footprint.get(done)
        if entry is None:
            if len(p.footprint) >= self.max_lengths:
                return
            p.footprint[done] = [tokens, 1.0]
        else:
            entry[0] += tokens
            entry[1] += 1.0
        p.growth_ahead.clear()

    def footprint_growth(self, program: str, done: int, within: float, after: float = 0.0) -> float | None:
        """Largest mean footprint after `done + after` (exclusive) to `done + within` calls,
        minus the mean after `done` calls (how far a run's KV grows over that stretch, fan-outs
        included); None until both ends have been seen."""
        p = self._programs.get(program)
        if p is None:
            return None
        a = p.footprint.get(done)
        if a is None:
            return None
        key = (done, after, within)
        cached = p.growth_ahead.get(key)
        if cached is None:
            lo, hi = done + after, done + within
            later = [b[0] / b[1] for k, b in p.footprint.items() if lo < k <= hi]
            if not later:
                return None
            cached = p.growth_ahead[key] = max(later) - a[0] / a[1]
        return cached

    def record_call_end(self, program: str, alone: bool) -> None:
        """A call of a run finished; `alone`: the run has no other call live now (none arrived
        and unfinished, so none on an engine)."""
        p = self._get(program)
        p.call_ends += 1
        if alone:
            p.call_ends_alone += 1

    def calls_until_pausable(self, program: str) -> float:
        """Expected calls from now until the run next has no call on an engine (the point at
        which it can be paused without dropping KV a call is using): each call end is such a
        point with the measured frequency, so the count is geometric with mean 1 / P(alone).
        1 without samples; inf when no call has ended alone."""
        p = self._programs.get(program)
        if p is None or p.call_ends == 0:
            return 1.0
        if p.call_ends_alone == 0:
            return math.inf
        return p.call_ends / p.call_ends_alone

    def record_tool(self, program: str, node: str, tool: str) -> None:
        self._get(program).next_tool.record(node, tool)

    def likely_tool(self, program: str, node: str) -> str | None:
        """The tool most often run after this call site (None: never seen one)."""
        p = self._programs.get(program)
        likely = p.next_tool.most_likely(node) if p is not None else None
        return None if likely is None else likely[0]

    def record_progress(self, program: str, known: int, was: int) -> None:
        """A running run of the program is now known to make at least `known` calls (it was
        known to make `was`, 0 for a new run): a right-censored length. It has made them, or
        it has made one fewer and started a tool, whose result a next call reads."""
        p = self._get(program)
        _take(p.going, was)
        if known in p.going or len(p.going) < self.max_lengths:
            p.going[known] += 1

    def record_run(self, program: str, calls: int, known: int | None = None) -> None:
        """A run finished after `calls` calls; it was going at `known` (default `calls`)."""
        p = self._get(program)
        _take(p.going, calls if known is None else known)
        if calls not in p.lengths and len(p.lengths) >= self.max_lengths:
            return  # a new distinct length beyond the bound: keep the histogram as it is
        p.lengths[calls] += 1
        p.runs += 1
        self._calls.add(calls)
        p.residual.clear()
        p.survival.clear()

    def runs(self, program: str) -> int:
        p = self._programs.get(program)
        return 0 if p is None else p.runs

    def survival(self, program: str, done: int, more: int) -> float:
        """P(a run that has made `done` calls and is not finished makes more than `more` further
        calls), from past runs' lengths; 1.0 without history (assume it goes on)."""
        p = self._programs.get(program)
        if p is None or p.runs == 0 or more <= 0:
            return 1.0
        key = (done, more)
        cached = p.survival.get(key)
        if cached is not None:
            return cached
        alive = longer = 0
        for length, count in p.lengths.items():
            if length > done:
                alive += count
                if length > done + more:
                    longer += count
        value = longer / alive if alive else 1.0
        p.survival[key] = value
        return value

    def outlasts_fresh(self, program: str, done: int) -> bool:
        """Is a run of `program` that has made `done` calls, and has one more to come, likelier
        to go on after it than a run just started is after its first? Where most runs are
        short and a few long (a decreasing hazard, as in conversations where most users ask
        once), having made calls marks a run as likely long. Runs still going count
        (`continues_km`): early on only the short runs have finished, and finished runs alone
        would call every run that outlived them short. The next call alone is compared, not
        the mean of all still to come: that mean is known only up to the longest run seen,
        which early on is the run asking. False without history."""
        p = self._programs.get(program)
        if p is None or p.runs == 0:
            return False
        return continues_km(p.lengths, p.going, done) > continues_km(p.lengths, p.going, 0)

    def expected_remaining_calls(self, program: str, done: int) -> float | None:
        """Mean of (length - done) over past runs longer than `done`; None without history.
        Runs that outlived every past run get 1 (at least one more call, since one is pending)."""
        p = self._programs.get(program)
        if p is None or p.runs == 0:
            mean = self._calls.get()  # every program's mean length, less what it has done
            return None if mean is None else max(1.0, mean - done)
        cached = p.residual.get(done)
        if cached is not None:
            return cached
        total = n = 0
        for length, count in p.lengths.items():
            if length > done:
                total += (length - done) * count
                n += count
        value = total / n if n else 1.0
        p.residual[done] = value
        return value


def _take(counts: Counter[int], key: int) -> None:
    n = counts.get(key, 0)
    if n > 1:
        counts[key] = n - 1
    elif n == 1:
        del counts[key]


def continues_km(ended: Counter[int], going: Counter[int], done: int) -> float:
    """P(length > done + 1 | length > done): the chance that a run with more than `done` calls
    makes another after its next, from the Kaplan-Meier estimate of the run-length distribution.
    `ended` maps finished runs' lengths to counts, `going` the calls running runs are known to
    make (right-censored: length >= that). A run going at c is at risk of ending at every
    length up to c, c included (its c-th call may be its last), as Kaplan-Meier counts a
    censored time. 1.0 with nothing observed (no run is seen to end); 0.0 when the estimate
    says no run outlives `done`."""
    at_risk = sum(ended.values()) + sum(going.values())
    survival = 1.0  # P(length > t), stepped through the observed times
    s_done, s_next = 1.0, 1.0
    for t in sorted(set(ended) | set(going)):
        if t > done + 1:
            break
        d = ended.get(t, 0)
        if at_risk > 0 and d:
            survival *= 1.0 - d / at_risk
        at_risk -= d + going.get(t, 0)
        if t <= done:
            s_done = survival
        s_next = survival
    return s_next / s_done if s_done > 0.0 else 0.0
