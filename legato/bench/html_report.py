"""`legato bench ... --html F`: one self-contained HTML page of a bench run.

The page holds what the terminal shows and what `--plot` draws, made by the same code: the rich
tables (`report.render_*`) exported as HTML with inline styles, the plots (`plots.plot_bench`)
as a base64 PNG, and the report JSON in a collapsed block. Nothing is fetched when it is opened
(no scripts, fonts or stylesheets from elsewhere), so it can be mailed or attached to an issue.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from rich.console import Console

from legato.bench.metrics import tcts
from legato.bench.plots import plot_bench
from legato.bench.report import (
    render_sweep_table,
    render_table,
    render_tenant_table,
    render_tier_table,
    report_json,
)
from legato.bench.runner import BenchRun

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2330; }}
pre.tables {{ font: 12px/1.25 ui-monospace, monospace; background: #fff; overflow-x: auto; }}
img {{ max-width: 100%; border: 1px solid #e3e6eb; }}
details pre {{ font-size: 12px; background: #f6f7f9; padding: 8px; overflow-x: auto; }}
</style></head><body>
<h1>{title}</h1>
<p>{subtitle}</p>
<h2>Results</h2>
<pre class="tables">{tables}</pre>
<h2>Plots</h2>
<img alt="task completion time CDF per policy" src="data:image/png;base64,{plot}">
<details><summary>Report JSON</summary><pre>{json}</pre></details>
</body></html>
"""


def tables_html(run: BenchRun) -> str:
    """The run's tables as the terminal shows them, as inline-styled HTML (no <pre> wrapper)."""
    console = Console(record=True, width=160, file=io.StringIO(), color_system="truecolor")
    report = run.report
    for table in (
        render_table(report),
        render_sweep_table(report),
        render_tier_table(report),
        render_tenant_table(report),
    ):
        if table is not None:
            console.print(table)
    return console.export_html(inline_styles=True, code_format="{code}")


def plot_png(run: BenchRun) -> bytes:
    buffer = io.BytesIO()
    plot_bench(buffer, {name: tcts(outcome) for name, outcome in run.outcomes.items()}, run.report)
    return buffer.getvalue()


def render_html(run: BenchRun) -> str:
    report = run.report
    title = f"legato bench · {report['workload']}"
    subtitle = (
        f"{report['programs']} programs, concurrency {report['concurrency']}, engine {report['engine']}, "
        f"model {report['model']}, gpu {report['gpu']}, seed {report['seed']}; policies: "
        + ", ".join(report.get("policy_order") or report["policies"])
    )
    return _PAGE.format(
        title=html.escape(title),
        subtitle=html.escape(subtitle),
        tables=tables_html(run),
        plot=base64.b64encode(plot_png(run)).decode(),
        json=html.escape(report_json(report)),
    )


def write_html(run: BenchRun, path: str | Path) -> None:
    Path(path).write_text(render_html(run), encoding="utf-8")


__all__ = ["render_html", "write_html"]
