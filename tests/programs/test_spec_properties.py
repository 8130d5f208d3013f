"""Property tests: random valid programs survive JSON unchanged; mutated ones are rejected with a
message naming the node or variable at fault."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legato.programs.spec import (
    END,
    ConditionSpec,
    EdgeSpec,
    LLMNodeSpec,
    MapNodeSpec,
    ProgramSpec,
    PromptSpec,
    RouterSpec,
    RouteSpec,
    SlotSpec,
    ToolNodeSpec,
    ValueArg,
    VarArg,
    VarSpec,
)
from legato.programs.validate import ProgramValidationError, validate

TOOLS = {"search", "run_tests", "read_file"}
REDUCERS = ["replace", "append", "extend", "add", "merge"]
OPS = ["eq", "ne", "lt", "contains", "in", "truthy", "is_null", "len_gt"]

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def programs(draw: st.DrawFn) -> ProgramSpec:
    var_names = [f"v{i}" for i in range(draw(st.integers(1, 5)))]
    state = [
        VarSpec(
            name=v, reducer=draw(st.sampled_from(REDUCERS)), default=draw(json_values), description=draw(text)
        )
        for v in var_names
    ]
    parts = {f"part{i}": draw(text) for i in range(draw(st.integers(0, 3)))}
    n = draw(st.integers(1, 6))
    names = [f"n{i}" for i in range(n)]
    back_targets: set[str] = set()
    edges: list[EdgeSpec] = []
    routers: list[RouterSpec] = []
    for i in range(n - 1):
        if draw(st.booleans()):
            edges.append(EdgeSpec(source=names[i], target=names[i + 1]))
            continue
        back = names[draw(st.integers(0, i))]
        back_targets.add(back)
        cond = ConditionSpec(
            var=draw(st.sampled_from(var_names)), op=draw(st.sampled_from(OPS)), value=draw(json_values)
        )
        routes = [RouteSpec(when=[cond], to=back)]
        routers.append(
            RouterSpec(
                source=names[i], routes=routes, default=names[i + 1], destinations=[back, names[i + 1], END]
            )
        )

    def body(name: str, local: list[str], top: bool) -> LLMNodeSpec | ToolNodeSpec:
        usable = var_names + local
        common: dict[str, Any] = {}
        if top:
            later = [*names[names.index(name) + 1 :], END]
            common = dict(
                retries=draw(st.integers(0, 3)),
                timeout_s=draw(st.none() | st.floats(0.1, 100)),
                on_error=draw(st.none() | st.sampled_from(later)),
                error_output=draw(st.none() | st.sampled_from(var_names)),
                output=draw(st.none() | st.sampled_from(var_names)),
            )
            if name in back_targets:
                common.update(
                    max_visits=draw(st.integers(1, 10)), on_exhausted=draw(st.sampled_from([None, END]))
                )
        if draw(st.booleans()):
            prompt = PromptSpec(
                parts=draw(st.lists(st.sampled_from(sorted(parts)), max_size=2)) if parts else [],
                slots=[
                    SlotSpec(var=v, label=draw(text))
                    for v in draw(st.lists(st.sampled_from(usable), max_size=3))
                ],
                suffix=draw(text),
            )
            return LLMNodeSpec(
                name=name,
                prompt=prompt,
                max_tokens=draw(st.integers(1, 512)),
                temperature=draw(st.floats(0, 2)),
                stop=draw(st.lists(text, max_size=2)),
                output_schema=draw(st.none() | st.just({"type": "object", "required": ["a"]})),
                parse_default=draw(json_values),
                **common,
            )
        args = {
            f"a{j}": VarArg(var=draw(st.sampled_from(usable)))
            if draw(st.booleans())
            else ValueArg(value=draw(json_values))
            for j in range(draw(st.integers(0, 3)))
        }
        return ToolNodeSpec(name=name, tool=draw(st.sampled_from(sorted(TOOLS))), args=args, **common)

    nodes: list[LLMNodeSpec | ToolNodeSpec | MapNodeSpec] = []
    for name in names:
        if draw(st.integers(0, 3)) == 0:
            inner = body(f"{name}.body", ["item", "item_index"], top=False)
            top = body(name, [], top=True)  # reuse the common options drawn for a top-level node
            common = top.model_dump(
                include={"retries", "timeout_s", "on_error", "error_output", "max_visits", "on_exhausted"}
            )
            nodes.append(
                MapNodeSpec(name=name, over=draw(st.sampled_from(var_names)), body=inner, output=top.output,
                            max_items=draw(st.integers(1, 100)), **common)
            )  # fmt: skip
        else:
            nodes.append(body(name, [], top=True))
    return ProgramSpec(
        name=draw(st.sampled_from(["p", "agent.coder", "map-reduce"])),
        description=draw(text),
        state=state,
        prefix_parts=parts,
        nodes=nodes,
        entry=names[0],
        edges=edges,
        routers=routers,
    )


@SETTINGS
@given(programs())
def test_valid_programs_round_trip_through_json(spec: ProgramSpec) -> None:
    validate(spec, TOOLS)
    again = ProgramSpec.from_json(spec.to_json())
    assert again == spec
    assert again.to_json() == spec.to_json()


def _rejected(spec: ProgramSpec, code: str, culprit: str) -> None:
    with pytest.raises(ProgramValidationError) as info:
        validate(spec, TOOLS)
    matching = [i for i in info.value.issues if i.code == code]
    assert matching, info.value.issues
    assert any(f"'{culprit}'" in i.message and i.where == culprit for i in matching), matching


def _replace_node(spec: ProgramSpec, node: Any) -> ProgramSpec:
    return spec.model_copy(update={"nodes": [node if n.name == node.name else n for n in spec.nodes]})


@SETTINGS
@given(programs(), st.data())
def test_unknown_variable_is_named(spec: ProgramSpec, data: st.DataObject) -> None:
    node = data.draw(st.sampled_from(spec.nodes))
    bad = node.model_copy(update={"error_output": "ghost_var"})
    _rejected(_replace_node(spec, bad), "unknown_variable", node.name)


@SETTINGS
@given(programs())
def test_undeclared_route_destination_is_named(spec: ProgramSpec) -> None:
    last = spec.nodes[-1].name
    router = RouterSpec(source=last, routes=[RouteSpec(to=spec.entry)], destinations=[END])
    _rejected(spec.model_copy(update={"routers": [*spec.routers, router]}), "undeclared_destination", last)


@SETTINGS
@given(programs())
def test_unbounded_cycle_is_named(spec: ProgramSpec) -> None:
    unbounded = [n.model_copy(update={"max_visits": None, "on_exhausted": None}) for n in spec.nodes]
    last = spec.nodes[-1].name
    mutated = spec.model_copy(
        update={"nodes": unbounded, "edges": [*spec.edges, EdgeSpec(source=last, target=spec.entry)]}
    )
    with pytest.raises(ProgramValidationError) as info:
        validate(mutated, TOOLS)
    cycles = [i for i in info.value.issues if i.code == "unbounded_cycle"]
    assert cycles and all(f"'{i.where}'" in i.message or i.where in i.message for i in cycles)
    assert any(i.where in {n.name for n in spec.nodes} for i in cycles)


@SETTINGS
@given(programs())
def test_unknown_tool_is_named(spec: ProgramSpec) -> None:
    last = spec.nodes[-1].name
    extra = ToolNodeSpec(name="extra_tool", tool="no_such_tool")
    mutated = spec.model_copy(
        update={
            "nodes": [*spec.nodes, extra],
            "edges": [*spec.edges, EdgeSpec(source=last, target="extra_tool")],
        }
    )
    _rejected(mutated, "unknown_tool", "extra_tool")


@SETTINGS
@given(programs())
def test_unreachable_node_is_named(spec: ProgramSpec) -> None:
    orphan = LLMNodeSpec(name="orphan", prompt=PromptSpec())
    _rejected(spec.model_copy(update={"nodes": [*spec.nodes, orphan]}), "unreachable", "orphan")


def _tool_registry() -> Any:
    from legato.tools.registry import ToolRegistry
    from legato.tools.registry import tool as register_tool

    reg = ToolRegistry()
    for name in sorted(TOOLS):

        async def fn(a0: Any = None, a1: Any = None, a2: Any = None) -> str:
            return "tool-output"

        register_tool(name=name, registry=reg)(fn)
    return reg


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.dictionaries(st.sampled_from(["v0"]), json_values, max_size=1))
def test_valid_programs_terminate(spec: ProgramSpec, inputs: dict[str, Any]) -> None:
    """Every valid program runs to an end (loop bounds hold) with a terminal status, and a
    failure always carries a readable error."""
    import anyio

    from legato.programs.executor import Executor
    from legato.tools.runtime import ToolRuntime
    from tests.doubles.engines import FakeEngine
    from tests.programs.helpers import RecordingScheduler

    reg = _tool_registry()

    async def main() -> None:
        async with ToolRuntime(reg) as tools, Executor(RecordingScheduler(FakeEngine()), tools) as ex:
            with anyio.fail_after(30):
                result = await ex.run(spec, inputs)
        assert result.status in ("succeeded", "failed")
        if result.status == "failed":
            assert result.error and len(result.error) > 10
        bound = sum(n.max_visits or 0 for n in spec.nodes) + 1
        assert len(result.steps) <= len(spec.nodes) * bound

    anyio.run(main)
