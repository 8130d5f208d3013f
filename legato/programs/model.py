"""The program as a networkx graph, and what the executor and scheduler ask of it.

Every way control can move is an edge, tagged with its kind: `edge` (unconditional), `route`
(a router destination), `error` (`on_error`), `exhausted` (a loop bound's `on_exhausted`). The
validator uses the graph for reachability and cycle checks; the executor and the scheduler use
it to look ahead (does a tool follow this LLM call? can any LLM call still follow?).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import networkx as nx

from legato.programs.spec import END, LLMNodeSpec, MapNodeSpec, NodeSpec, ProgramSpec, ToolNodeSpec


@dataclass(frozen=True, slots=True)
class Lookahead:
    """What follows a node on every path: used for `CallHints`."""

    next_tool: str | None  # the tool node that unconditionally follows, if any
    llm_follows: bool  # can any LLM call (or map with an LLM body) still run after this node


class ProgramGraph:
    """A `ProgramSpec` plus its control-flow graph (an `nx.MultiDiGraph`; END is a node)."""

    def __init__(self, spec: ProgramSpec) -> None:
        self.spec = spec
        self.nodes: dict[str, NodeSpec] = {n.name: n for n in spec.nodes}
        g: nx.MultiDiGraph = nx.MultiDiGraph()
        g.add_node(END)
        for node in spec.nodes:
            g.add_node(node.name)
        for edge in spec.edges:
            g.add_edge(edge.source, edge.target, kind="edge")
        for router in spec.routers:
            for dest in router.destinations:
                g.add_edge(router.source, dest, kind="route")
        for node in spec.nodes:
            if node.on_error is not None:
                g.add_edge(node.name, node.on_error, kind="error")
            if node.max_visits is not None:
                g.add_edge(node.name, node.on_exhausted or END, kind="exhausted")
        self.graph = g
        self.edges_from = {e.source: e.target for e in spec.edges}
        self.routers = {r.source: r for r in spec.routers}

    def successors(self, name: str) -> set[str]:
        return set(self.graph.successors(name))

    @staticmethod
    def _uses_llm(node: NodeSpec) -> bool:
        return isinstance(node, LLMNodeSpec) or (
            isinstance(node, MapNodeSpec) and isinstance(node.body, LLMNodeSpec)
        )

    @cached_property
    def _lookahead(self) -> dict[str, Lookahead]:
        result: dict[str, Lookahead] = {}
        for name in self.nodes:
            nxt = self.edges_from.get(name)
            nxt_node = self.nodes.get(nxt) if nxt is not None else None
            next_tool = nxt_node.tool if isinstance(nxt_node, ToolNodeSpec) else None
            after = nx.descendants(self.graph, name)
            llm_follows = any(self._uses_llm(self.nodes[d]) for d in after if d in self.nodes)
            result[name] = Lookahead(next_tool=next_tool, llm_follows=llm_follows)
        return result

    def lookahead(self, name: str) -> Lookahead:
        return self._lookahead[name]

    def prefix_parts_of(self, name: str) -> list[str]:
        """The prefix part names an LLM node (or a map's LLM body) starts its prompt with."""
        node = self.nodes[name]
        if isinstance(node, MapNodeSpec):
            node = node.body
        return list(node.prompt.parts) if isinstance(node, LLMNodeSpec) else []

    def reuses_first_prefix_after(self, node: str) -> bool | None:
        """`legato.scheduler.events.ProgramShape`: does an LLM node reachable from `node` start
        with the same first prefix part? None when `node` is not one of the graph's nodes (a map
        body label) or starts with no prefix part."""
        if node not in self.nodes:
            return None
        parts = self.prefix_parts_of(node)
        if not parts:
            return None
        seen = {node}
        frontier = list(self.successors(node))
        while frontier:
            name = frontier.pop()
            if name in seen or name not in self.nodes:
                continue
            seen.add(name)
            follow = self.prefix_parts_of(name)
            if follow:
                if follow[0] == parts[0]:
                    return True
                continue  # an LLM node with another prefix: what follows it reuses *its* prefix
            frontier.extend(self.successors(name))
        return False
