"""`sessions:PATH`: replay of an OpenAI-chat call log, one call per line.

Line shape: `{"timestamp": µs when the call was sent, "input": text, "output": text,
"session_id": str | int}`, optionally `"end_timestamp"`: µs when its answer was complete (either
timestamp may be an ISO-8601 date-time instead, as many logs write them). Lines
are sorted by time (then file order) before anything else, so a log written out of order replays
the same. One session = one program; its calls keep the
structure the log shows:

* **Cumulative inputs.** Logged calls usually carry the whole conversation so far. A call whose
  input starts with an earlier call's input followed by that call's output (at most
  `_SEPARATOR_CHARS` characters apart: a role tag or newline) *continues* it: its prompt is the
  earlier prompt, the earlier output (the segment the engine already holds) and only the new
  text after it; it depends on that call. Of several such calls the one with the longest input is
  the parent. So a cumulative log and the same conversation logged as deltas give the same
  token counts.
* **Delta inputs.** A session in which no call continues another is a log of new turns only
  (the older shape): turn k's prompt is every earlier turn's input and output plus its own input,
  one chain.
* **Agents and branches.** In a cumulative session, a call that continues nobody is a new agent
  (or a branch that dropped history): its prompt shares, segment by segment, the longest earlier
  input that is a prefix of it, and otherwise its text is cut where it stops sharing a prefix with
  any other input of the file (`legato.bench.traces.PrefixCuts`), so agents that share a system
  prompt share its KV. It depends on the latest call of the session that had finished when it was
  sent, so sub-agents started together run in parallel, and two calls that continue the same
  parent are siblings, also in parallel. A call also waits for the calls descending from its
  parent that nobody had followed yet and that had finished when it was sent (an orchestrator's
  next turn waits for the last calls of the sub-agents it started).
* **Tokens.** No pretrained tokenizer vocabulary ships with the installed packages (and none can be
  downloaded), so text is counted as one token per `bytes_per_token` (4) UTF-8 bytes, at least 1
  per piece: the usual rule of thumb for BPE tokenizers on English text. Logs with provider
  `usage` counts should use `chat:` instead.
* **Tool time** after a call is the time from its end to its first dependent's send. The end is
  `end_timestamp` where the line has one (then the gap is exactly the logged one); otherwise the
  send plus the longest call duration the log's pacing allows (`legato.bench.traces.
  fit_call_time`, fitted on the calls without an end), or the duration at `decode_tok_s` when
  given. A call without dependents has no tool step.

`limit` bounds the lines read; `programs` keeps the first sessions by start; `arrival` and
`time_scale` as for every trace workload. Malformed lines raise `ValueError("PATH:LINE: ...")`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

from legato.bench.traces import (
    KV_BLOCK_TOKENS,
    CallTime,
    PrefixCuts,
    TextSegments,
    TraceSession,
    TraceTiming,
    approx_tokens,
    fail,
    finish_workload,
    fit_call_time,
    read_rows,
    time_field,
)
from legato.sim.workload import CallSpec, Segment, Workload

_SEPARATOR_CHARS = 64  # text allowed between a call's input and its output inside a later input


@dataclass(frozen=True, slots=True)
class SessionLine:
    line: int
    sent_s: float
    session: str
    input: str
    output: str
    end_s: float | None = None


def parse_sessions(path: Path, limit: int | None = None) -> list[SessionLine]:
    """Parse a session log, validating every line; sorted by (time, line)."""
    lines = []
    for line, obj in read_rows(path, limit):
        sent = time_field(path, line, obj, "timestamp", 1_000_000.0)
        texts = []
        for key in ("input", "output"):
            value = obj.get(key)
            if not isinstance(value, str):
                raise fail(path, line, f"{key!r} must be a string, got {value!r}")
            texts.append(value)
        session = obj.get("session_id")
        if isinstance(session, bool) or not isinstance(session, str | int) or session == "":
            raise fail(path, line, f"'session_id' must be a non-empty string or an integer, got {session!r}")
        end = None
        if obj.get("end_timestamp") is not None:
            end = time_field(path, line, obj, "end_timestamp", 1_000_000.0)
            if end < sent:
                raise fail(path, line, f"'end_timestamp' is before 'timestamp' ({end} < {sent} s)")
        lines.append(SessionLine(line, sent, str(session), texts[0], texts[1], end))
    return sorted(lines, key=lambda s: (s.sent_s, s.line))


@dataclass(slots=True)
class _Call:
    src: SessionLine
    prompt: tuple[Segment, ...]
    out: Segment
    deps: tuple[int, ...] = ()
    continues: bool = False  # True when it continues a parent (found from the text)
    dependents: list[int] = field(default_factory=list)


def _output_at(call: SessionLine, rest: str) -> int:
    """Where `call`'s output starts in `rest` (the text after its input), or -1."""
    if not call.output:
        return -1
    return rest.find(call.output, 0, _SEPARATOR_CHARS + len(call.output))


class _Builder:
    """Turns one file's lines into calls with prompts and dependencies (see the module docstring)."""

    def __init__(self, lines: list[SessionLine], bytes_per_token: float) -> None:
        self.bpt = bytes_per_token
        self.ids = TextSegments()
        self.cuts = PrefixCuts([s.input for s in lines])

    def pieces(self, text: str, lo: int, hi: int) -> tuple[Segment, ...]:
        if hi <= lo:
            return ()
        bounds = [lo, *self.cuts.cuts(text, lo, hi, math.ceil(KV_BLOCK_TOKENS * self.bpt)), hi]
        return tuple(
            self.ids.for_text(text[a:b], approx_tokens(text[a:b], self.bpt))
            for a, b in itertools.pairwise(bounds)
        )

    def output(self, line: SessionLine) -> Segment:
        return self.ids.fresh(approx_tokens(line.output, self.bpt))

    def session(self, lines: list[SessionLine]) -> list[_Call]:
        calls: list[_Call] = []
        for line in lines:
            call = self._continuation(line, calls)
            calls.append(call or self._fresh(line, calls))
        if not any(c.continues for c in calls):  # a log of new turns only: one chain
            calls = []
            for i, line in enumerate(lines):
                head = (*calls[-1].prompt, calls[-1].out) if calls else ()
                text = (*head, *self.pieces(line.input, 0, len(line.input)))
                calls.append(_Call(line, text, self.output(line), deps=(i - 1,) if i else ()))
        return calls

    def _continuation(self, line: SessionLine, calls: list[_Call]) -> _Call | None:
        # Longest input first (the latest on ties): the first that qualifies is the parent.
        order = sorted(range(len(calls)), key=lambda i: (-len(calls[i].src.input), -i))
        best, at = -1, -1
        for i in order:
            src = calls[i].src
            if len(src.input) > len(line.input) or not line.input.startswith(src.input):
                continue
            at = _output_at(src, line.input[len(src.input) :])
            if at >= 0:
                best = i
                break
        if best < 0:
            return None
        parent = calls[best]
        start = len(parent.src.input)
        after = start + at + len(parent.src.output)
        prompt = (
            *parent.prompt,
            *self.pieces(line.input, start, start + at),
            parent.out,
            *self.pieces(line.input, after, len(line.input)),
        )
        return _Call(line, prompt, self.output(line), deps=(best,), continues=True)

    def _fresh(self, line: SessionLine, calls: list[_Call]) -> _Call:
        base = max(
            (c for c in calls if line.input.startswith(c.src.input) and c.src.input),
            key=lambda c: len(c.src.input),
            default=None,
        )
        head = base.prompt if base is not None else ()
        start = len(base.src.input) if base is not None else 0
        return _Call(line, (*head, *self.pieces(line.input, start, len(line.input))), self.output(line))


def _timing_deps(calls: list[_Call], timer: CallTime) -> None:
    """Dependencies the text cannot show, from the log's times. A call that continues nobody (a new
    agent) waits for the latest call that had finished when it was sent. A call also joins the
    open ends (calls nobody had followed yet) that descend from its parent and had finished when
    it was sent: an orchestrator's next turn waits for the sub-agents it started."""
    followed: set[int] = set()
    ancestors: list[set[int]] = []
    for i, call in enumerate(calls):
        sent = call.src.sent_s
        done = [j for j in range(i) if calls[j].src.sent_s < sent and _end(calls[j], timer) <= sent]
        deps = list(call.deps)
        if not deps and done:
            deps.append(max(done, key=lambda j: (calls[j].src.sent_s, j)))
        deps += [j for j in done if j not in followed and j not in deps and deps and deps[0] in ancestors[j]]
        call.deps = tuple(sorted(deps))
        followed.update(call.deps)
        ancestors.append(set(call.deps).union(*(ancestors[j] for j in call.deps)))


def _end(call: _Call, timer: CallTime) -> float:
    src = call.src
    return src.end_s if src.end_s is not None else src.sent_s + timer.duration_s(call.out.tokens)


def load_sessions(
    path: str | Path,
    n_programs: int,
    seed: int = 0,
    *,
    limit: int | None = None,
    bytes_per_token: float = 4.0,
    decode_tok_s: float = 0.0,
    arrival: str = "trace",
    time_scale: float = 1.0,
) -> Workload:
    """A session log as a workload: one program per session, the first `n_programs` by start."""
    if bytes_per_token <= 0:
        raise ValueError(f"bytes_per_token must be > 0, got {bytes_per_token}")
    if decode_tok_s < 0:
        raise ValueError(f"decode_tok_s must be >= 0 (0 = derive from the log), got {decode_tok_s}")
    timing = TraceTiming.parse(arrival, time_scale)
    lines = parse_sessions(Path(path), limit)
    by_session: dict[str, list[SessionLine]] = {}
    for line in lines:
        by_session.setdefault(line.session, []).append(line)
    builder = _Builder(lines, bytes_per_token)
    built = {key: builder.session(group) for key, group in by_session.items()}
    pairs = [
        (cs[j].out.tokens, c.src.sent_s - cs[j].src.sent_s)
        for cs in built.values()
        for c in cs
        for j in c.deps
        if cs[j].src.end_s is None
    ]
    timer = CallTime.from_rate(decode_tok_s) if decode_tok_s > 0 else fit_call_time(pairs)
    sessions = []
    agents = 0
    for key, calls in built.items():
        _timing_deps(calls, timer)
        agents += sum(1 for c in calls if not c.deps)
        for i, call in enumerate(calls):
            for j in call.deps:
                calls[j].dependents.append(i)
        specs = []
        for i, call in enumerate(calls):
            gap = min(
                (max(0.0, calls[d].src.sent_s - _end(call, timer)) for d in call.dependents),
                default=None,
            )
            specs.append(
                CallSpec(
                    node=f"call-{i}",
                    prompt=call.prompt,
                    output_tokens=call.out.tokens,
                    output_seg_id=call.out.seg_id,
                    tool=None if gap is None else "user",
                    tool_latency_s=gap or 0.0,
                    deps=call.deps,
                )
            )
        sessions.append(TraceSession(f"session-{key}", calls[0].src.sent_s, tuple(specs), calls[0].src.line))
    params: dict[str, object] = {
        "path": str(path),
        "turns_read": len(lines),
        "continuations": sum(1 for cs in built.values() for c in cs if c.continues),
        "chains_started": agents,
        "call_fixed_s": timer.fixed_s,
        "call_per_token_s": timer.per_token_s,
    }
    return finish_workload(f"sessions:{path}", "sessions", sessions, n_programs, seed, timing, params)
