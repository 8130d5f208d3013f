"""Bench reports: the JSON document (byte-identical for the same seed) and the rich table.

The JSON has the shape the bench issue fixes: top level `workload`, `engine`, `model`, `gpu`,
`seed`, `programs`, `concurrency` (plus `replicas`, `tiers`, `workload_params`, `llm_calls`,
`policy_order`, and `sweep` when one was run), and one object of metrics per policy under
`policies`. Reproducibility is the point of the document, so it holds no timestamps or wall
times, keys are sorted and floats are rounded to `FLOAT_DIGITS` decimals (the last bits of a sum
must not make two runs of the same seed differ).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from legato.bench.metrics import PolicyMetrics

FLOAT_DIGITS = 6


def rounded(value: Any) -> Any:
    """`value` with every float rounded to FLOAT_DIGITS decimals (recursively, -0.0 -> 0.0)."""
    if isinstance(value, float):
        return round(value, FLOAT_DIGITS) + 0.0
    if isinstance(value, Mapping):
        return {str(k): rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v) for v in value]
    return value


def metrics_dict(metrics: PolicyMetrics) -> dict[str, Any]:
    """One policy's JSON object."""
    row: dict[str, Any] = rounded(dataclasses.asdict(metrics))
    return row


def build_report(
    *,
    workload: str,
    engine: str,
    model: str,
    gpu: str,
    seed: int,
    programs: int,
    llm_calls: int,
    concurrency: int,
    replicas: int,
    tiers: Sequence[str],
    workload_params: Mapping[str, object],
    policies: Mapping[str, PolicyMetrics],
    sweep: Mapping[int, Mapping[str, PolicyMetrics]] | None = None,
) -> dict[str, Any]:
    """The report document; `policies` in the order given (the first is the ratio baseline)."""
    report: dict[str, Any] = {
        "workload": workload,
        "engine": engine,
        "model": model,
        "gpu": gpu,
        "seed": seed,
        "programs": programs,
        "llm_calls": llm_calls,
        "concurrency": concurrency,
        "replicas": replicas,
        "tiers": list(tiers),
        "workload_params": rounded(dict(workload_params)),
        "policy_order": list(policies),
        "policies": {name: metrics_dict(m) for name, m in policies.items()},
    }
    if sweep:
        report["sweep"] = {
            "param": "concurrency",
            "points": [
                {"concurrency": value, "policies": {name: metrics_dict(m) for name, m in point.items()}}
                for value, point in sorted(sweep.items())
            ],
        }
    return report


def report_json(report: Mapping[str, Any]) -> str:
    """The canonical text of a report: sorted keys, rounded floats, two-space indent."""
    return json.dumps(rounded(report), sort_keys=True, indent=2, allow_nan=False) + "\n"


def write_json(report: Mapping[str, Any], path: str | Path) -> None:
    Path(path).write_text(report_json(report), encoding="utf-8")


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}×" if base > 0 else "–"


def render_table(report: Mapping[str, Any]) -> Table:
    """One row per policy with the key metrics and ratios against the first policy."""
    order: list[str] = list(report.get("policy_order") or report["policies"])
    rows = report["policies"]
    base = rows[order[0]]
    title = (
        f"{report['workload']} · {report['programs']} programs · concurrency {report['concurrency']} · "
        f"{report['engine']} {report['gpu']} {report['model']} ×{report['replicas']}"
    )
    table = Table(title=title)
    for header in (
        "policy",
        "mean TCT s",
        "p50 s",
        "p99 s",
        "steps/min",
        "prefill Mtok",
        "hit %",
        "preempt",
        "pauses",
        "busy %",
        "Jain",
        "steps/min ×",
        "TCT ×",
    ):
        table.add_column(header, justify="left" if header == "policy" else "right")
    for name in order:
        m = rows[name]
        table.add_row(
            name,
            f"{m['mean_tct_s']:.1f}",
            f"{m['p50_tct_s']:.1f}",
            f"{m['p99_tct_s']:.1f}",
            f"{m['steps_per_min']:.1f}",
            f"{m['prefill_tokens_computed'] / 1e6:.1f}",
            f"{100 * m['prefix_hit_rate']:.1f}",
            str(m["preemptions"]),
            str(m["pauses"]),
            f"{100 * m['engine_busy_frac']:.1f}",
            f"{m['jain_index']:.3f}",
            _ratio(m["steps_per_min"], base["steps_per_min"]),
            _ratio(m["mean_tct_s"], base["mean_tct_s"]),
        )
    notes = [_predictor_note(name, rows[name]) for name in order]
    notes.append(_bound_note(report.get("kv_bound"), order[0], base["steps_per_min"]))
    caption = "\n".join(n for n in notes if n)
    if caption:
        table.caption = caption
    return table


def _bound_note(bound: Mapping[str, Any] | None, base_name: str, base_steps: float) -> str:
    """The ceiling any policy with KV on the device can reach (`legato bench bound`)."""
    if not bound or not base_steps:
        return ""
    ceiling = bound["steps_per_min"]
    return (
        f"bound: no policy keeping KV on the device exceeds {ceiling:.1f} steps/min "
        f"({ceiling / base_steps:.2f}× {base_name}; `legato bench bound`)"
    )


def _predictor_note(name: str, metrics: Mapping[str, Any]) -> str:
    """A line on a policy's reuse-predictor accuracy, for policies that report one."""
    extra = metrics.get("extra") or {}
    samples = extra.get("predictor_samples", 0.0)
    if not samples:
        return ""
    return (
        f"{name} reuse predictor: median |error| {extra['predictor_median_abs_err_s']:.2f} s, "
        f"{100 * extra['predictor_within_2x']:.1f}% within 2x of the actual gap to the next call "
        f"({int(samples)} tool gaps)"
    )


def render_sweep_table(report: Mapping[str, Any]) -> Table | None:
    """Steps/min per policy at each swept concurrency (None when no sweep was run)."""
    sweep = report.get("sweep")
    if not sweep:
        return None
    order: list[str] = list(report.get("policy_order") or report["policies"])
    table = Table(title="steps/min vs concurrency")
    table.add_column("policy")
    for point in sweep["points"]:
        table.add_column(f"c={point['concurrency']}", justify="right")
    for name in order:
        table.add_row(name, *(f"{p['policies'][name]['steps_per_min']:.1f}" for p in sweep["points"]))
    return table


def render_tenant_table(report: Mapping[str, Any]) -> Table | None:
    """Per policy and tenant (only with two or more tenants): weight, mean TCT, and the service
    finished in the backlogged window (every tenant still had a program waiting to start), raw
    and as a share of its weight's due (1.000 = exactly in proportion to the weights)."""
    order: list[str] = list(report.get("policy_order") or report["policies"])
    rows = report["policies"]
    if not order or len(rows[order[0]].get("per_tenant") or {}) < 2:
        return None
    table = Table(title="tenants: service in the backlogged window")
    for header in ("policy", "tenant", "weight", "programs", "mean TCT s", "window s", "Mtok", "share"):
        table.add_column(header, justify="left" if header in ("policy", "tenant") else "right")
    for name in order:
        m = rows[name]
        for tenant, t in sorted(m["per_tenant"].items()):
            table.add_row(
                name,
                tenant,
                f"{t['weight']:g}",
                str(t["programs"]),
                f"{t['mean_tct_s']:.1f}",
                f"{m.get('backlog_window_s', 0.0):.0f}",
                f"{t.get('backlog_service', 0.0) / 1e6:.2f}",
                f"{t.get('backlog_share', 0.0):.3f}",
            )
    return table


def render_tier_table(report: Mapping[str, Any]) -> Table | None:
    """KV tier traffic per policy (only when the bench ran with `--tiers`): what went down to each
    tier, what came back, the prompt tokens it served, and the prefill that was still recomputed."""
    tiers = [str(t).partition(":")[0] for t in report.get("tiers") or ()]
    if not tiers:
        return None
    names = ["redis" if t.startswith("redis") else t for t in tiers]
    order: list[str] = list(report.get("policy_order") or report["policies"])
    table = Table(title="KV tiers: " + ", ".join(str(t) for t in report["tiers"]))
    table.add_column("policy")
    for name in names:
        for header in ("out GB", "in GB", "hit Mtok"):
            table.add_column(f"{name} {header}", justify="right")
    for header in ("load stall s", "prefetched GB", "recomputed Mtok"):
        table.add_column(header, justify="right")
    for policy in order:
        m = report["policies"][policy]
        extra = m.get("extra", {})
        cells = []
        for name in names:
            cells.append(f"{extra.get(f'tier_{name}_offloaded_bytes', 0.0) / 1e9:.1f}")
            cells.append(f"{extra.get(f'tier_{name}_loaded_bytes', 0.0) / 1e9:.1f}")
            cells.append(f"{extra.get(f'tier_{name}_hit_tokens', 0.0) / 1e6:.2f}")
        prefetched = sum(extra.get(f"tier_{name}_prefetched_bytes", 0.0) for name in names)
        cells += [
            f"{extra.get('tier_load_stall_s', 0.0):.1f}",
            f"{prefetched / 1e9:.1f}",
            f"{m['prefill_tokens_computed'] / 1e6:.2f}",
        ]
        table.add_row(policy, *cells)
    return table
