"""`trace:PATH`: replay of a Mooncake block trace (e.g. `../shared/traces/mooncake_*.jsonl`).

One request per line, `{"timestamp": ms, "input_length": tokens, "output_length": tokens,
"hash_ids": [int]}`, where `hash_ids` names the prompt's 512-token blocks. Each hash id becomes
one `Segment` (the last one holds the remainder, `input_length - 512 * (n - 1)` tokens); a hash id
is mapped into the workload's own id space per (hash id, length), so a partial last block never
aliases a full one.

The traces carry no session ids, so the default `mode="sessions"` reconstructs them from shared
leading hash ids: a request continues session S when the longest earlier prompt P that is a
prefix of its own (full 512-token blocks only) was sent by S alone and, anywhere in the trace, is
followed by at most one distinct block. A prefix that many requests branch from (a shared system
prompt) identifies nobody, so such a request starts a new session. On the shipped conversation
trace this turns 12,031 requests into 8,103 sessions (6,096 of them single-request); a turn's
prompt then extends its predecessor's by the new blocks only (checked in the tests: every
continuation's prompt starts with every full block of the previous one). `mode="requests"`
instead makes each request its own single-call program (pure open-loop replay; prefix reuse still
shows through the shared segments).

Tool/think time between a session's turns is the send interval minus the turn's duration, the
longest the trace allows (`legato.bench.traces.fit_call_time`), or at `decode_tok_s` when given.
Load options (`arrival`, `time_scale`) as for every trace workload. `limit` bounds the lines
read; `programs` keeps the first sessions by start.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

from legato.bench.traces import (
    CallTime,
    TextSegments,
    TraceSession,
    TraceTiming,
    fail,
    finish_workload,
    fit_call_time,
    int_field,
    read_rows,
    sequential_calls,
    time_field,
)
from legato.sim.workload import Segment, Workload

BLOCK_TOKENS = 512
_AMBIGUOUS = -1
TRACE_MODES = ("sessions", "requests")


@dataclass(frozen=True, slots=True)
class TraceRequest:
    line: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...]


def parse_trace(path: Path, limit: int | None = None) -> list[TraceRequest]:
    """Parse a Mooncake trace file, validating every line (see the module docstring)."""
    requests = []
    for line, obj in read_rows(path, limit):
        arrival = time_field(path, line, obj, "timestamp", 1000.0)
        n_in = int_field(path, line, obj, "input_length", 1)
        n_out = int_field(path, line, obj, "output_length", 1)
        hashes = obj.get("hash_ids")
        if not isinstance(hashes, list) or not all(
            isinstance(h, int) and not isinstance(h, bool) for h in hashes
        ):
            raise fail(path, line, f"'hash_ids' must be a list of integers, got {hashes!r}")
        want = math.ceil(n_in / BLOCK_TOKENS)
        if len(hashes) != want:
            raise fail(
                path,
                line,
                f"'hash_ids' has {len(hashes)} entries but input_length {n_in} needs "
                f"ceil({n_in}/{BLOCK_TOKENS}) = {want}",
            )
        requests.append(TraceRequest(line, arrival, n_in, n_out, tuple(hashes)))
    return requests


def group_sessions(requests: list[TraceRequest]) -> list[list[TraceRequest]]:
    """Reconstruct sessions from shared leading hash ids (rule in the module docstring).

    Two passes over a trie of full-block prefixes (`(parent node, hash id) -> node`, so each
    request costs time linear in its length): the first counts, for every prefix, how many
    distinct blocks follow it anywhere in the trace; the second assigns requests in arrival
    order. A request continues the session that sent the deepest earlier prompt P on its path
    when P is followed by at most one distinct block in the whole trace and only one session
    sent P.
    """
    ordered = sorted(requests, key=lambda r: (r.arrival_s, r.line))
    trie: dict[tuple[int, int], int] = {}
    paths: list[list[int]] = []
    for req in ordered:
        node, path = 0, []
        for hash_id in req.hash_ids[: req.input_tokens // BLOCK_TOKENS]:
            node = trie.setdefault((node, hash_id), len(trie) + 1)
            path.append(node)
        paths.append(path)
    branches: dict[int, int] = {}  # node -> number of distinct blocks that follow it
    for parent, _ in trie:
        branches[parent] = branches.get(parent, 0) + 1
    sender: dict[int, int] = {}  # prompt end node -> session index, or _AMBIGUOUS
    sessions: list[list[TraceRequest]] = []
    for req, path in zip(ordered, paths, strict=True):
        match = next((sender[n] for n in reversed(path) if n in sender and branches.get(n, 0) <= 1), None)
        if match is None or match == _AMBIGUOUS:
            sessions.append([req])
            session = len(sessions) - 1
        else:
            sessions[match].append(req)
            session = match
        if path:
            end = path[-1]
            sender[end] = session if sender.get(end, session) == session else _AMBIGUOUS
    return sessions


def _prompt(req: TraceRequest, ids: TextSegments) -> tuple[Segment, ...]:
    last = req.input_tokens - BLOCK_TOKENS * (len(req.hash_ids) - 1)
    return tuple(
        ids.for_hash(h, last if i == len(req.hash_ids) - 1 else BLOCK_TOKENS)
        for i, h in enumerate(req.hash_ids)
    )


def load_trace(
    path: str | Path,
    n_programs: int,
    seed: int = 0,
    *,
    mode: str = "sessions",
    limit: int | None = None,
    decode_tok_s: float = 0.0,
    arrival: str = "trace",
    time_scale: float = 1.0,
) -> Workload:
    """A Mooncake trace as a workload: the first `n_programs` sessions of its first `limit` lines."""
    if mode not in TRACE_MODES:
        raise ValueError(f"unknown trace mode {mode!r}; valid: {', '.join(TRACE_MODES)}")
    if decode_tok_s < 0:
        raise ValueError(f"decode_tok_s must be >= 0 (0 = derive from the trace), got {decode_tok_s}")
    timing = TraceTiming.parse(arrival, time_scale)
    requests = parse_trace(Path(path), limit)
    if mode == "requests":
        groups = [[r] for r in sorted(requests, key=lambda r: (r.arrival_s, r.line))]
    else:
        groups = group_sessions(requests)
    pairs = [(a.output_tokens, b.arrival_s - a.arrival_s) for g in groups for a, b in itertools.pairwise(g)]
    timer = CallTime.from_rate(decode_tok_s) if decode_tok_s > 0 else fit_call_time(pairs)
    ids = TextSegments()
    sessions = []
    for index, group in enumerate(groups):
        prompts = [_prompt(r, ids) for r in group]
        outputs = [ids.fresh(r.output_tokens) for r in group]
        gaps = [
            timer.tool_gap_s(b.arrival_s - a.arrival_s, a.output_tokens) for a, b in itertools.pairwise(group)
        ]
        calls = sequential_calls(prompts, outputs, gaps, "user")
        sessions.append(TraceSession(f"trace-{index}", group[0].arrival_s, calls, group[0].line))
    params: dict[str, object] = {
        "path": str(path),
        "requests_read": len(requests),
        "call_fixed_s": timer.fixed_s,
        "call_per_token_s": timer.per_token_s,
    }
    return finish_workload(f"trace:{path}", "trace", sessions, n_programs, seed, timing, params)
