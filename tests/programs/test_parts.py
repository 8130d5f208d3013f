"""Unit tests of the small parts: reducers, routing conditions, prompts, events, builder state,
the passthrough scheduler."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import anyio
import pytest

from legato.engine_adapter.base import collect
from legato.programs.builder import Program, llm, state_vars
from legato.programs.events import EventHub
from legato.programs.prompt import PrefixRegistry, PromptRenderer
from legato.programs.routing import holds
from legato.programs.spec import ConditionSpec, VarSpec
from legato.programs.state import State, StateError, lookup_path
from legato.scheduler.base import CallScheduler
from legato.scheduler.events import LLMCall
from legato.scheduler.passthrough import PassthroughScheduler
from tests.doubles.engines import ByteTokenizer, FakeEngine


def test_reducers_and_paths() -> None:
    state = State(
        [
            VarSpec(name="r"),
            VarSpec(name="a", reducer="append", default=[]),
            VarSpec(name="e", reducer="extend", default=[]),
            VarSpec(name="n", reducer="add", default=0),
            VarSpec(name="m", reducer="merge", default={}),
        ]
    )
    state.apply({"r": 1, "a": "x", "e": [1, 2], "n": 2, "m": {"k": {"deep": [5]}}})
    state.apply({"r": 2, "a": "y", "e": [3], "n": 3, "m": {"j": 1}})
    assert state.snapshot() == {
        "r": 2,
        "a": ["x", "y"],
        "e": [1, 2, 3],
        "n": 5,
        "m": {"k": {"deep": [5]}, "j": 1},
    }
    assert state.get("m.k.deep.0") == 5 and state.get("m.nope.x") is None and lookup_path({}, "a.b") is None
    with pytest.raises(StateError, match=r"'m'.*merge"):
        state.apply({"m": [1]})
    with pytest.raises(StateError, match="undeclared state variable 'zz'"):
        state.apply({"zz": 1})


def test_conditions_are_total() -> None:
    data = {"x": 5, "s": "hello world", "d": {"ok": True}, "l": [1, 2]}
    assert holds(ConditionSpec(var="x", op="gt", value=3), data)
    assert not holds(ConditionSpec(var="s", op="lt", value=3), data)  # type mismatch: false, not an error
    assert holds(ConditionSpec(var="s", op="contains", value="world"), data)
    assert holds(ConditionSpec(var="d.ok", op="truthy"), data)
    assert holds(ConditionSpec(var="l", op="len_eq", value=2), data)
    assert holds(ConditionSpec(var="missing.x", op="is_null"), data)
    assert holds(ConditionSpec(var="x", op="in", value=[4, 5]), data)


def test_prefix_parts_tokenized_once_and_shared() -> None:
    registry = PrefixRegistry()
    sys_part = registry.register("sys", "System prompt.\n")
    with pytest.raises(ValueError, match="different text"):
        registry.register("sys", "other")
    renderer = PromptRenderer(ByteTokenizer())
    a = renderer.render([sys_part], "question one")
    b = renderer.render([sys_part], ["question", " two"])
    assert a.token_ids[: a.shared_prefix_tokens] == b.token_ids[: b.shared_prefix_tokens]
    assert a.shared_prefix_tokens == len("System prompt.\n") and a.parts == ("sys",)
    assert renderer.misses == 1 and renderer.hits == 1


async def test_event_subscribers_are_bounded_and_end_with_the_run() -> None:
    hub = EventHub()
    slow = hub.subscribe("r", max_buffer=2)
    for i in range(5):
        hub.publish("r", "token", "n", text=str(i))
    hub.publish("r", "run_finished", status="succeeded")
    got = [e async for e in slow]
    assert [e.data.get("text") for e in got] == ["0", "1"] and slow.dropped == 4
    assert not hub.has_subscribers("r")


def test_state_from_dataclass_and_annotations() -> None:
    @dataclasses.dataclass
    class S:
        name: str = "anon"
        notes: Annotated[list[str], "append"] = dataclasses.field(default_factory=list)
        total: Annotated[int, "add"] = 0

    assert [(v.name, v.reducer, v.default) for v in state_vars(S)] == [
        ("name", "replace", "anon"),
        ("notes", "append", []),
        ("total", "add", 0),
    ]
    with pytest.raises(TypeError, match="unknown node option"):
        llm(output="x", retry=3)
    p = Program(S)
    p.add_node("a", llm(slots=["name"]))
    with pytest.raises(ValueError, match="already defined"):
        p.add_node("a", llm())


async def test_passthrough_scheduler_salts_by_tenant() -> None:
    engine = FakeEngine()
    sched = PassthroughScheduler(engine, tenant_salt="server-secret")
    assert isinstance(sched, CallScheduler)
    ids = tuple(engine.tokenizer.encode("hi"))
    chunks = [c async for c in sched.generate(LLMCall("c1", "run1", "p", "n", "acme", ids))]
    assert chunks[-1].finished
    req = engine.requests[0]
    assert req.session_id == "run1" and req.cache_salt == sched.cache_salt("acme") != sched.cache_salt(
        "other"
    )
    assert PassthroughScheduler(engine).cache_salt("acme") is None
    with anyio.fail_after(5):
        assert (await collect(engine, req)).text == chunks[0].text


async def test_in_memory_journal_is_bounded_and_steps_serialise() -> None:
    from legato.programs.journal import InMemoryJournalStore, Step

    store = InMemoryJournalStore(max_runs=2)
    step = Step(0, "0:a", "a", "ok", writes={"x": [1, {"y": None}]}, next="b")
    for run in ("r1", "r2", "r1", "r3"):
        await store.append(run, step)
    assert store.run_ids() == ["r1", "r3"] and len(await store.steps("r1")) == 2
    assert await store.steps("r2") == []
    assert Step.from_dict(step.to_dict()) == step
