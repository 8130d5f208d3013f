"""The most LLM calls one run of a program can make, read off its graph before it runs.

A client must not be able to start a run that plans millions of calls (`max_visits` 1000 around
a map of 4,096 items is 4 million), so the validator refuses a program whose bound exceeds
`MAX_PLANNED_CALLS`. The bound is exact in structure and loose only where the graph is:

- a valid program's split graph (each bounded node B cut into B/in and B/out, see
  `validate.check_cycles`) is acyclic, so a run is a sequence of acyclic walks joined by real
  visits of bounded nodes; a node that lies on no cycle is visited at most once, and a node on a
  cycle at most once plus once per visit of the bounded nodes of its strongly connected component
  (a bounded node itself: at most its `max_visits`);
- a visit of an LLM node is one call per attempt (`retries` + 1); a map node with an LLM body is
  `max_items` calls, each with the body's attempts, per attempt of the map node.

Routers, conditions and lists shorter than `max_items` only make real runs smaller.
"""

from __future__ import annotations

import networkx as nx

from legato.programs.model import ProgramGraph
from legato.programs.spec import END, LLMNodeSpec, MapNodeSpec, NodeSpec

# The executor's backstop (`graph_run.MAX_STEPS_PER_RUN`) stops a run after 100,000 steps; a run
# may plan as many LLM calls, retries included, as it may take steps.
MAX_PLANNED_CALLS = 100_000


def calls_per_visit(node: NodeSpec) -> int:
    attempts = node.retries + 1
    if isinstance(node, LLMNodeSpec):
        return attempts
    if isinstance(node, MapNodeSpec) and isinstance(node.body, LLMNodeSpec):
        return attempts * node.max_items * (node.body.retries + 1)
    return 0


def planned_calls(graph: ProgramGraph) -> int:
    """An upper bound on the LLM calls (every attempt) of one run of the program."""
    g = graph.graph
    total = 0
    for component in nx.strongly_connected_components(g):
        names = [n for n in component if n != END]
        if not names:
            continue
        cyclic = len(names) > 1 or g.has_edge(names[0], names[0])
        loop_visits = sum(graph.nodes[n].max_visits or 0 for n in names)
        for name in names:
            node = graph.nodes[name]
            per_visit = calls_per_visit(node)
            if not per_visit:
                continue
            if not cyclic:
                visits = 1
            elif node.max_visits is not None:
                visits = node.max_visits
            else:
                visits = 1 + loop_visits
            total += visits * per_visit
    return total
