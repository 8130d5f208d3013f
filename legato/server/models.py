"""Request and response bodies of the workflow API (what OpenAPI documents)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator
from pydantic.json_schema import SkipJsonSchema

from legato.engine_adapter.fields import STRICT_REQUEST
from legato.programs.spec import ProgramSpec
from legato.server.store.base import RunStatusName


class _Request(BaseModel):
    model_config = STRICT_REQUEST


class ProgramCreate(_Request):
    """Register a declarative program (the `legato schema` wire format) for later runs."""

    program: ProgramSpec


class ProgramInfo(BaseModel):
    id: str
    name: str
    created_at: float
    nodes: int
    program: ProgramSpec


class ProgramList(BaseModel):
    data: list[ProgramInfo]


class RunCreate(_Request):
    """Start a run of a registered program (`program_id`) or of an inline `program`."""

    # exactly one of the two, as the schema's `oneOf` says (null is not "absent": it is refused)
    model_config = STRICT_REQUEST | ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["program_id"]}, {"required": ["program"]}]}
    )

    program_id: str | SkipJsonSchema[None] = Field(
        None, min_length=1, max_length=128, description="id from POST /v1/programs"
    )
    program: ProgramSpec | SkipJsonSchema[None] = Field(
        None, description="an inline program (instead of program_id)"
    )
    inputs: dict[str, JsonValue] = Field(default_factory=dict, description="initial state variables")
    metadata: dict[str, str] = Field(default_factory=dict, description="free-form labels, returned as given")

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in ("program_id", "program"):
                if name in data and data[name] is None:
                    raise ValueError(f"{name} is null: leave it out instead")
        return data

    @model_validator(mode="after")
    def _one_program(self) -> RunCreate:
        if (self.program_id is None) == (self.program is None):
            raise ValueError("give exactly one of program_id (a registered program) or program (inline)")
        return self


class StepView(BaseModel):
    index: int
    node: str
    status: str
    writes: dict[str, Any]
    next: str | None
    error: str | None
    error_kind: str | None
    attempts: int
    started_at: float
    finished_at: float


class PendingToolCallView(BaseModel):
    call_id: str
    name: str
    args: dict[str, Any]
    timeout_s: float


class RunView(BaseModel):
    id: str
    program_id: str | None
    program_name: str
    status: RunStatusName
    inputs: dict[str, Any]
    metadata: dict[str, str]
    state: dict[str, Any] | None = Field(None, description="current state (the final state once finished)")
    output: Any = Field(None, description="final state of a succeeded run")
    error: str | None
    created_at: float
    updated_at: float
    finished_at: float | None
    resumed: int = Field(0, description="times a restarted server resumed this run")
    steps: list[StepView] | None = Field(None, description="the step journal (GET /v1/runs/{id} only)")
    pending_tool_calls: list[PendingToolCallView] = Field(default_factory=list)


class RunList(BaseModel):
    data: list[RunView]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; null at the end")


class ToolResultSubmit(_Request):
    """The result of a client-side tool call the run is waiting for."""

    call_id: str = Field(..., min_length=1, max_length=512)
    output: JsonValue = None
    error: str | None = Field(
        None, description="set when the tool failed (the message is shown to the program)"
    )


class ToolResultAccepted(BaseModel):
    run_id: str
    call_id: str
    accepted: Literal[True] = True


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    store: str
    active_runs: int
    detail: str | None = None


class LimitsView(BaseModel):
    max_body_bytes: int
    max_program_bytes: int
    max_inputs_bytes: int
    max_prompt_chars: int
    max_runs_per_page: int
    max_nodes: int
    max_fan_out: int
    max_loop_bound: int
    max_model_len: int | None
    max_n: int = Field(description="OpenAI `n` / `best_of`: most samples of one prompt.")
    max_top_logprobs: int = Field(description="OpenAI `top_logprobs` / completions `logprobs`.")
    max_planned_calls: int = Field(
        description="Most LLM calls one run may plan (loop bounds x map fan-out x attempts)."
    )
