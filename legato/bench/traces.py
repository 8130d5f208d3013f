"""What every trace loader shares: reading logs, text prefixes as segments, timing and arrivals.

The loaders themselves are one module each in `legato.bench.workloads`: `mooncake` (`trace:PATH`,
block-hash traces), `sessions` (`sessions:PATH`, one OpenAI-chat call per line) and `chat_log`
(`chat:PATH`, one whole message list per session). This module holds what they have in common, so
each rule exists once:

* **Reading** (`read_rows`): JSON Lines, gzip-compressed when the name ends in `.gz`; blank lines
  skipped; every malformed line raises `ValueError("PATH:LINE: what is wrong")`.
* **Text as segments** (`TextSegments`): a prompt's new text becomes one or more `Segment`s. It is
  cut where it stops sharing a prefix with any other text of the file (`PrefixCuts`: the longest
  common prefix with each other text, found from neighbours in sorted order), and a piece's id is
  keyed by its content and length, so two prompts that start with the same system prompt share
  its KV exactly as far as their text agrees, and equal ids always mean equal content. Pieces
  shorter than one KV block (`KV_BLOCK_TOKENS`, the simulator's block size) are not cut out: a
  block-granular prefix cache cannot reuse a shorter shared run, and the cut would only add a
  rounding error to token counts.
* **Tool gaps from the log's pacing** (`fit_call_time`): a log that records only when each call
  was *sent* does not say when it finished. Every dependent call was sent after its predecessor's
  output was complete, so the loaders take the longest affine call duration (fixed latency + time
  per output token) that every such pair allows, and tool time is the rest of the interval. This
  is the least tool time the log allows, never a made-up one; where a log's fastest turn was
  very fast, it is close to the whole interval. `decode_tok_s > 0` replaces the fit by that decode
  rate. Logs that time calls or tools themselves (`chat:`, `sessions:` lines with
  `end_timestamp`) use those times instead.
* **Load** (`TraceTiming`, option `-p arrival=trace|burst|poisson:RATE`, `-p time_scale=X`):
  `trace` keeps each session's logged start (relative to the first kept one), `burst` starts every
  session at t=0, `poisson:RATE` draws starts from a Poisson process of RATE sessions/s (seeded);
  `time_scale` multiplies every time taken from the log (session starts and tool gaps; 0.5 replays
  the log twice as fast). Trace programs are marked `open_loop`, so their TCT counts from that
  arrival, including time spent waiting for a client slot. (With `legato bench --engine torch`,
  `-p time_scale` is the torch replay's own real-time scale and is not passed to the loader.)
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import gzip
import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from legato.cache.common_prefix import common_prefix
from legato.sim.workload import CallSpec, ProgramSpec, Segment, Workload

ARRIVAL_MODES = ("trace", "burst", "poisson:RATE")
KV_BLOCK_TOKENS = 16  # the simulator's KV block (SimConfig.block_size): the smallest reusable prefix


# --- reading ------------------------------------------------------------------------------------


def fail(path: Path, line: int, what: str) -> ValueError:
    return ValueError(f"{path}:{line}: {what}")


def read_rows(path: Path, limit: int | None) -> list[tuple[int, dict[str, object]]]:
    """The JSON objects of a JSON Lines file (gzip when it ends in .gz), with their line numbers."""
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be > 0, got {limit}")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                text = fh.read()
        else:
            text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read trace file {path}: {exc.strerror or exc}") from None
    except (EOFError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read trace file {path}: {exc}") from None
    rows: list[tuple[int, dict[str, object]]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if limit is not None and len(rows) >= limit:
            break
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise fail(path, number, f"not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise fail(path, number, f"expected a JSON object, got {type(obj).__name__}")
        rows.append((number, obj))
    if not rows:
        raise ValueError(f"{path}: no requests in the file")
    return rows


def int_field(path: Path, line: int, obj: dict[str, object], key: str, minimum: int) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(path, line, f"{key!r} must be an integer, got {value!r}")
    if value < minimum:
        raise fail(path, line, f"{key!r} must be >= {minimum}, got {value}")
    return value


def time_field(path: Path, line: int, obj: dict[str, object], key: str, scale: float) -> float:
    """A non-negative timestamp in seconds: a number in the file's unit (divided by `scale`), or
    an ISO-8601 date-time string as many logs write them (seconds since the epoch; without a
    zone, UTC). Only differences between timestamps matter to a replay."""
    value = obj.get(key)
    if isinstance(value, str):
        try:
            when = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise fail(
                path, line, f"{key!r} must be a number or an ISO-8601 date-time, got {value!r}"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        if when.timestamp() < 0:
            raise fail(path, line, f"{key!r} must not be before 1970, got {value!r}")
        value = when.timestamp() * scale
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise fail(path, line, f"{key!r} must be a non-negative number, got {value!r}")
    return float(value) / scale


def approx_tokens(text: str, bytes_per_token: float = 4.0) -> int:
    """Token count estimate: one token per `bytes_per_token` UTF-8 bytes, at least 1."""
    return max(1, math.ceil(len(text.encode("utf-8")) / bytes_per_token))


# --- text prefixes as segments ------------------------------------------------------------------


class PrefixCuts:
    """Where each of a set of texts stops sharing a prefix with some other text of the set.

    The texts are sorted once; the longest common prefix of two texts is the minimum of the
    neighbour-to-neighbour common prefixes between them, so the cut points of a text inside a
    window `(lo, hi)` are found by walking outwards while that running minimum stays above `lo`.
    Cuts are consistent: if two texts agree up to `k`, they have the same cuts below `k`.
    """

    def __init__(self, texts: Sequence[str]) -> None:
        self._sorted = sorted(set(texts))
        self._lcp = [common_prefix(a, b) for a, b in zip(self._sorted, self._sorted[1:], strict=False)]

    def cuts(self, text: str, lo: int, hi: int, min_piece: int = 1) -> list[int]:
        """Sorted cut points of `text` strictly inside `(lo, hi)` (`text` must be in the set),
        leaving out cuts that would make a piece shorter than `min_piece` characters."""
        i = bisect.bisect_left(self._sorted, text)
        if i >= len(self._sorted) or self._sorted[i] != text:
            raise KeyError("text not in the set")
        found: set[int] = set()
        for step in (-1, 1):
            run = len(text)
            j = i
            while 0 <= j + min(step, 0) < len(self._lcp):
                run = min(run, self._lcp[j + min(step, 0)])
                if run <= lo:
                    break
                if run < hi:
                    found.add(run)
                j += step
        kept, last = [], lo
        for cut in sorted(found):
            if cut - last >= min_piece:
                kept.append(cut)
                last = cut
        return kept


@dataclass(slots=True)
class TextSegments:
    """Segment ids for a workload built from text: pieces keyed by (content, tokens); fresh ids
    for content seen once (outputs, tool results) and for trace-provided block hashes."""

    next_id: int = 0
    by_key: dict[tuple[bytes, int], int] = field(default_factory=dict)
    by_hash: dict[tuple[int, int], int] = field(default_factory=dict)

    def fresh(self, tokens: int) -> Segment:
        self.next_id += 1
        return Segment(self.next_id - 1, tokens)

    def for_text(self, text: str, tokens: int) -> Segment:
        key = (hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest(), tokens)
        if key not in self.by_key:
            self.by_key[key] = self.fresh(tokens).seg_id
        return Segment(self.by_key[key], tokens)

    def for_hash(self, hash_id: int, tokens: int) -> Segment:
        key = (hash_id, tokens)
        if key not in self.by_hash:
            self.by_hash[key] = self.fresh(tokens).seg_id
        return Segment(self.by_hash[key], tokens)


# --- timing ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallTime:
    """A call's duration as the log allows it: `fixed_s + per_token_s * output tokens`."""

    fixed_s: float = 0.0
    per_token_s: float = 0.0

    def duration_s(self, output_tokens: int) -> float:
        return self.fixed_s + self.per_token_s * output_tokens

    def tool_gap_s(self, send_gap_s: float, output_tokens: int) -> float:
        """Tool/think time between a call and the next: the send interval minus the call."""
        return max(0.0, send_gap_s - self.duration_s(output_tokens))

    @classmethod
    def from_rate(cls, decode_tok_s: float) -> CallTime:
        return cls(0.0, 1.0 / decode_tok_s)


def fit_call_time(pairs: Sequence[tuple[int, float]]) -> CallTime:
    """The longest call durations consistent with a log of send times.

    Each `(output tokens, send gap s)` pair of a call and its dependent says the call finished
    within the gap: `fixed + per_token * tokens <= gap`. Of the affine models that satisfy every
    pair, take the one with the largest total duration (a linear program in two variables; its
    objective is concave in `per_token`, so a ternary search finds the optimum). This is the
    smallest tool time the log allows, so no gap is made up; the tightest pairs get 0.
    """
    if not pairs:
        return CallTime()
    if min(gap for _, gap in pairs) <= 0:
        return CallTime()
    total = sum(tokens for tokens, _ in pairs)

    def fixed(per_token: float) -> float:
        return min(gap - per_token * tokens for tokens, gap in pairs)

    lo, hi = 0.0, min((gap / tokens for tokens, gap in pairs if tokens > 0), default=0.0)
    for _ in range(100):  # ternary search to float precision on a concave function
        m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if len(pairs) * fixed(m1) + m1 * total < len(pairs) * fixed(m2) + m2 * total:
            lo = m1
        else:
            hi = m2
    return CallTime(max(0.0, fixed(lo)), lo)


@dataclass(frozen=True, slots=True)
class TraceTiming:
    """The load options every trace workload takes (see the module docstring)."""

    mode: str = "trace"  # trace | burst | poisson
    rate: float = 0.0  # sessions per second (poisson)
    time_scale: float = 1.0

    @classmethod
    def parse(cls, arrival: str, time_scale: float) -> TraceTiming:
        if not (time_scale > 0 and math.isfinite(time_scale)):
            raise ValueError(f"time_scale must be a positive number, got {time_scale}")
        mode, _, rate_text = arrival.partition(":")
        if mode in ("trace", "burst") and not rate_text:
            return cls(mode, 0.0, time_scale)
        if mode == "poisson":
            try:
                rate = float(rate_text)
            except ValueError:
                rate = math.nan
            if rate > 0 and math.isfinite(rate):
                return cls(mode, rate, time_scale)
            raise ValueError(f"arrival=poisson:RATE needs a rate > 0 (sessions per second), got {arrival!r}")
        raise ValueError(f"unknown arrival {arrival!r}; valid: {', '.join(ARRIVAL_MODES)}")

    def arrivals(self, logged_s: Sequence[float], seed: int) -> list[float]:
        """Each session's start, from its logged start (in the order given)."""
        if self.mode == "burst":
            return [0.0] * len(logged_s)
        if self.mode == "poisson":
            rng = random.Random(seed)
            out, now = [], 0.0
            for _ in logged_s:
                out.append(now)
                now += rng.expovariate(self.rate)
            return out
        first = min(logged_s, default=0.0)
        return [(t - first) * self.time_scale for t in logged_s]


@dataclass(frozen=True, slots=True)
class TraceSession:
    """One reconstructed session, before load options are applied."""

    key: str  # program id
    logged_start_s: float
    calls: tuple[CallSpec, ...]
    line: int  # first line of the session in the file (tie-break)


def finish_workload(
    name: str,
    kind: str,
    sessions: Sequence[TraceSession],
    n_programs: int,
    seed: int,
    timing: TraceTiming,
    params: dict[str, object],
) -> Workload:
    """The first `n_programs` sessions by logged start, with arrivals and time scale applied."""
    if n_programs <= 0:
        raise ValueError(f"programs must be > 0, got {n_programs}")
    kept = sorted(sessions, key=lambda s: (s.logged_start_s, s.line))[:n_programs]
    starts = timing.arrivals([s.logged_start_s for s in kept], seed)
    programs = []
    for session, start in zip(kept, starts, strict=True):
        calls = session.calls
        if timing.time_scale != 1.0:
            calls = tuple(
                dataclasses.replace(c, tool_latency_s=c.tool_latency_s * timing.time_scale) for c in calls
            )
        programs.append(
            ProgramSpec(
                program_id=session.key,
                tenant="default",
                arrival_s=start,
                calls=calls,
                kind=kind,
                open_loop=True,
            )
        )
    gaps = [c.tool_latency_s for p in programs for c in p.calls if c.tool is not None]
    stats: dict[str, object] = {
        "programs_available": len(sessions),
        "max_prompt_tokens": max((c.prompt_tokens for p in programs for c in p.calls), default=0),
        "tool_gaps": len(gaps),
        "zero_tool_gaps": sum(1 for g in gaps if g <= 0.0),
        "median_tool_gap_s": sorted(gaps)[len(gaps) // 2] if gaps else 0.0,
    }
    return Workload(name=name, programs=tuple(programs), params={**params, **stats})


def sequential_calls(
    prompts: Sequence[tuple[Segment, ...]], outputs: Sequence[Segment], gaps: Sequence[float], tool: str
) -> tuple[CallSpec, ...]:
    """A chain of calls: call i depends on call i-1, with tool step `gaps[i]` after it (none after
    the last)."""
    calls = []
    for i, (prompt, out) in enumerate(zip(prompts, outputs, strict=True)):
        last = i == len(prompts) - 1
        calls.append(
            CallSpec(
                node=f"turn-{i}",
                prompt=prompt,
                output_tokens=out.tokens,
                output_seg_id=out.seg_id,
                tool=None if last else tool,
                tool_latency_s=0.0 if last else gaps[i],
                deps=() if i == 0 else (i - 1,),
            )
        )
    return tuple(calls)
