"""`legato bench matrix-diff BEFORE.json AFTER.json`: what a change did to the matrix.

Why: a policy change moves many cells a little and flips a few across the bar; judging it means
comparing two `legato bench matrix --json` runs of the same seed cell by cell. This lists the
cells whose pass state flipped and those whose steps/min or mean TCT ratio moved by at least
`min_change` (a display filter, not a policy threshold), with the pass counts before and after.
Runs of different seeds draw different programs, so comparing them is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legato.bench.matrix import passes


@dataclass(frozen=True, slots=True)
class CellChange:
    cell: str
    steps_before: float
    steps_after: float
    tct_before: float
    tct_after: float
    passed_before: bool
    passed_after: bool

    @property
    def flipped(self) -> bool:
        return self.passed_before != self.passed_after


@dataclass(frozen=True, slots=True)
class MatrixDiff:
    seed: int
    passed_before: int
    passed_after: int
    common: int  # cells in both runs
    changes: list[CellChange]  # flipped or moved, in the AFTER run's cell order
    only_before: list[str]
    only_after: list[str]


def load(path: Path) -> dict[str, Any]:
    """A matrix JSON written by `legato bench matrix --json`; a clear error for anything else."""
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cells"), list) or "seed" not in doc:
        raise ValueError(f"{path} is not a `legato bench matrix --json` file (no seed and cells)")
    seed = doc["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"{path}: seed must be an integer in [0, 2^32), got {seed!r}")
    for i, cell in enumerate(doc["cells"]):
        problem = _cell_problem(cell)
        if problem:
            raise ValueError(f"{path}: cells[{i}] {problem}")
    return doc


def _cell_problem(cell: object) -> str | None:
    """What makes `cell` unusable (None: nothing): a key that is text and two finite ratios."""
    if not isinstance(cell, dict):
        return "is not an object"
    key = cell.get("cell")
    if not isinstance(key, str) or not key or not key.isprintable():  # lone surrogates are not
        return "has no printable `cell` key"
    for field in ("steps_ratio", "tct_ratio"):
        value = cell.get(field)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"({key}) needs a finite number `{field}`, got {value!r}"
    return None


def compare(before: dict[str, Any], after: dict[str, Any], min_change: float = 0.01) -> MatrixDiff:
    if before["seed"] != after["seed"]:
        raise ValueError(
            f"the runs are of different seeds ({before['seed']} and {after['seed']}): they draw "
            "different programs; compare two runs of the same seed"
        )
    old = {c["cell"]: c for c in before["cells"]}
    new = {c["cell"]: c for c in after["cells"]}
    changes: list[CellChange] = []
    for key, b in new.items():
        a = old.get(key)
        if a is None:
            continue
        change = CellChange(
            key, a["steps_ratio"], b["steps_ratio"], a["tct_ratio"], b["tct_ratio"], passes(a), passes(b)
        )
        moved = max(abs(change.steps_after - change.steps_before), abs(change.tct_after - change.tct_before))
        if change.flipped or moved >= min_change:
            changes.append(change)
    common = [k for k in new if k in old]
    return MatrixDiff(
        seed=int(after["seed"]),
        passed_before=sum(passes(old[k]) for k in common),
        passed_after=sum(passes(new[k]) for k in common),
        common=len(common),
        changes=changes,
        only_before=[k for k in old if k not in new],
        only_after=[k for k in new if k not in old],
    )


def render(diff: MatrixDiff) -> Any:
    from rich.table import Table

    table = Table(
        title=f"matrix seed {diff.seed}: {diff.passed_before} -> {diff.passed_after} of {diff.common} "
        "cells pass"
    )
    for column in ("cell", "steps/min ratio", "mean TCT ratio", "pass"):
        table.add_column(column, justify="left" if column == "cell" else "right")
    for c in diff.changes:
        state = f"{_state(c.passed_before)} -> {_state(c.passed_after)}"
        table.add_row(
            c.cell,
            f"{c.steps_before:.3f} -> {c.steps_after:.3f}",
            f"{c.tct_before:.3f} -> {c.tct_after:.3f}",
            f"[bold]{state}[/]" if c.flipped else state,
        )
    return table


def _state(passed: bool) -> str:
    return "pass" if passed else "fail"
