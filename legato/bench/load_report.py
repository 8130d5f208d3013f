"""The report of `legato bench load`: latency percentiles, errors, and each instance's memory
over time (flat after warm-up or not)."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from legato.bench.ui_probe import UiProbe, ui_line


@dataclass(slots=True)
class LoadTally:
    """What the load clients measured (shared by every agent task of one run)."""

    started: float = 0.0  # time.monotonic() when the agents started
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: list[str] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    programs: int = 0
    retries: int = 0
    # POST /v1/runs (workflow mode): (seconds since the load started, latency) of each
    post_s: list[tuple[float, float]] = field(default_factory=list)
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # per instance URL
    ui: UiProbe = field(default_factory=UiProbe)  # the operator page's data endpoint, polled

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.error_examples) < 10:
            self.error_examples.append(f"{kind}: {detail[:200]}")


@dataclass(frozen=True, slots=True)
class LoadReport:
    config: dict[str, Any]
    elapsed_s: float
    requests_ok: int
    requests_failed: int
    errors: dict[str, int]
    error_examples: list[str]
    programs_completed: int
    retries: int  # requests resent after a closing keep-alive connection, event streams resumed
    requests_per_s: float
    completion_tokens_per_s: float
    cached_prompt_fraction: float | None  # None when answers carry no usage (workflow runs)
    latency_s: dict[str, float]
    ttft_s: dict[str, float]
    rss_mb: list[tuple[float, float]]
    rss_after_warmup_mb: float | None
    rss_end_mb: float | None
    rss_growth_after_warmup: float | None
    memory_flat: bool | None
    post_runs_s: dict[str, float] = field(default_factory=dict)  # POST /v1/runs (workflow mode)
    post_runs_warm_s: dict[str, float] = field(default_factory=dict)  # those sent after warm-up
    post_runs_by_window: list[dict[str, float]] = field(default_factory=list)  # per POST_WINDOW_S
    instances: list[dict[str, Any]] = field(default_factory=list)  # per URL: its memory figures
    ui_snapshot: dict[str, Any] | None = None  # GET /ui/api/snapshot times (ui_probe)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        lat, ttft = self.latency_s, self.ttft_s
        lines = [
            f"duration            {self.elapsed_s:.1f} s, {self.config['runs']} concurrent "
            f"{'agents' if self.config['mode'] == 'proxy' else 'workflow runs'}, "
            f"{self.config['turns']} LLM calls/program"
            + (f", started over {self.config['ramp_up_s']:g} s" if self.config.get("ramp_up_s") else ""),
            f"requests            ok {self.requests_ok}, failed {self.requests_failed} {self.errors or ''}",
            f"programs completed  {self.programs_completed}"
            + (f" (connection retries / stream resumes: {self.retries})" if self.retries else ""),
            f"throughput          {self.requests_per_s:.1f} req/s, "
            f"{self.completion_tokens_per_s:.0f} tokens/s",
            "cached prompt       "
            + (
                f"{self.cached_prompt_fraction:.1%} of prompt tokens"
                if self.cached_prompt_fraction is not None
                else "n/a (not reported to this client; see the server's /metrics)"
            ),
            f"latency (s)         p50 {lat['p50']:.3f}  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}  "
            f"max {lat['max']:.3f}",
            f"time to 1st token   p50 {ttft['p50']:.3f}  p90 {ttft['p90']:.3f}  p99 {ttft['p99']:.3f}",
        ]
        if self.post_runs_s:
            for label, post in (("", self.post_runs_s), (" after warm-up", self.post_runs_warm_s)):
                lines.append(
                    f"POST /v1/runs (s){label:14} p50 {post['p50']:.3f}  p90 {post['p90']:.3f}  "
                    f"p99 {post['p99']:.3f}  max {post['max']:.3f}  ({post['count']:.0f} runs)"
                )
        for inst in self.instances if len(self.instances) > 1 else []:  # each instance's memory
            flat = {None: "n/a", True: "flat", False: "GROWING"}[inst["memory_flat"]]
            series = ", ".join(f"{t:.0f}s:{mb:.0f}" for t, mb in inst["rss_mb"])
            lines.append(f"RSS {inst['url']} (MB) {series}: {flat} ({inst['growth'] or 0:+.1%})")
        if self.rss_mb and len(self.instances) < 2:
            series = ", ".join(f"{t:.0f}s:{mb:.0f}" for t, mb in self.rss_mb)
            lines.append(f"server RSS (MB)     {series}")
            if self.rss_growth_after_warmup is not None:
                verdict = "flat" if self.memory_flat else "GROWING"
                lines.append(
                    f"memory after warm-up {self.rss_after_warmup_mb:.0f} -> {self.rss_end_mb:.0f} MB "
                    f"({self.rss_growth_after_warmup:+.1%}): {verdict}"
                )
        ui = ui_line(self.ui_snapshot)
        if ui is not None:
            lines.append(ui)
        for example in self.error_examples:
            lines.append(f"  error: {example}")
        return "\n".join(lines)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p90": math.nan, "p99": math.nan, "max": math.nan, "mean": math.nan}
    xs = sorted(values)

    def pick(q: float) -> float:
        return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]

    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": xs[-1], "mean": sum(xs) / len(xs)}


def _memory(series: list[tuple[float, int]], warmup: float, tolerance: float) -> dict[str, Any]:
    """One instance's RSS series and whether it grew less than `tolerance` after warm-up."""
    after = [rss for t, rss in series if t >= warmup]
    warm = after[0] if after else None
    end = series[-1][1] if series else None
    growth = (end - warm) / warm if warm and end is not None else None
    return {
        "rss_mb": [(round(t, 1), round(rss / 2**20, 1)) for t, rss in series],
        "warm_mb": warm / 2**20 if warm else None,
        "end_mb": end / 2**20 if end is not None else None,
        "growth": growth,
        "memory_flat": None if growth is None else growth < tolerance,
    }


def _posts(posts: list[tuple[float, float]], since: float) -> dict[str, float]:
    """Percentiles (and the count) of the POSTs sent at or after `since` s into the load; the
    first ones race every agent's first connection and submission at once."""
    if not posts:
        return {}
    latencies = [seconds for at, seconds in posts if at >= since]
    return {**percentiles(latencies), "count": len(latencies)}


POST_WINDOW_S = 10.0  # the width of the report's windows of POST latencies (the shape over time)


def _posts_by_window(posts: list[tuple[float, float]]) -> list[dict[str, float]]:
    """The POSTs' percentiles per window of `POST_WINDOW_S` by send time: where the tail lives."""
    windows: dict[int, list[tuple[float, float]]] = {}
    for at, seconds in posts:
        windows.setdefault(int(at // POST_WINDOW_S), []).append((at, seconds))
    return [{"from_s": k * POST_WINDOW_S, **_posts(windows[k], 0.0)} for k in sorted(windows)]


def build_report(
    config: dict[str, Any],
    urls: tuple[str, ...],
    warmup: float,
    tolerance: float,
    tally: LoadTally,
    elapsed: float,
) -> LoadReport:
    instances = [{"url": url, **_memory(tally.rss.get(url, []), warmup, tolerance)} for url in urls]
    first = instances[0]
    failed = sum(tally.errors.values())
    return LoadReport(
        config=config,
        elapsed_s=elapsed,
        requests_ok=tally.ok,
        requests_failed=failed,
        errors=dict(tally.errors),
        error_examples=tally.error_examples,
        programs_completed=tally.programs,
        retries=tally.retries,
        requests_per_s=tally.ok / elapsed if elapsed > 0 else 0.0,
        completion_tokens_per_s=tally.completion_tokens / elapsed if elapsed > 0 else 0.0,
        cached_prompt_fraction=tally.cached_tokens / tally.prompt_tokens if tally.prompt_tokens else None,
        latency_s=percentiles(tally.latency_s),
        ttft_s=percentiles(tally.ttft_s),
        rss_mb=first["rss_mb"],
        rss_after_warmup_mb=first["warm_mb"],
        rss_end_mb=first["end_mb"],
        rss_growth_after_warmup=first["growth"],
        memory_flat=all(i["memory_flat"] for i in instances) if first["growth"] is not None else None,
        post_runs_s=_posts(tally.post_s, 0.0),
        post_runs_warm_s=_posts(tally.post_s, warmup),
        post_runs_by_window=_posts_by_window(tally.post_s),
        instances=instances,
        ui_snapshot=tally.ui.summary(percentiles),
    )


def write_report(report: LoadReport, path: Path) -> None:
    path.write_text(report.to_json())
