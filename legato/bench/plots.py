"""PNG plots of a bench run: TCT CDF per policy, and throughput vs concurrency for a sweep.

matplotlib is imported inside the function (Agg backend, no display needed) so importing this
module stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any


def plot_bench(
    path: str | Path | IO[bytes],
    tcts_by_policy: Mapping[str, Sequence[float]],
    report: Mapping[str, Any],
) -> None:
    """Write the TCT CDF (left) and, when `report` has a sweep, steps/min vs concurrency (right),
    as PNG to a file or a binary stream (`--html` embeds it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = report.get("sweep")
    panels = 2 if sweep else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
    cdf = axes[0][0]
    for name, values in tcts_by_policy.items():
        ordered = sorted(values)
        if not ordered:
            continue
        n = len(ordered)
        cdf.step(ordered, [(i + 1) / n for i in range(n)], where="post", label=name)
    cdf.set_xlabel("task completion time (s)")
    cdf.set_ylabel("fraction of programs")
    cdf.set_title(f"TCT CDF · {report['workload']} · concurrency {report['concurrency']}")
    cdf.grid(alpha=0.3)
    cdf.legend(fontsize="small")
    if sweep:
        ax = axes[0][1]
        xs = [p["concurrency"] for p in sweep["points"]]
        for name in report.get("policy_order") or report["policies"]:
            ax.plot(
                xs, [p["policies"][name]["steps_per_min"] for p in sweep["points"]], marker="o", label=name
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("concurrency (programs in flight)")
        ax.set_ylabel("LLM steps per minute")
        ax.set_title("throughput vs concurrency")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
