"""The builder SDK: write a declarative program in Python, LangGraph style.

```python
from typing import Annotated
import legato
from legato import END, Program, llm, tool_node, when

class State(TypedDict):
    question: str
    draft: str
    notes: Annotated[list[str], "append"]

p = Program(State, name="qa")
p.prefix("sys", "You are a careful assistant.\\n")
p.add_node("answer", llm(prefix=["sys"], slots=["question"], suffix="Answer:", output="draft"))
p.add_node("check", tool_node("lint", args={"text": legato.ref("draft")}, output="notes"))
p.add_edge(legato.START, "answer")
p.add_edge("answer", "check")
p.add_conditional_edges("check", {"answer": when("notes", "len_lt", 3)}, destinations=["answer", END])
program = p.compile()
```

`compile()` produces a `CompiledProgram`: the validated `ProgramSpec` (serialisable, lossless)
plus any Python callables used as routers (which run in-process but make `to_json` refuse,
because code does not travel over the wire).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import JsonValue

from legato.programs.model import ProgramGraph
from legato.programs.prompt import PrefixPart, default_prefixes
from legato.programs.spec import (
    END,
    START,
    ArgSpec,
    ConditionOp,
    ConditionSpec,
    EdgeSpec,
    LLMNodeSpec,
    MapNodeSpec,
    NodeSpec,
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
from legato.programs.state import Reducer
from legato.programs.validate import validate

PythonRouter = Callable[[dict[str, Any]], str]

__all__ = [
    "END",
    "START",
    "CompiledProgram",
    "NodeDraft",
    "Program",
    "fan_out",
    "llm",
    "ref",
    "route",
    "slot",
    "tool",
    "when",
]


class NotSerializableError(ValueError):
    """The program uses a Python router, which cannot be sent as JSON."""


# --- small constructors ------------------------------------------------------------------------


def ref(var: str) -> VarArg:
    """A tool argument read from state (`args={"path": ref("file")}`); other values are literals."""
    return VarArg(var=var)


def slot(var: str, label: str = "", suffix: str = "\n") -> SlotSpec:
    return SlotSpec(var=var, label=label, suffix=suffix)


def when(var: str, op: ConditionOp, value: JsonValue = None) -> ConditionSpec:
    return ConditionSpec(var=var, op=op, value=value)


def route(to: str, *conditions: ConditionSpec) -> RouteSpec:
    return RouteSpec(when=list(conditions), to=to)


# --- node factories ----------------------------------------------------------------------------

_COMMON = ("timeout_s", "retries", "backoff_s", "on_error", "error_output", "max_visits", "on_exhausted")


@dataclass(frozen=True)
class NodeDraft:
    """A node without a name yet; `Program.add_node(name, draft)` names it."""

    kind: str
    fields: dict[str, Any]
    prefix_parts: tuple[PrefixPart, ...] = ()

    def build(self, name: str, **common: Any) -> NodeSpec:
        data = {**self.fields, **{k: v for k, v in common.items() if v is not None}, "name": name}
        if self.kind == "llm":
            return LLMNodeSpec(**data)
        if self.kind == "tool":
            return ToolNodeSpec(**data)
        body = data.pop("body")
        assert isinstance(body, NodeDraft)
        body_spec = body.build(f"{name}.body")
        assert not isinstance(body_spec, MapNodeSpec)
        return MapNodeSpec(body=body_spec, **data)


def _prefix(parts: Sequence[str | PrefixPart]) -> tuple[list[str], tuple[PrefixPart, ...]]:
    names: list[str] = []
    known: list[PrefixPart] = []
    for part in parts:
        if isinstance(part, PrefixPart):
            names.append(part.name)
            known.append(part)
        else:
            names.append(part)
    return names, tuple(known)


def llm(
    *,
    prefix: Sequence[str | PrefixPart] = (),
    slots: Sequence[str | SlotSpec] = (),
    suffix: str = "",
    output: str | None = None,
    max_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    model: str | None = None,
    output_schema: dict[str, JsonValue] | None = None,
    on_parse_error: str = "raw",
    parse_default: JsonValue = None,
    **common: Any,
) -> NodeDraft:
    """An LLM node: prompt = prefix parts (names registered with `Program.prefix` /
    `register_prefix`, or `PrefixPart`s) + slots (variable names or `slot(...)`) + suffix."""
    names, parts = _prefix(prefix)
    _check_common(common)
    prompt = PromptSpec(
        parts=names, slots=[s if isinstance(s, SlotSpec) else SlotSpec(var=s) for s in slots], suffix=suffix
    )
    fields = dict(
        prompt=prompt,
        output=output,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop=list(stop),
        model=model,
        output_schema=output_schema,
        on_parse_error=on_parse_error,
        parse_default=parse_default,
        **common,
    )
    return NodeDraft("llm", fields, parts)


def tool(
    name: str,
    *,
    args: Mapping[str, Any] | None = None,
    args_var: str | None = None,
    output: str | None = None,
    **common: Any,
) -> NodeDraft:
    """A tool node: call the registered tool `name`. Argument values are literals, except
    `ref("var")` which reads state at run time."""
    _check_common(common)
    spec_args: dict[str, ArgSpec] = {
        k: v if isinstance(v, VarArg | ValueArg) else ValueArg(value=v) for k, v in (args or {}).items()
    }
    return NodeDraft("tool", dict(tool=name, args=spec_args, args_var=args_var, output=output, **common))


def fan_out(
    over: str,
    body: NodeDraft,
    *,
    output: str | None = None,
    item_var: str = "item",
    max_items: int = 64,
    concurrency: int | None = None,
    **common: Any,
) -> NodeDraft:
    """Map `body` over the list in state variable `over`, in parallel, and join the results (in
    item order) into `output`. The body sees the item as `item_var` (and `<item_var>_index`)."""
    _check_common(common)
    if body.kind == "map":
        raise ValueError("fan_out body must be an llm(...) or tool(...) node, not another fan_out")
    fields = dict(
        over=over,
        body=body,
        output=output,
        item_var=item_var,
        max_items=max_items,
        concurrency=concurrency,
        **common,
    )
    return NodeDraft("map", fields, body.prefix_parts)


def _check_common(common: Mapping[str, Any]) -> None:
    unknown = sorted(set(common) - set(_COMMON))
    if unknown:
        raise TypeError(f"unknown node option(s) {', '.join(unknown)}; allowed: {', '.join(_COMMON)}")


# --- state declarations --------------------------------------------------------------------------


def _default_for(tp: Any) -> JsonValue:
    origin = typing.get_origin(tp) or tp
    if origin is list:
        return []
    if origin is dict:
        return {}
    if origin is str:
        return ""
    if origin is bool:
        return False
    if origin in (int, float):
        return 0
    return None


def state_vars(state: type | Mapping[str, Any] | Sequence[VarSpec] | None) -> list[VarSpec]:
    """Variables from a TypedDict / dataclass / annotated class (`Annotated[T, "append"]` or
    `Annotated[T, Reducer.APPEND]` picks a reducer; class-level values are defaults), from a
    mapping `{name: reducer-name | VarSpec}`, or a list of `VarSpec`."""
    if state is None:
        return []
    if isinstance(state, Mapping):
        return [v if isinstance(v, VarSpec) else VarSpec(name=k, reducer=str(v)) for k, v in state.items()]  # type: ignore[arg-type]
    if not isinstance(state, type):
        return list(state)
    hints = typing.get_type_hints(state, include_extras=True)
    defaults: dict[str, Any] = {}
    if dataclasses.is_dataclass(state):
        for f in dataclasses.fields(state):
            if f.default is not dataclasses.MISSING:
                defaults[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                defaults[f.name] = f.default_factory()
    result: list[VarSpec] = []
    for name, hint in hints.items():
        reducer = Reducer.REPLACE
        base = hint
        if typing.get_origin(hint) is typing.Annotated:
            base, *meta = typing.get_args(hint)
            for m in meta:
                if isinstance(m, str) and m in Reducer.__members__.values():
                    reducer = Reducer(m)
        if name in defaults:
            default = defaults[name]
        elif name in vars(state) and not isinstance(vars(state)[name], types.FunctionType):
            default = vars(state)[name]
        else:
            default = _default_for(base)
        result.append(VarSpec(name=name, reducer=reducer.value, default=default))  # type: ignore[arg-type]
    return result


# --- the builder -----------------------------------------------------------------------------------


@dataclass
class CompiledProgram:
    """A validated program ready to run: its spec, graph, and any in-process Python routers."""

    spec: ProgramSpec
    graph: ProgramGraph
    python_routers: dict[str, PythonRouter] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def serializable(self) -> bool:
        return not self.python_routers

    def to_json(self, indent: int | None = None) -> str:
        if self.python_routers:
            raise NotSerializableError(
                f"program {self.name!r} routes with Python callables at node(s) "
                f"{', '.join(sorted(self.python_routers))}; "
                "use declarative routes (when/route) to send it as JSON"
            )
        return self.spec.to_json(indent)

    @classmethod
    def from_spec(cls, spec: ProgramSpec, tools: Container[str] | None = None) -> CompiledProgram:
        return cls(spec, validate(spec, tools))

    @classmethod
    def from_json(cls, text: str | bytes, tools: Container[str] | None = None) -> CompiledProgram:
        return cls.from_spec(ProgramSpec.from_json(text), tools)


class Program:
    """LangGraph-like builder: declare state, add nodes and edges, `compile()`."""

    def __init__(
        self,
        state: type | Mapping[str, Any] | Sequence[VarSpec] | None = None,
        *,
        name: str = "program",
        description: str = "",
    ) -> None:
        self.name = name
        self.description = description
        self._vars = state_vars(state)
        self._nodes: dict[str, NodeSpec] = {}
        self._parts: dict[str, str] = {}
        self._edges: list[EdgeSpec] = []
        self._routers: list[RouterSpec] = []
        self._python: dict[str, PythonRouter] = {}
        self._entry: str | None = None

    def prefix(self, name: str, text: str) -> PrefixPart:
        """Declare a prefix part for this program (and register it process-wide)."""
        part = default_prefixes.register(name, text)
        self._parts[name] = text
        return part

    def add_node(self, name: str, node: NodeDraft, **common: Any) -> Program:
        if name in self._nodes:
            raise ValueError(f"node {name!r} is already defined in program {self.name!r}")
        _check_common(common)
        for part in node.prefix_parts:
            self._parts[part.name] = part.text
        self._nodes[name] = node.build(name, **common)
        if self._entry is None:
            self._entry = name
        return self

    def set_entry(self, name: str) -> Program:
        self._entry = name
        return self

    def add_edge(self, source: str, target: str) -> Program:
        if source == START:
            return self.set_entry(target)
        self._edges.append(EdgeSpec(source=source, target=target))
        return self

    def add_conditional_edges(
        self,
        source: str,
        router: PythonRouter | Sequence[RouteSpec] | Mapping[str, ConditionSpec | Sequence[ConditionSpec]],
        destinations: Sequence[str] | None = None,
        *,
        default: str | None = None,
    ) -> Program:
        """Route out of `source`. `router` is a list of `route(to, *conditions)`, a mapping
        `{destination: condition(s)}`, or a Python callable `state -> destination` (in-process
        only). `destinations` declares everywhere the router may go (default: the route targets
        plus the default); `default` (END unless given) is taken when no route matches."""
        if callable(router):
            if not destinations:
                raise ValueError(
                    f"router of node {source!r}: a Python router needs explicit destinations=[...]"
                )
            self._python[source] = router
            spec = RouterSpec(
                source=source,
                destinations=list(destinations),
                default=default or destinations[0],
                python=getattr(router, "__qualname__", repr(router)),
            )
        else:
            if isinstance(router, Mapping):
                routes = [
                    RouteSpec(to=to, when=[conds] if isinstance(conds, ConditionSpec) else list(conds))
                    for to, conds in router.items()
                ]
            else:
                routes = list(router)
            dflt = default if default is not None else END
            declared = (
                list(destinations)
                if destinations is not None
                else list(dict.fromkeys([r.to for r in routes] + [dflt]))
            )
            spec = RouterSpec(source=source, routes=routes, default=dflt, destinations=declared)
        self._routers.append(spec)
        return self

    def to_spec(self) -> ProgramSpec:
        """The spec as built so far (not validated)."""
        used = {p for n in self._nodes.values() for p in _parts_of(n)}
        parts = dict(self._parts)
        for name in used - set(parts):
            if name in default_prefixes:
                parts[name] = default_prefixes.get(name).text
        return ProgramSpec(
            name=self.name,
            description=self.description,
            state=self._vars,
            prefix_parts=parts,
            nodes=list(self._nodes.values()),
            entry=self._entry or "",
            edges=self._edges,
            routers=self._routers,
        )

    def compile(self, tools: Container[str] | None = None) -> CompiledProgram:
        """Validate and freeze. Pass a `ToolRegistry` to check tool names now."""
        spec = self.to_spec()
        return CompiledProgram(spec, validate(spec, tools), dict(self._python))


def _parts_of(node: NodeSpec) -> list[str]:
    if isinstance(node, MapNodeSpec):
        node = node.body
    return list(node.prompt.parts) if isinstance(node, LLMNodeSpec) else []
