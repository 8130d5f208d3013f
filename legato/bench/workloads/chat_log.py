"""`chat:PATH`: replay of agent sessions logged as OpenAI-chat message lists (gzip or plain JSONL).

Line shape (e.g. `../shared/traces/miniswe_deepseek.jsonl.gz`, mini-swe-agent on SWE-bench):
`{"session_id", "messages": [...]}`; each message has `role` and `content`; assistant messages
carry `timestamp` (s, or an ISO-8601 date-time) and `usage` (`prompt_tokens`,
`completion_tokens`), tool messages a `timestamp`. One session = one program; the n-th LLM call
is the n-th assistant message:

* **Prompt** = every message before it. So call n's prompt is call n-1's prompt, call n-1's output
  (the segment the engine holds after decoding it) and the messages after that output (tool
  results, user turns) as one new segment; calls of a session form one chain.
* **Tokens** come from the provider's `usage` fields, not from the text: no pretrained vocabulary of
  the logged model ships with the installed packages and none can be downloaded. Call n's new
  segment has `prompt_tokens[n] - prompt_tokens[n-1] - completion_tokens[n-1]` tokens (at least
  1; `params["usage_gaps"]` counts where that was below 1), so every prompt's length equals the
  logged `usage.prompt_tokens`. The first prompt (system + task) is cut into pieces where its text
  stops sharing a prefix with other sessions' first prompts (`legato.bench.traces.PrefixCuts`),
  so sessions share the real common prefix; a shared piece gets `characters x` the file's own
  tokens per character (sum of first prompts' `prompt_tokens` / their characters, a function of
  the text, so equal pieces have equal lengths) and the last, private piece the rest of
  `prompt_tokens[0]`.
* **Tool time** after call n is the latest timestamp among the messages between assistant n and
  n+1 minus assistant n's timestamp (the log's own tool time; 0 and counted in
  `params["untimed_gaps"]` when none is timed). The last call has no tool step.
* **Start**: a session's logged start is its first assistant message's timestamp.

On the shipped file: 122 sessions, 9,767 calls; its first two sessions have 104 and 74 calls, and
the largest prompt is 85,156 tokens, as in its `usage`. `limit` bounds the sessions read;
`programs` keeps the first by start; `arrival` and `time_scale` as for every trace workload.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

from legato.bench.traces import (
    KV_BLOCK_TOKENS,
    PrefixCuts,
    TextSegments,
    TraceSession,
    TraceTiming,
    fail,
    finish_workload,
    int_field,
    read_rows,
    sequential_calls,
    time_field,
)
from legato.sim.workload import Segment, Workload

# OpenAI's roles ("developer" is its newer name for "system", "function" the older tool result),
# and mini-swe-agent's "exit"
ROLES = ("system", "developer", "user", "assistant", "tool", "function", "exit")


@dataclass(frozen=True, slots=True)
class ChatCall:
    sent_s: float  # the assistant message's timestamp
    prompt_tokens: int
    completion_tokens: int
    tool_done_s: float | None  # latest timestamp among the messages before the next call


@dataclass(frozen=True, slots=True)
class ChatSession:
    line: int
    session_id: str
    first_prompt: str  # the messages before the first assistant message, rendered
    calls: tuple[ChatCall, ...]


def _render(messages: list[dict[str, object]]) -> str:
    return "".join(f"<|{m.get('role')}|>{m.get('content') or ''}\n" for m in messages)


def _session(path: Path, line: int, obj: dict[str, object]) -> ChatSession:
    sid = obj.get("session_id")
    if isinstance(sid, bool) or not isinstance(sid, str | int) or sid == "":
        raise fail(path, line, f"'session_id' must be a non-empty string or an integer, got {sid!r}")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise fail(path, line, "'messages' must be a list of objects")
    first: str | None = None
    calls: list[ChatCall] = []
    pending: tuple[float, int, int] | None = None  # the last assistant's (time, usage)
    done: float | None = None
    for k, msg in enumerate(messages):
        role = msg.get("role")
        if role not in ROLES:
            raise fail(path, line, f"message {k}: 'role' must be one of {', '.join(ROLES)}, got {role!r}")
        if role != "assistant":
            if pending is not None and msg.get("timestamp") is not None:
                at = time_field(path, line, msg, "timestamp", 1.0)
                done = at if done is None else max(done, at)
            continue
        if first is None:
            first = _render(messages[:k])
        usage = msg.get("usage")
        if not isinstance(usage, dict):
            raise fail(path, line, f"message {k}: an assistant message needs a 'usage' object")
        sent = time_field(path, line, msg, "timestamp", 1.0)
        n_in = int_field(path, line, usage, "prompt_tokens", 1)
        n_out = int_field(path, line, usage, "completion_tokens", 0)
        if pending is not None:
            calls.append(ChatCall(*pending, done))
        pending, done = (sent, n_in, n_out), None
    if pending is None or first is None:
        raise fail(path, line, "a session needs at least one assistant message")
    calls.append(ChatCall(*pending, None))
    return ChatSession(line, str(sid), first, tuple(calls))


def parse_chat(path: Path, limit: int | None = None) -> list[ChatSession]:
    """Parse a chat-session log, validating every line."""
    return [_session(path, line, obj) for line, obj in read_rows(path, limit)]


def _first_prompt(
    s: ChatSession, cuts: PrefixCuts, per_char: float, ids: TextSegments
) -> tuple[Segment, ...]:
    text = s.first_prompt
    bounds = [0, *cuts.cuts(text, 0, len(text), math.ceil(KV_BLOCK_TOKENS / per_char)), len(text)]
    shared = [text[a:b] for a, b in itertools.pairwise(bounds[:-1])]
    sizes = [max(1, round(len(piece) * per_char)) for piece in shared]
    last = max(1, s.calls[0].prompt_tokens - sum(sizes))
    pieces = [*zip(shared, sizes, strict=True), (text[bounds[-2] :], last)]
    return tuple(ids.for_text(piece, tokens) for piece, tokens in pieces)


def load_chat(
    path: str | Path,
    n_programs: int,
    seed: int = 0,
    *,
    limit: int | None = None,
    arrival: str = "trace",
    time_scale: float = 1.0,
) -> Workload:
    """A chat-session log as a workload: one program per session, the first `n_programs` by start."""
    timing = TraceTiming.parse(arrival, time_scale)
    parsed = parse_chat(Path(path), limit)
    cuts = PrefixCuts([s.first_prompt for s in parsed])
    chars = sum(len(s.first_prompt) for s in parsed)
    per_char = sum(s.calls[0].prompt_tokens for s in parsed) / max(1, chars)
    ids = TextSegments()
    sessions = []
    usage_gaps = untimed = 0
    for s in parsed:
        prompt = _first_prompt(s, cuts, per_char, ids)
        prompts: list[tuple[Segment, ...]] = []
        outputs: list[Segment] = []
        gaps: list[float] = []
        for n, call in enumerate(s.calls):
            if n:
                prev = s.calls[n - 1]
                new = call.prompt_tokens - prev.prompt_tokens - prev.completion_tokens
                usage_gaps += new < 1
                prompt = (*prompts[-1], outputs[-1], ids.fresh(max(1, new)))
                if prev.tool_done_s is None:
                    untimed += 1
                gaps.append(max(0.0, (prev.tool_done_s or prev.sent_s) - prev.sent_s))
            prompts.append(prompt)
            outputs.append(ids.fresh(max(1, call.completion_tokens)))
        calls = sequential_calls(prompts, outputs, gaps, "tool")
        sessions.append(TraceSession(f"chat-{s.session_id}", s.calls[0].sent_s, calls, s.line))
    params: dict[str, object] = {
        "path": str(path),
        "calls_read": sum(len(s.calls) for s in parsed),
        "usage_gaps": usage_gaps,
        "untimed_gaps": untimed,
        "tokens_per_char": round(per_char, 4),
    }
    return finish_workload(f"chat:{path}", "chat-log", sessions, n_programs, seed, timing, params)
