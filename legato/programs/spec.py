"""The wire spec of a declarative program: pydantic v2 models, JSON in, JSON out.

This is the one representation of a declarative program. The builder produces it, REST clients
send it, the validator checks it, the executor runs it and the scheduler reads it (which node
comes next, which prefix parts it shares). Everything in it is plain data, so
`ProgramSpec.model_validate_json(spec.model_dump_json()) == spec` for every program: routers are
declarative conditions, never code. (A builder program may also use a Python callable as a
router; such a program runs in-process but refuses to serialise, see `builder.CompiledProgram`.)

Models are frozen and reject unknown fields, so a typo in a client's JSON is an error that names
the field instead of a silently ignored key.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from legato.engine_adapter.fields import (
    INTEGRAL,
    STRICT_REQUEST,
    Seconds,
    Seed,
    StopString,
    Temperature,
    TopP,
)

END = "__end__"
"""Pseudo node name: routing here ends the run."""

START = "__start__"
"""Pseudo node name accepted by the builder's `add_edge(START, node)` to set the entry node."""

ReducerName = Literal["replace", "append", "extend", "add", "merge"]

# --- numeric bounds, stated in the JSON schema (explicit so clients can read them) -------------
MAX_FAN_OUT = 4096  # MapNodeSpec.max_items
MAX_LOOP_BOUND = 1000  # max_visits
MAX_RETRIES = 10
MAX_TIMEOUT_S = 3600.0  # a step's attempt; also the longest retry backoff
MAX_MAX_TOKENS = 32_768
MAX_STOP = 64

Retries = Annotated[int, Field(ge=0, le=MAX_RETRIES), INTEGRAL]
StepTimeout = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)]
# The first retry delay doubles at each retry: bounded so the longest schedule (MAX_RETRIES
# doublings) sleeps at most MAX_TIMEOUT_S in all, 3600 / (2^10 - 1) = 3.52 s.
MAX_BACKOFF_S = MAX_TIMEOUT_S / (2**MAX_RETRIES - 1)
Backoff = Annotated[Seconds, Field(le=MAX_BACKOFF_S)]
LoopBound = Annotated[int, Field(ge=1, le=MAX_LOOP_BOUND), INTEGRAL]
FanOut = Annotated[int, Field(ge=1, le=MAX_FAN_OUT), INTEGRAL]
NodeMaxTokens = Annotated[int, Field(ge=1, le=MAX_MAX_TOKENS), INTEGRAL]

ConditionOp = Literal[
    "eq", "ne", "lt", "le", "gt", "ge",
    "contains", "not_contains", "in", "not_in",
    "truthy", "falsy", "is_null", "not_null",
    "len_eq", "len_gt", "len_lt",
]  # fmt: skip


class _Spec(BaseModel):
    model_config = STRICT_REQUEST | ConfigDict(frozen=True)


class VarSpec(_Spec):
    """One state variable. `reducer` says how a node's write combines with the current value."""

    name: str
    reducer: ReducerName = "replace"
    default: JsonValue = None
    description: str = ""


class ConditionSpec(_Spec):
    """`<value at var> <op> <value>`. `var` may be a dotted path into a dict or list
    (`result.ok`, `items.0`); its first segment must be a declared state variable."""

    var: str
    op: ConditionOp
    value: JsonValue = None


class RouteSpec(_Spec):
    """Go to `to` when every condition in `when` holds (an empty list always holds)."""

    when: list[ConditionSpec] = Field(default_factory=list)
    to: str


class RouterSpec(_Spec):
    """Conditional edges out of `source`. Routes are tried in order; none matching means
    `default`. Every route target and the default must be in `destinations`, which is what the
    scheduler plans with (it can see every place the run may go next)."""

    source: str
    routes: list[RouteSpec] = Field(default_factory=list)
    default: str = END
    destinations: list[str]
    # Set when the router is a Python callable (builder only); such a router has no routes and
    # the program cannot be serialised. Holds the callable's qualified name for messages.
    python: str | None = None


class EdgeSpec(_Spec):
    source: str
    target: str


class SlotSpec(_Spec):
    """A prompt slot: renders as `label + str(value of var) + suffix` (non-strings as JSON)."""

    var: str
    label: str = ""
    suffix: str = "\n"


class PromptSpec(_Spec):
    """Named prefix parts (shared across calls and programs, tokenized once) followed by slots
    bound to state variables, then a literal `suffix` (e.g. `"Answer:"`)."""

    parts: list[str] = Field(default_factory=list)
    slots: list[SlotSpec] = Field(default_factory=list)
    suffix: str = ""


class VarArg(_Spec):
    """A tool argument read from state (dotted path allowed)."""

    var: str


class ValueArg(_Spec):
    """A literal tool argument."""

    value: JsonValue


ArgSpec = VarArg | ValueArg


class _NodeCommon(_Spec):
    name: str
    timeout_s: StepTimeout | None = None  # per attempt
    retries: Retries = 0  # extra attempts after a failure, with exponential backoff
    backoff_s: Backoff = 0.05  # first retry delay; doubles each attempt
    on_error: str | None = None  # node to go to when the step fails (None: the run fails)
    error_output: str | None = None  # state variable that receives the error text
    max_visits: LoopBound | None = None  # loop bound: visits beyond this go to `on_exhausted`
    on_exhausted: str | None = None  # None means END


class LLMNodeSpec(_NodeCommon):
    kind: Literal["llm"] = "llm"
    prompt: PromptSpec
    output: str | None = None
    model: str | None = None
    max_tokens: NodeMaxTokens = 256
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    seed: Seed | None = None
    stop: list[StopString] = Field(default_factory=list, max_length=MAX_STOP)
    # When set, the output is parsed as JSON (the first {...} / [...] in the text) and checked
    # against the schema's top-level "type" / "required".
    output_schema: dict[str, JsonValue] | None = None
    # What to write when parsing fails: the raw text, `parse_default`, or fail the step.
    on_parse_error: Literal["raw", "default", "fail"] = "raw"
    parse_default: JsonValue = None


class ToolNodeSpec(_NodeCommon):
    kind: Literal["tool"] = "tool"
    tool: str
    args: dict[str, ArgSpec] = Field(default_factory=dict)
    # A state variable holding a dict of further arguments (e.g. parsed from an LLM's action).
    args_var: str | None = None
    output: str | None = None


BodySpec = Annotated[LLMNodeSpec | ToolNodeSpec, Field(discriminator="kind")]


class MapNodeSpec(_NodeCommon):
    """Fan-out and join: run `body` once per item of the list at `over`, in parallel (at most
    `concurrency` at once), then write the list of results, in item order, to `output`. Inside
    the body, `item_var` names the current item (and `<item_var>_index` its position)."""

    kind: Literal["map"] = "map"
    over: str
    item_var: str = "item"
    body: BodySpec
    output: str | None = None
    max_items: FanOut = 64
    concurrency: FanOut | None = None


NodeSpec = Annotated[LLMNodeSpec | ToolNodeSpec | MapNodeSpec, Field(discriminator="kind")]


class ProgramSpec(_Spec):
    """A whole declarative program."""

    spec_version: Literal[1] = 1
    name: str
    description: str = ""
    state: list[VarSpec] = Field(default_factory=list)
    prefix_parts: dict[str, str] = Field(default_factory=dict)
    nodes: list[NodeSpec]
    entry: str
    edges: list[EdgeSpec] = Field(default_factory=list)
    routers: list[RouterSpec] = Field(default_factory=list)

    def node(self, name: str) -> LLMNodeSpec | ToolNodeSpec | MapNodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"program {self.name!r} has no node {name!r}")

    def to_json(self, indent: int | None = None) -> str:
        return self.model_dump_json(indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> ProgramSpec:
        return cls.model_validate_json(text)


def json_schema() -> dict[str, object]:
    """JSON Schema of `ProgramSpec` (what `legato schema` prints)."""
    return ProgramSpec.model_json_schema()
