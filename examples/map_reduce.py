"""Multi-agent map-reduce: six workers share one long system prefix, then a reducer combines them.

A declarative program (builder style), so it serialises to JSON for REST submission
(`map_reduce.json` is this program, written by `python examples/map_reduce.py --json`). The
workers run in parallel (`fan_out`); every worker's prompt starts with the same named prefix part,
so the engine's prefix cache computes it once and the other workers hit it.

    legato run examples/map_reduce.py
    legato run examples/map_reduce.json --inputs-json '{"topics": ["a", "b"]}'
"""

from __future__ import annotations

import sys
from pathlib import Path

from legato import END, START, Program, fan_out, llm

REVIEW_GUIDE = (
    "You are one reviewer in a team auditing a distributed inference service. "
    "Each reviewer studies one area and reports findings as short bullet points: the risk, "
    "where it shows, how likely it is, and the smallest change that removes it. "
    "Be concrete: name the component, the request path and the failure you expect. "
    "Prefer findings that can be checked with a test or a measurement over opinions. "
    "Keep the report under one hundred words and do not repeat the question.\n"
) * 3

program_builder = Program(
    {"topics": "replace", "findings": "replace", "report": "replace"}, name="map-reduce"
)
program_builder.prefix("review_guide", REVIEW_GUIDE)
program_builder.add_node(
    "review",
    fan_out(
        "topics",
        llm(prefix=["review_guide"], slots=["item"], suffix="Findings:", max_tokens=24),
        output="findings",
        max_items=16,
    ),
)
program_builder.add_node(
    "reduce",
    llm(
        prefix=["review_guide"],
        slots=["findings"],
        suffix="Merge the findings above into one prioritised list:",
        output="report",
        max_tokens=32,
    ),
)
program_builder.add_edge(START, "review")
program_builder.add_edge("review", "reduce")
program_builder.add_edge("reduce", END)
program = program_builder.compile()

inputs = {
    "topics": [
        "admission control under KV pressure",
        "tenant isolation of the prefix cache",
        "tool sandboxing and resource limits",
        "durability of the step journal",
        "Redis tier failure handling",
        "fair share between tenants",
    ]
}

if __name__ == "__main__" and "--json" in sys.argv:
    Path(__file__).with_suffix(".json").write_text(program.spec.to_json() + "\n")
