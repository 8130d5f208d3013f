"""Validation: each kind of mistake is reported with the node / variable at fault."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from legato.programs.call_bound import MAX_PLANNED_CALLS, planned_calls
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
    VarArg,
    VarSpec,
)
from legato.programs.validate import MAX_LOOP_BOUND, ProgramValidationError, validate


def _llm(name: str, *slots: str, output: str | None = "out", **kw: object) -> LLMNodeSpec:
    return LLMNodeSpec(
        name=name, prompt=PromptSpec(slots=[SlotSpec(var=s) for s in slots]), output=output, **kw
    )  # type: ignore[arg-type]


def _spec(nodes: list, edges: list | None = None, routers: list | None = None, **kw: object) -> ProgramSpec:
    return ProgramSpec(
        name="p",
        state=[VarSpec(name="q"), VarSpec(name="out"), VarSpec(name="items", default=[])],
        nodes=nodes,
        entry=nodes[0].name,
        edges=edges or [],
        routers=routers or [],
        **kw,  # type: ignore[arg-type]
    )


def _issues(spec: ProgramSpec, tools: set[str] | None = None) -> list[tuple[str, str, str]]:
    with pytest.raises(ProgramValidationError) as info:
        validate(spec, tools)
    return [(i.code, i.where, i.message) for i in info.value.issues]


def test_valid_program_passes() -> None:
    spec = _spec([_llm("a", "q"), _llm("b", "out")], [EdgeSpec(source="a", target="b")])
    graph = validate(spec)
    assert graph.successors("a") == {"b"}


def test_unknown_variable_names_node_and_variable() -> None:
    (code, where, msg), *_ = _issues(_spec([_llm("a", "nope")]))
    assert (code, where) == ("unknown_variable", "a")
    assert "'nope'" in msg and "'a'" in msg


def test_unreachable_node() -> None:
    issues = _issues(_spec([_llm("a", "q"), _llm("island", "q")]))
    assert issues == [("unreachable", "island", "node 'island' is unreachable from entry 'a'")]


def test_unbounded_cycle_and_bounded_cycle() -> None:
    edges = [EdgeSpec(source="a", target="b"), EdgeSpec(source="b", target="a")]
    (code, where, msg), *_ = _issues(_spec([_llm("a", "q"), _llm("b", "q")], edges))
    assert code == "unbounded_cycle" and where in ("a", "b")
    assert "a -> b -> a" in msg or "b -> a -> b" in msg
    validate(_spec([_llm("a", "q"), _llm("b", "q", max_visits=3)], edges))


def test_unknown_tool() -> None:
    spec = _spec([ToolNodeSpec(name="t", tool="missing", args={"x": VarArg(var="q")})])
    assert _issues(spec, {"known"}) == [("unknown_tool", "t", "node 't': unknown tool 'missing'")]
    validate(spec)  # without a registry the tool check is skipped


def test_route_to_undeclared_destination() -> None:
    router = RouterSpec(
        source="a",
        routes=[RouteSpec(when=[ConditionSpec(var="out", op="eq", value="x")], to="b")],
        destinations=[END],
    )
    issues = _issues(_spec([_llm("a", "q"), _llm("b", "q")], routers=[router]))
    assert ("undeclared_destination", "a") in [(c, w) for c, w, _ in issues]
    assert any("'b'" in m and "declared destinations" in m for _, _, m in issues)


def test_limits_and_map_rules() -> None:
    with pytest.raises(ValidationError, match="max_visits"):  # numeric ranges are the spec's types
        _llm("a", "q", max_visits=MAX_LOOP_BOUND + 1)
    bad_map = MapNodeSpec(name="m", over="items", item_var="q", body=_llm("m.body", "q", output=None))
    assert ("shadowing", "m") in [(c, w) for c, w, _ in _issues(_spec([bad_map]))]
    ok_map = MapNodeSpec(
        name="m", over="items", body=_llm("m.body", "item", "item_index", output=None), output="out"
    )
    validate(_spec([ok_map]))


def test_all_issues_reported_at_once() -> None:
    spec = _spec([_llm("a", "x1"), _llm("b", "x2")], [EdgeSpec(source="a", target="zzz")])
    codes = {c for c, _, _ in _issues(spec)}
    assert {"unknown_variable", "unknown_node"} <= codes
    assert "program 'p' is invalid" in str(ProgramValidationError("p", []))


def test_cycle_through_an_exhausted_exit_is_unbounded() -> None:
    # `a` is bounded, but its on_exhausted exit leads back into the cycle: a -> b -> a would
    # run forever once `a` is exhausted (b -> a(exhausted) -> b -> ...).
    edges = [EdgeSpec(source="a", target="b"), EdgeSpec(source="b", target="a")]
    looping = _spec([_llm("a", "q", max_visits=2, on_exhausted="b"), _llm("b", "q")], edges)
    (code, where, msg), *_ = _issues(looping)
    assert code == "unbounded_cycle" and where in ("a", "b") and "on_exhausted" in msg
    leaving = _spec([_llm("a", "q", max_visits=2, on_exhausted="c"), _llm("b", "q"), _llm("c", "q")], edges)
    validate(leaving)


def _loop(body: LLMNodeSpec | MapNodeSpec, max_visits: int) -> ProgramSpec:
    """`agent` (bounded) -> `body` -> back to `agent`, leaving when the bound is reached."""
    agent = _llm("agent", "q", max_visits=max_visits)
    return _spec(
        [agent, body],
        [EdgeSpec(source="agent", target=body.name), EdgeSpec(source=body.name, target="agent")],
    )


def test_planned_calls_bound_counts_loops_fan_out_and_attempts() -> None:
    one = validate(_spec([_llm("a", "q", retries=2), _llm("b", "q")], [EdgeSpec(source="a", target="b")]))
    assert planned_calls(one) == 3 + 1
    loop = validate(_loop(_llm("think", "q"), max_visits=10))
    assert planned_calls(loop) == 10 + (1 + 10)  # agent at most 10 visits, think once more per visit
    fan = MapNodeSpec(
        name="fan", over="items", body=_llm("fan.body", "item", output=None, retries=1), max_items=8
    )
    assert planned_calls(validate(_loop(fan, max_visits=5))) == 5 + (1 + 5) * 8 * 2


def test_a_program_planning_too_many_llm_calls_is_refused() -> None:
    # the issue's case: a loop bound of 1,000 around a full-width fan-out plans ~4 million calls
    fan = MapNodeSpec(name="fan", over="items", body=_llm("fan.body", "item", output=None), max_items=4096)
    with pytest.raises(ProgramValidationError, match=f"the limit is {MAX_PLANNED_CALLS:,}") as info:
        validate(_loop(fan, max_visits=1000))
    assert info.value.issues[0].code == "limit" and "4,10" in info.value.issues[0].message
    validate(_loop(_llm("think", "q", retries=3), max_visits=1000))  # an ordinary agent loop passes
