"""`legato bench spec`: how many tokens each drafter gets accepted per verify step, on real text.

The mini-swe-agent trace (`miniswe_deepseek.jsonl.gz`) has the full text of real agent sessions.
For every assistant message, the program has seen every message before it; the drafter draws on
that (and, for the agent source, on outputs of earlier sessions), and the real output is replayed
with greedy verification semantics: a verify step drafts up to k tokens, accepts the longest
prefix that equals the real next tokens, and emits one more (the target's own token). Tokens per
verify step = output tokens / verify steps (the bonus token included, vLLM's "mean acceptance
length"); accepted per step excludes it.

Counting is in BPE tokens of a 32k vocabulary. No pretrained vocabulary ships in an installed
package (tiktoken downloads its files; transformers has none bundled), so one is trained with
`tokenizers` on half of the sessions (split by a hash of the session id) and the measurement uses
the other half; the trained tokenizer is cached under `.legato/spec/`. Messages are rendered in a
ChatML layout; an assistant output is its content plus its tool calls (name and JSON arguments)
and the end-of-message token.
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from legato.bench.spec_decode import DecodeConfig, run_decode_bench
from legato.spec.adaptive import check_draft_len
from legato.spec.context import AgentHistory, ProgramContext
from legato.spec.drafter import DRAFTER_NAMES, Drafter, make_drafter
from legato.spec.suffix_index import SuffixIndex

DEFAULT_TRACE = Path("../shared/traces/miniswe_deepseek.jsonl.gz")  # as laid out beside the repo
VOCAB_SIZE = 32_000
AGENT = "mini-swe-agent"
_START, _END = "<|im_start|>", "<|im_end|>"


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    messages: tuple[tuple[str, str], ...]  # (role, rendered text); assistant text is the output


@dataclass(slots=True)
class SpecResult:
    drafter: str
    draft_len: int
    adaptive: bool
    output_tokens: int = 0
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    accepted_by_position: list[int] = field(default_factory=list)  # accepted at draft position i
    drafted_by_position: list[int] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> float:
        return self.output_tokens / self.steps if self.steps else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokens_per_step"] = round(self.tokens_per_step, 4)
        d["accepted_per_step"] = round(self.accepted / self.steps, 4) if self.steps else 0.0
        d["drafted_per_step"] = round(self.drafted / self.steps, 4) if self.steps else 0.0
        d["acceptance_rate"] = round(self.accepted / self.drafted, 4) if self.drafted else 0.0
        return d


def render_output(msg: dict[str, Any]) -> str:
    text = str(msg.get("content") or "")
    for call in msg.get("tool_calls") or []:
        text += f'\n<tool_call>{{"name": "{call.get("name", "")}", "arguments": {call.get("arguments", "")}}}'
    return text + _END


def load_sessions(path: Path) -> list[Session]:
    """Sessions of the trace, messages rendered (a clear ValueError for a malformed file)."""
    if not path.is_file():
        raise ValueError(f"trace {path} not found")
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                obj = json.loads(line)
                msgs = []
                for m in obj["messages"]:
                    role = str(m["role"])
                    head = f"{_START}{role}\n"
                    if role == "assistant":
                        msgs.append(("prompt", head))
                        msgs.append(("assistant", render_output(m)))
                    else:
                        msgs.append(("prompt", head + str(m.get("content") or "") + _END + "\n"))
                out.append(Session(str(obj["session_id"]), tuple(msgs)))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not a session line ({exc})") from None
    return out


def split(sessions: Sequence[Session]) -> tuple[list[Session], list[Session]]:
    """(train, test) by a hash of the session id: deterministic, independent of file order."""
    train: list[Session] = []
    test: list[Session] = []
    for s in sorted(sessions, key=lambda s: s.session_id):
        h = hashlib.sha256(s.session_id.encode()).digest()[0]
        (train if h % 2 == 0 else test).append(s)
    return train, test


def load_tokenizer(train: Sequence[Session], cache_dir: Path) -> tuple[Any, Path]:
    """A byte-level BPE of VOCAB_SIZE trained on the train sessions (cached by their ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    key = hashlib.sha256(("\n".join(s.session_id for s in train) + f"|{VOCAB_SIZE}|v1").encode()).hexdigest()
    path = cache_dir / f"miniswe-bpe{VOCAB_SIZE // 1000}k-{key[:12]}.json"
    if path.is_file():
        return Tokenizer.from_file(str(path)), path
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[_START, _END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((text for s in train for _, text in s.messages), trainer=trainer)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return tok, path


def encode_session(tok: Any, s: Session) -> list[tuple[bool, list[int]]]:
    """(is_output, token ids) per message."""
    encs = tok.encode_batch([text for _, text in s.messages], add_special_tokens=False)
    return [(role == "assistant", list(e.ids)) for (role, _), e in zip(s.messages, encs, strict=True)]


@dataclass(slots=True)
class _Run:
    """One configuration being measured: its drafter, its context view and its counters."""

    drafter: Drafter
    ctx: ProgramContext
    res: SpecResult


def _verify_step(run: _Run, out: Sequence[int], p: int) -> int:
    """One verify step at output position p; returns how many tokens it emits."""
    res = run.res
    cap = run.ctx.draft_length.cap if res.adaptive else res.draft_len
    draft = run.drafter.propose(run.ctx, cap).tokens
    a = 0
    while a < len(draft) and p + a < len(out) and draft[a] == out[p + a]:
        a += 1
    run.ctx.draft_length.record(len(draft), a)
    res.steps += 1
    res.drafted += len(draft)
    res.accepted += a
    while len(res.drafted_by_position) < len(draft):
        res.drafted_by_position.append(0)
        res.accepted_by_position.append(0)
    for i in range(len(draft)):
        res.drafted_by_position[i] += 1
        res.accepted_by_position[i] += int(i < a)
    return min(a + 1, len(out) - p)


def measure_session(msgs: Sequence[tuple[bool, list[int]]], runs: Sequence[_Run]) -> None:
    """Replay one session under every configuration at once. They share one index of the
    program's text: the configuration furthest behind in the current output always steps next,
    so the index holds exactly the text that configuration has seen (nothing from the future)."""
    index = SuffixIndex()
    for run in runs:
        run.ctx.index = index
    for is_output, ids in msgs:
        if not is_output:
            index.extend(ids)
            continue
        base = len(index)
        heap = [(0, i) for i in range(len(runs))] if ids else []
        while heap:
            p, i = heapq.heappop(heap)
            if len(index) < base + p:
                index.extend(ids[len(index) - base : p])
            p += _verify_step(runs[i], ids, p)
            if p < len(ids):
                heapq.heappush(heap, (p, i))
            else:
                runs[i].res.output_tokens += len(ids)
        index.extend(ids[len(index) - base :])


def measure(
    sessions: Sequence[Sequence[tuple[bool, list[int]]]],
    history: AgentHistory,
    configs: Sequence[tuple[str, int, bool]],
) -> list[SpecResult]:
    """Every (drafter, draft length, adaptive) configuration over the sessions. The agent
    history (outputs of earlier sessions) is read, never written, so all see the same."""
    results = [SpecResult(d, k, adaptive) for d, k, adaptive in configs]
    for msgs in sessions:
        runs = [
            _Run(make_drafter(r.drafter), ProgramContext(AGENT, history, max_draft=r.draft_len), r)
            for r in results
        ]
        measure_session(msgs, runs)
    return results


@dataclass(frozen=True, slots=True)
class SpecBenchConfig:
    trace: Path = DEFAULT_TRACE
    drafters: tuple[str, ...] = ("suffix", "ngram")
    ablations: tuple[str, ...] = ("suffix-local", "suffix-agent")  # measured at the largest k only
    draft_lens: tuple[int, ...] = (1, 2, 4, 8, 16)
    adaptive: bool = True
    sessions: int = 16  # test sessions measured (0: all); the first by hashed id
    cache_dir: Path = Path(".legato") / "spec"
    decode: DecodeConfig | None = None  # also the torch-engine decode speed (spec_decode.py)

    def __post_init__(self) -> None:
        unknown = [d for d in (*self.drafters, *self.ablations) if d not in DRAFTER_NAMES]
        if unknown or not self.drafters:
            raise ValueError(
                f"unknown drafter {', '.join(unknown) or '(none)'}; valid: {', '.join(DRAFTER_NAMES)}"
            )
        if not self.draft_lens:
            raise ValueError("give at least one draft length")
        for k in self.draft_lens:
            check_draft_len(k)
            if k == 0:
                raise ValueError("draft lengths must be >= 1 (0 is no speculation: 1 token per step)")
        if self.sessions < 0:
            raise ValueError(f"--sessions must be >= 0, got {self.sessions}")


def run_spec_bench(cfg: SpecBenchConfig, log: Callable[[str], None]) -> dict[str, Any]:
    t0 = time.perf_counter()
    sessions = load_sessions(cfg.trace)
    train, test = split(sessions)
    tok, tok_path = load_tokenizer(train, cfg.cache_dir)
    log(f"tokenizer {tok_path} ({tok.get_vocab_size()} tokens), trained on {len(train)} sessions")
    picked = sorted(test, key=lambda s: hashlib.sha256(s.session_id.encode()).hexdigest())
    if cfg.sessions:
        picked = picked[: cfg.sessions]
    picked.sort(key=lambda s: s.session_id)
    encoded = [encode_session(tok, s) for s in picked]
    history = AgentHistory()
    outputs = [text for s in train for role, text in s.messages if role == "assistant"]
    for e in tok.encode_batch(outputs, add_special_tokens=False):
        history.add_output(AGENT, e.ids)
    log(f"measuring {len(picked)} of {len(test)} held-out sessions; {time.perf_counter() - t0:.1f}s")
    configs = [(d, k, False) for d in cfg.drafters for k in cfg.draft_lens]
    configs += [(d, k, False) for d in cfg.ablations for k in (max(cfg.draft_lens),)]
    if cfg.adaptive:
        configs += [(d, max(cfg.draft_lens), True) for d in cfg.drafters]
    results = [r.as_dict() for r in measure(encoded, history, configs)]
    for r in results:
        k = f"<={r['draft_len']} adaptive" if r["adaptive"] else str(r["draft_len"])
        log(f"{r['drafter']:13s} k={k:13s} {r['tokens_per_step']:.3f} tokens/step")
    decode = None
    if cfg.decode is not None:
        log("torch-engine decode speed (oracle target on the held-out sessions)")
        by_id = sorted(test, key=lambda s: hashlib.sha256(s.session_id.encode()).hexdigest())
        decode = run_decode_bench(
            tok,
            [encode_session(tok, s) for s in by_id],
            [encode_session(tok, s) for s in train],
            cfg.decode,
            log,
            {
                r["draft_len"]: r["tokens_per_step"]
                for r in results
                if r["drafter"] == cfg.decode.drafter and not r["adaptive"]
            },
        )
    return {
        "decode": decode,
        "trace": str(cfg.trace),
        "tokenizer": {
            "kind": "byte-level BPE (tokenizers)",
            "vocab_size": tok.get_vocab_size(),
            "path": str(tok_path),
        },
        "train_sessions": len(train),
        "test_sessions": [s.session_id for s in picked],
        "held_out_sessions": len(test),
        "output_tokens": sum(len(ids) for msgs in encoded for o, ids in msgs if o),
        "semantics": "greedy verification: accepted = longest matching prefix; "
        "tokens_per_step includes the bonus token",
        "seconds": round(time.perf_counter() - t0, 1),
        "results": results,
    }


def write_sim_table(report: dict[str, Any], path: Path, workload: str = "swe") -> None:
    """Store the fixed-length tokens-per-step of each drafter as the simulator's acceptance model
    for `workload` (legato/sim/data/spec_acceptance.json), with where it was measured."""
    data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"workloads": {}}
    per: dict[str, dict[str, float]] = {}
    for r in report["results"]:
        if not r["adaptive"] and r["drafter"] in ("suffix", "ngram"):
            per.setdefault(r["drafter"], {})[str(r["draft_len"])] = r["tokens_per_step"]
    trace = Path(report["trace"])
    data["workloads"][workload] = {
        "source": {
            "measured_by": "legato bench spec",
            "command": f"legato bench spec --sessions {len(report['test_sessions'])} "
            f"--draft-lens {','.join(sorted({k for d in per.values() for k in d}, key=int))} "
            "--sim-table legato/sim/data/spec_acceptance.json",
            "trace": trace.name,
            "trace_sha256": hashlib.sha256(trace.read_bytes()).hexdigest() if trace.is_file() else None,
            "tokenizer": f"byte-level BPE, {report['tokenizer']['vocab_size']} tokens, trained on "
            f"{report['train_sessions']} sessions of the trace",
            "sessions_measured": len(report["test_sessions"]),
            "output_tokens": report["output_tokens"],
            "semantics": report["semantics"],
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
        },
        "tokens_per_step": per,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def render(report: dict[str, Any]) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Drafted tokens accepted on {len(report['test_sessions'])} held-out sessions")
    for col in ("drafter", "k", "tokens/step", "accepted/step", "drafted/step", "accept rate"):
        table.add_column(col, justify="right" if col != "drafter" else "left")
    for r in report["results"]:
        k = f"≤{r['draft_len']} adaptive" if r["adaptive"] else str(r["draft_len"])
        table.add_row(
            r["drafter"],
            k,
            f"{r['tokens_per_step']:.3f}",
            f"{r['accepted_per_step']:.3f}",
            f"{r['drafted_per_step']:.2f}",
            f"{r['acceptance_rate']:.3f}",
        )
    tables = [table]
    if report.get("decode"):
        d = report["decode"]
        dt = Table(
            title=f"Torch-engine decode tok/s on {d.get('device', 'cpu')}, oracle target, "
            f"drafter {d['drafter']} (<= {d['max_draft']})"
        )
        cols = (
            "batch",
            "requests",
            "off tok/s",
            "on tok/s",
            "speed-up (spread)",
            "CPU-time speed-up (spread)",
        )
        for col in (*cols, "accepted/drafted", "bound"):
            dt.add_column(col, justify="right")
        for r in d["results"]:
            dt.add_row(
                str(r["batch"]),
                str(r["requests"]),
                f"{r['tok_s_off']:.1f}",
                f"{r['tok_s_on']:.1f}",
                f"x{r['speedup']:.2f} (x{r['speedup_min']:.2f}..x{r['speedup_max']:.2f})",
                f"x{r['cpu_speedup']:.2f} (x{r['cpu_speedup_min']:.2f}..x{r['cpu_speedup_max']:.2f})",
                f"{r['accepted']}/{r['drafted']}",
                f"x{r['bound']['speedup']:.2f}",
            )
        tables.append(dt)
    console = Console(width=120, record=True)
    with console.capture() as cap:
        for t in tables:
            console.print(t)
    return cap.get()
