"""Replay of recorded traces as workloads: Mooncake block traces and OpenAI-chat session logs.

**Mooncake traces** (`trace:PATH`, e.g. `../shared/traces/*.jsonl`): one request per line,
`{"timestamp": ms, "input_length": tokens, "output_length": tokens, "hash_ids": [int]}`, where
`hash_ids` names the prompt's 512-token blocks. Each hash id becomes one `Segment` (the last one
holds the remainder, `input_length - 512 * (n - 1)` tokens); a hash id is mapped into the
workload's own id space per (hash id, length), so a partial last block never aliases a full one.

The traces carry no session ids, so the default `mode="sessions"` reconstructs them from shared
leading hash ids: a request continues session S when the longest earlier prompt P that is a
prefix of its own (full 512-token blocks only) was sent by S alone and, anywhere in the trace, is
followed by at most one distinct block. A prefix that many requests branch from (a shared system
prompt) identifies nobody, so such a request starts a new session. On the shipped conversation
trace this turns 12,031 requests into 8,103 sessions (6,096 of them single-request).
`mode="requests"` instead makes each request its own single-call program arriving at its
timestamp (pure open-loop replay; prefix reuse still shows through the shared segments).

**Session logs** (`sessions:PATH`): one turn per line in the OpenAI-chat shape
`{"timestamp": µs, "input": text, "output": text, "session_id": id}`. One session = one program
whose turns are its calls, in timestamp order; session ids may be strings or integers and are
compared as strings. Tokens are approximated as one per `bytes_per_token` (4) UTF-8 bytes, at
least 1 — the usual rule of thumb for BPE tokenizers on English text. Turn k's prompt = every
earlier turn's input and output segments + its new input, so a turn shares its session's prefix.

**Think/tool time.** A reconstructed program runs its next turn after the previous call finishes
plus a `user` tool step. The gap in the file is measured from the previous call's *arrival*, and
its completion is not recorded, so completion is estimated as arrival + prompt_tokens /
`prefill_tok_s` (10,000) + output_tokens / `decode_tok_s` (50, one sequence's decode rate in a
busy batch); tool time = max(0, next arrival - estimated completion). The program's first call
arrives at the file's timestamp (`ProgramSpec.arrival_s`, open loop); later turns are paced by
the replay itself.

`limit` bounds the lines read; `n_programs` keeps the first programs by arrival. Malformed lines
raise `ValueError("PATH:LINE: what is wrong")`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from legato.sim.workload import CallSpec, ProgramSpec, Segment, Workload

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


@dataclass(frozen=True, slots=True)
class SessionTurn:
    line: int
    arrival_s: float
    session: str
    input_tokens: int
    output_tokens: int


@dataclass(slots=True)
class _Ids:
    """The workload's segment-id space: one counter, plus trace hash ids mapped into it."""

    next_id: int = 0
    by_hash: dict[tuple[int, int], int] = field(default_factory=dict)

    def fresh(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def for_hash(self, hash_id: int, tokens: int) -> int:
        key = (hash_id, tokens)
        if key not in self.by_hash:
            self.by_hash[key] = self.fresh()
        return self.by_hash[key]


def _fail(path: Path, line: int, what: str) -> ValueError:
    return ValueError(f"{path}:{line}: {what}")


def _read_objects(path: Path, limit: int | None) -> list[tuple[int, dict[str, object]]]:
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be > 0, got {limit}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read trace file {path}: {exc.strerror or exc}") from None
    rows: list[tuple[int, dict[str, object]]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if limit is not None and len(rows) >= limit:
            break
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise _fail(path, number, f"not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise _fail(path, number, f"expected a JSON object, got {type(obj).__name__}")
        rows.append((number, obj))
    if not rows:
        raise ValueError(f"{path}: no requests in the file")
    return rows


def _int_field(path: Path, line: int, obj: dict[str, object], key: str, minimum: int) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, line, f"{key!r} must be an integer, got {value!r}")
    if value < minimum:
        raise _fail(path, line, f"{key!r} must be >= {minimum}, got {value}")
    return value


def _time_field(path: Path, line: int, obj: dict[str, object], scale: float) -> float:
    value = obj.get("timestamp")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise _fail(path, line, f"'timestamp' must be a non-negative number, got {value!r}")
    return float(value) / scale


def parse_trace(path: Path, limit: int | None = None) -> list[TraceRequest]:
    """Parse a Mooncake trace file, validating every line (see the module docstring)."""
    requests = []
    for line, obj in _read_objects(path, limit):
        arrival = _time_field(path, line, obj, 1000.0)
        n_in = _int_field(path, line, obj, "input_length", 1)
        n_out = _int_field(path, line, obj, "output_length", 1)
        hashes = obj.get("hash_ids")
        if not isinstance(hashes, list) or not all(
            isinstance(h, int) and not isinstance(h, bool) for h in hashes
        ):
            raise _fail(path, line, f"'hash_ids' must be a list of integers, got {hashes!r}")
        want = math.ceil(n_in / BLOCK_TOKENS)
        if len(hashes) != want:
            raise _fail(
                path,
                line,
                f"'hash_ids' has {len(hashes)} entries but input_length {n_in} needs "
                f"ceil({n_in}/{BLOCK_TOKENS}) = {want}",
            )
        requests.append(TraceRequest(line, arrival, n_in, n_out, tuple(hashes)))
    return requests


def parse_sessions(path: Path, limit: int | None = None, bytes_per_token: float = 4.0) -> list[SessionTurn]:
    """Parse an OpenAI-chat session log (µs timestamps), approximating token counts."""
    if bytes_per_token <= 0:
        raise ValueError(f"bytes_per_token must be > 0, got {bytes_per_token}")
    turns = []
    for line, obj in _read_objects(path, limit):
        arrival = _time_field(path, line, obj, 1_000_000.0)
        texts = []
        for key in ("input", "output"):
            value = obj.get(key)
            if not isinstance(value, str):
                raise _fail(path, line, f"{key!r} must be a string, got {value!r}")
            texts.append(value)
        session = obj.get("session_id")
        if isinstance(session, bool) or not isinstance(session, str | int) or session == "":
            raise _fail(path, line, f"'session_id' must be a non-empty string or an integer, got {session!r}")
        n_in, n_out = (approx_tokens(t, bytes_per_token) for t in texts)
        turns.append(SessionTurn(line, arrival, str(session), n_in, n_out))
    return turns


def approx_tokens(text: str, bytes_per_token: float = 4.0) -> int:
    """Token count estimate: one token per `bytes_per_token` UTF-8 bytes, at least 1."""
    return max(1, math.ceil(len(text.encode("utf-8")) / bytes_per_token))


def estimated_gap_s(
    arrival_s: float,
    next_arrival_s: float,
    prompt_tokens: int,
    output_tokens: int,
    prefill_tok_s: float,
    decode_tok_s: float,
) -> float:
    """Think/tool time between two turns: next arrival minus the estimated completion."""
    finish = arrival_s + prompt_tokens / prefill_tok_s + output_tokens / decode_tok_s
    return max(0.0, next_arrival_s - finish)


def group_sessions(requests: list[TraceRequest]) -> list[list[TraceRequest]]:
    """Reconstruct sessions from shared leading hash ids (rule in the module docstring).

    Two passes over a trie of full-block prefixes (`(parent node, hash id) -> node`, so each
    request costs time linear in its length): the first counts, for every prefix, how many
    distinct blocks follow it anywhere in the trace; the second assigns requests in arrival
    order. A request continues the session that sent the deepest earlier prompt P on its path
    when P is followed by at most one distinct block in the whole trace (a conversation's
    history, not a system prompt that thousands of requests branch from) and only one session
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


def _trace_prompt(req: TraceRequest, ids: _Ids) -> tuple[Segment, ...]:
    last = req.input_tokens - BLOCK_TOKENS * (len(req.hash_ids) - 1)
    return tuple(
        Segment(ids.for_hash(h, tokens), tokens)
        for i, h in enumerate(req.hash_ids)
        for tokens in (last if i == len(req.hash_ids) - 1 else BLOCK_TOKENS,)
    )


def _sequential_calls(
    prompts: list[tuple[Segment, ...]],
    outputs: list[Segment],
    arrivals: list[float],
    prefill_tok_s: float,
    decode_tok_s: float,
) -> tuple[CallSpec, ...]:
    calls = []
    for i, (prompt, out) in enumerate(zip(prompts, outputs, strict=True)):
        last = i == len(prompts) - 1
        gap = 0.0
        if not last:
            gap = estimated_gap_s(
                arrivals[i],
                arrivals[i + 1],
                sum(s.tokens for s in prompt),
                out.tokens,
                prefill_tok_s,
                decode_tok_s,
            )
        calls.append(
            CallSpec(
                node=f"turn-{i}",
                prompt=prompt,
                output_tokens=out.tokens,
                output_seg_id=out.seg_id,
                tool=None if last else "user",
                tool_latency_s=gap,
                deps=() if i == 0 else (i - 1,),
            )
        )
    return tuple(calls)


def _check_rates(prefill_tok_s: float, decode_tok_s: float) -> None:
    if prefill_tok_s <= 0 or decode_tok_s <= 0:
        raise ValueError(f"prefill_tok_s and decode_tok_s must be > 0, got {prefill_tok_s}, {decode_tok_s}")


def _keep(n_programs: int) -> int:
    if n_programs <= 0:
        raise ValueError(f"programs must be > 0, got {n_programs}")
    return n_programs


def load_trace(
    path: str | Path,
    n_programs: int,
    *,
    mode: str = "sessions",
    limit: int | None = None,
    prefill_tok_s: float = 10_000.0,
    decode_tok_s: float = 50.0,
) -> Workload:
    """A Mooncake trace as a workload: the first `n_programs` programs of its first `limit` lines."""
    keep = _keep(n_programs)
    if mode not in TRACE_MODES:
        raise ValueError(f"unknown trace mode {mode!r}; valid: {', '.join(TRACE_MODES)}")
    _check_rates(prefill_tok_s, decode_tok_s)
    file = Path(path)
    requests = parse_trace(file, limit)
    ids = _Ids()
    if mode == "requests":
        groups = [[r] for r in sorted(requests, key=lambda r: (r.arrival_s, r.line))]
    else:
        groups = group_sessions(requests)
    programs = []
    for index, group in enumerate(groups[:keep]):
        prompts = [_trace_prompt(r, ids) for r in group]
        outputs = [Segment(ids.fresh(), r.output_tokens) for r in group]
        calls = _sequential_calls(prompts, outputs, [r.arrival_s for r in group], prefill_tok_s, decode_tok_s)
        programs.append(
            ProgramSpec(
                program_id=f"trace-{index}",
                tenant="default",
                arrival_s=group[0].arrival_s,
                calls=calls,
                kind="trace",
            )
        )
    params: dict[str, object] = {
        "path": str(path),
        "mode": mode,
        "limit": limit,
        "prefill_tok_s": prefill_tok_s,
        "decode_tok_s": decode_tok_s,
        "requests_read": len(requests),
        "programs_available": len(groups),
    }
    return Workload(name=f"trace:{path}", programs=tuple(programs), params=params)


def load_sessions(
    path: str | Path,
    n_programs: int,
    *,
    limit: int | None = None,
    bytes_per_token: float = 4.0,
    prefill_tok_s: float = 10_000.0,
    decode_tok_s: float = 50.0,
) -> Workload:
    """A session log as a workload: one program per session, the first `n_programs` by arrival."""
    keep = _keep(n_programs)
    _check_rates(prefill_tok_s, decode_tok_s)
    turns = parse_sessions(Path(path), limit, bytes_per_token)
    by_session: dict[str, list[SessionTurn]] = {}
    for turn in sorted(turns, key=lambda t: (t.arrival_s, t.line)):
        by_session.setdefault(turn.session, []).append(turn)
    ids = _Ids()
    programs = []
    for session, group in list(by_session.items())[:keep]:
        history: tuple[Segment, ...] = ()
        prompts, outputs = [], []
        for turn in group:
            prompt = (*history, Segment(ids.fresh(), turn.input_tokens))
            out = Segment(ids.fresh(), turn.output_tokens)
            prompts.append(prompt)
            outputs.append(out)
            history = (*prompt, out)
        calls = _sequential_calls(prompts, outputs, [t.arrival_s for t in group], prefill_tok_s, decode_tok_s)
        programs.append(
            ProgramSpec(
                program_id=f"session-{session}",
                tenant="default",
                arrival_s=group[0].arrival_s,
                calls=calls,
                kind="sessions",
            )
        )
    params: dict[str, object] = {
        "path": str(path),
        "limit": limit,
        "bytes_per_token": bytes_per_token,
        "prefill_tok_s": prefill_tok_s,
        "decode_tok_s": decode_tok_s,
        "turns_read": len(turns),
        "programs_available": len(by_session),
    }
    return Workload(name=f"sessions:{path}", programs=tuple(programs), params=params)
