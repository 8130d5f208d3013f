"""Static checks of a `ProgramSpec`, with messages that name the node or variable at fault.

Programs arrive from untrusted clients over REST, so validation is complete before anything runs:
names, references (variables, prefix parts, tools, nodes), routes to undeclared destinations,
reachability, unbounded cycles, and explicit size limits. All issues are collected, not just the
first, so a client fixes its program in one round trip.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable
from dataclasses import dataclass

import networkx as nx

from legato.programs.call_bound import MAX_PLANNED_CALLS, planned_calls
from legato.programs.model import ProgramGraph
from legato.programs.spec import (
    END,
    MAX_FAN_OUT,
    MAX_LOOP_BOUND,
    MAX_MAX_TOKENS,
    MAX_RETRIES,
    MAX_TIMEOUT_S,
    START,
    ConditionSpec,
    LLMNodeSpec,
    MapNodeSpec,
    NodeSpec,
    ProgramSpec,
    ToolNodeSpec,
    VarArg,
)

# --- size limits (explicit so clients can read them; numeric field ranges are in `spec`) -------
__all__ = [
    "MAX_FAN_OUT",
    "MAX_LOOP_BOUND",
    "MAX_MAX_TOKENS",
    "MAX_PLANNED_CALLS",
    "MAX_RETRIES",
    "MAX_TIMEOUT_S",
    "ProgramValidationError",
    "ValidationIssue",
    "validate",
]
MAX_NODES = 512
MAX_STATE_VARS = 512
MAX_EDGES = 4096
MAX_ROUTES_PER_ROUTER = 64
MAX_CONDITIONS_PER_ROUTE = 16
MAX_PREFIX_PARTS = 256
MAX_PREFIX_PART_CHARS = 200_000
MAX_PROMPT_SLOTS = 64
MAX_TEMPLATE_TEXT_CHARS = 10_000  # slot labels / suffixes / prompt suffix
MAX_TOOL_ARGS = 64
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


@dataclass(frozen=True, slots=True)
class ValidationIssue:
    code: str  # e.g. "unknown_variable", "unreachable", "unbounded_cycle", "unknown_tool"
    where: str  # the node (or variable, for declarations) at fault
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class ProgramValidationError(ValueError):
    """The program is not valid; `issues` lists every problem found."""

    def __init__(self, program: str, issues: list[ValidationIssue]) -> None:
        self.program = program
        self.issues = issues
        lines = "\n".join(f"  - [{i.code}] {i}" for i in issues)
        super().__init__(f"program {program!r} is invalid ({len(issues)} issue(s)):\n{lines}")


class _Checker:
    def __init__(self, spec: ProgramSpec, tools: Container[str] | None) -> None:
        self.spec = spec
        self.tools = tools
        self.issues: list[ValidationIssue] = []
        self.vars = {v.name for v in spec.state}
        self.node_names = [n.name for n in spec.nodes]

    def add(self, code: str, where: str, message: str) -> None:
        self.issues.append(ValidationIssue(code, where, message))

    # -- helpers --------------------------------------------------------------------------
    def var_ref(self, where: str, path: str, what: str, local: Iterable[str] = ()) -> None:
        head = path.split(".", 1)[0]
        if head not in self.vars and head not in set(local):
            known = ", ".join(sorted(self.vars)) or "(none)"
            self.add(
                "unknown_variable",
                where,
                f"node {where!r}: {what} refers to unknown state variable {head!r} (declared: {known})",
            )

    def node_ref(self, where: str, target: str | None, what: str) -> None:
        if target is None or target == END or target in self.node_names:
            return
        self.add("unknown_node", where, f"node {where!r}: {what} {target!r} is not a node of the program")

    def limit(self, where: str, what: str, value: float, maximum: float) -> None:
        if value > maximum:
            self.add("limit", where, f"{where!r}: {what} is {value}, above the limit of {maximum}")

    # -- checks ---------------------------------------------------------------------------
    def run(self) -> list[ValidationIssue]:
        spec = self.spec
        self.limit("program", "number of nodes", len(spec.nodes), MAX_NODES)
        self.limit("program", "number of state variables", len(spec.state), MAX_STATE_VARS)
        self.limit("program", "number of edges", len(spec.edges), MAX_EDGES)
        self.limit("program", "number of prefix parts", len(spec.prefix_parts), MAX_PREFIX_PARTS)
        if not spec.nodes:
            self.add("empty", "program", "a program needs at least one node")
        self.check_declarations()
        for node in spec.nodes:
            self.check_node(node, top_level=True)
        self.check_edges()
        if not self.issues:  # graph checks assume references resolve
            self.check_graph()
        return self.issues

    def check_declarations(self) -> None:
        seen: set[str] = set()
        for var in self.spec.state:
            if not VAR_NAME_RE.match(var.name):
                self.add(
                    "bad_name", var.name, f"state variable {var.name!r} must match {VAR_NAME_RE.pattern}"
                )
            if var.name in seen:
                self.add("duplicate", var.name, f"state variable {var.name!r} is declared twice")
            seen.add(var.name)
        seen = set()
        for name in self.node_names:
            if not NAME_RE.match(name) or name in (END, START):
                self.add(
                    "bad_name", name, f"node name {name!r} must match {NAME_RE.pattern} (not {END}/{START})"
                )
            if name in seen:
                self.add("duplicate", name, f"node {name!r} is defined twice")
            seen.add(name)
        for part, text in self.spec.prefix_parts.items():
            if not NAME_RE.match(part):
                self.add("bad_name", part, f"prefix part name {part!r} must match {NAME_RE.pattern}")
            self.limit(part, "prefix part length (chars)", len(text), MAX_PREFIX_PART_CHARS)
        if self.spec.entry not in self.node_names:
            self.add("unknown_node", self.spec.entry, f"entry node {self.spec.entry!r} is not a node")

    def check_common(self, node: NodeSpec) -> None:
        n = node.name  # numeric ranges (retries, timeouts, loop bounds...) are the spec's types
        if node.max_visits is None and node.on_exhausted is not None:
            self.add("bad_value", n, f"node {n!r}: on_exhausted needs max_visits")
        self.node_ref(n, node.on_error, "on_error target")
        self.node_ref(n, node.on_exhausted, "on_exhausted target")
        if node.error_output is not None:
            self.var_ref(n, node.error_output, "error_output")

    def check_node(self, node: NodeSpec, top_level: bool, local: tuple[str, ...] = ()) -> None:
        n = node.name
        if top_level:
            self.check_common(node)
        if isinstance(node, LLMNodeSpec):
            prompt = node.prompt
            self.limit(n, "number of prompt slots", len(prompt.slots), MAX_PROMPT_SLOTS)
            for part in prompt.parts:
                if part not in self.spec.prefix_parts:
                    self.add(
                        "unknown_prefix_part", n, f"node {n!r}: prompt uses unknown prefix part {part!r}"
                    )
            for slot in prompt.slots:
                self.var_ref(n, slot.var, "prompt slot", local)
                self.limit(
                    n, "slot label length", len(slot.label) + len(slot.suffix), MAX_TEMPLATE_TEXT_CHARS
                )
            self.limit(n, "prompt suffix length", len(prompt.suffix), MAX_TEMPLATE_TEXT_CHARS)
        elif isinstance(node, ToolNodeSpec):
            if self.tools is not None and node.tool not in self.tools:
                self.add("unknown_tool", n, f"node {n!r}: unknown tool {node.tool!r}")
            self.limit(n, "number of tool args", len(node.args), MAX_TOOL_ARGS)
            for arg_name, arg in node.args.items():
                if isinstance(arg, VarArg):
                    self.var_ref(n, arg.var, f"tool argument {arg_name!r}", local)
            if node.args_var is not None:
                self.var_ref(n, node.args_var, "args_var", local)
        else:
            self.check_map(node)
        output = node.output
        if output is not None:
            if not top_level:
                self.add(
                    "bad_value", n, f"node {n!r}: a map body writes through the map's output, not its own"
                )
            else:
                self.var_ref(n, output, "output")
                if "." in output:
                    self.add("bad_value", n, f"node {n!r}: output must be a variable name, not a path")

    def check_map(self, node: MapNodeSpec) -> None:
        n = node.name
        self.var_ref(n, node.over, "map 'over'")
        if not VAR_NAME_RE.match(node.item_var):
            self.add(
                "bad_name", n, f"node {n!r}: item_var {node.item_var!r} must match {VAR_NAME_RE.pattern}"
            )
        if node.item_var in self.vars:
            self.add("shadowing", n, f"node {n!r}: item_var {node.item_var!r} shadows a state variable")
        body = node.body
        if body.on_error or body.on_exhausted or body.max_visits is not None:
            self.add("bad_value", n, f"node {n!r}: a map body cannot route (on_error / max_visits)")
        self.check_node(body, top_level=False, local=(node.item_var, f"{node.item_var}_index"))

    def check_condition(self, where: str, cond: ConditionSpec) -> None:
        self.var_ref(where, cond.var, "route condition")

    def check_edges(self) -> None:
        out_edges: dict[str, list[str]] = {}
        for edge in self.spec.edges:
            if edge.source not in self.node_names:
                self.add("unknown_node", edge.source, f"edge source {edge.source!r} is not a node")
                continue
            self.node_ref(edge.source, edge.target, "edge target")
            out_edges.setdefault(edge.source, []).append(edge.target)
        for source, targets in out_edges.items():
            if len(targets) > 1:
                self.add(
                    "ambiguous_edges",
                    source,
                    f"node {source!r} has {len(targets)} unconditional edges ({', '.join(targets)}); "
                    "use a router, or a map node for parallel work",
                )
        routed: set[str] = set()
        for router in self.spec.routers:
            src = router.source
            if src not in self.node_names:
                self.add("unknown_node", src, f"router source {src!r} is not a node")
                continue
            if src in routed:
                self.add("duplicate", src, f"node {src!r} has two routers")
            if src in out_edges:
                self.add("ambiguous_edges", src, f"node {src!r} has both an unconditional edge and a router")
            routed.add(src)
            if not router.destinations:
                self.add("no_destinations", src, f"router of node {src!r} declares no destinations")
            self.limit(src, "number of routes", len(router.routes), MAX_ROUTES_PER_ROUTER)
            for dest in router.destinations:
                self.node_ref(src, dest, "router destination")
            declared = set(router.destinations)
            route_targets = [(r.to, "route") for r in router.routes] + [(router.default, "default route")]
            for target, what in route_targets:
                if target not in declared:
                    self.add(
                        "undeclared_destination",
                        src,
                        f"node {src!r}: {what} goes to {target!r}, which is not among the declared "
                        f"destinations ({', '.join(router.destinations)})",
                    )
            for route in router.routes:
                self.limit(src, "conditions in a route", len(route.when), MAX_CONDITIONS_PER_ROUTE)
                for cond in route.when:
                    self.check_condition(src, cond)

    def check_graph(self) -> None:
        graph = ProgramGraph(self.spec)
        g = graph.graph
        reachable = nx.descendants(g, self.spec.entry) | {self.spec.entry}
        for name in self.node_names:
            if name not in reachable:
                self.add("unreachable", name, f"node {name!r} is unreachable from entry {self.spec.entry!r}")
        self.check_cycles(g)
        if not self.issues:  # the bound assumes every cycle is bounded
            calls = planned_calls(graph)
            if calls > MAX_PLANNED_CALLS:
                self.add(
                    "limit",
                    "program",
                    f"a run may make up to {calls:,} LLM calls (loop bounds x map fan-out x attempts); "
                    f"the limit is {MAX_PLANNED_CALLS:,}: lower max_visits, max_items or retries",
                )

    def check_cycles(self, g: nx.MultiDiGraph) -> None:
        """Every cycle must *visit* a node with `max_visits`. Passing a bounded node through its
        `on_exhausted` exit does not count (it does not raise the visit counter), so each bounded
        node B is split into an entry B/in and a visited B/out with no edge between them: B/in
        has only the exhausted exit, B/out the normal exits. A cycle left in that graph can run
        forever."""
        bounded = {n.name for n in self.spec.nodes if n.max_visits is not None}

        def tail(name: str) -> tuple[str, str]:
            return (name, "out" if name in bounded else "")

        def head(name: str) -> tuple[str, str]:
            return (name, "in" if name in bounded else "")

        h: nx.DiGraph = nx.DiGraph()
        for u, v, kind in g.edges(data="kind"):
            if u == END:
                continue
            h.add_edge(head(u) if kind == "exhausted" else tail(u), head(v))
        for component in nx.strongly_connected_components(h):
            nodes = sorted(component)
            if len(nodes) == 1 and not h.has_edge(nodes[0], nodes[0]):
                continue
            cycle = list(dict.fromkeys(u[0] for u, _v in nx.find_cycle(h.subgraph(nodes))))
            self.add(
                "unbounded_cycle",
                cycle[0],
                f"cycle {' -> '.join([*cycle, cycle[0]])} has no loop bound: give one of its nodes "
                "max_visits, with an on_exhausted exit that leaves the cycle",
            )


def validate(spec: ProgramSpec, tools: Container[str] | None = None) -> ProgramGraph:
    """Check `spec`; return its graph, or raise `ProgramValidationError` listing every issue.
    `tools` (a `ToolRegistry` or any container of names) enables the unknown-tool check."""
    issues = _Checker(spec, tools).run()
    if issues:
        raise ProgramValidationError(spec.name, issues)
    return ProgramGraph(spec)
