"""Run records -> API views: the current state rebuilt from the journal, pending tool calls."""

from __future__ import annotations

from typing import Any

from legato.programs.journal import Step
from legato.programs.spec import ProgramSpec, VarSpec
from legato.programs.state import State, StateError
from legato.server.models import PendingToolCallView, RunView, StepView
from legato.server.runs import jsonable
from legato.server.store.base import RunRecord
from legato.tools.client import PendingToolCall


def current_state(record: RunRecord, steps: list[Step]) -> dict[str, Any] | None:
    """The final state of a succeeded run; otherwise inputs + journaled writes, through the
    program's reducers (what a resumed run would start from)."""
    if record.status == "succeeded" and isinstance(record.output, dict):
        return record.output
    try:
        variables = [VarSpec.model_validate(v) for v in record.spec.get("state", [])]  # type: ignore[union-attr]
        state = State(variables)
        state.set_inputs(record.inputs)
        for step in steps:
            if step.status in ("ok", "error"):
                state.apply(step.writes)
        return jsonable(state.snapshot())  # type: ignore[no-any-return]
    except (StateError, ValueError, TypeError, AttributeError):
        return None


def step_view(step: Step) -> StepView:
    return StepView(
        index=step.index,
        node=step.node,
        status=step.status,
        writes=jsonable(step.writes),
        next=step.next,
        error=step.error,
        error_kind=step.error_kind,
        attempts=step.attempts,
        started_at=step.started_at,
        finished_at=step.finished_at,
    )


def run_view(
    record: RunRecord,
    steps: list[Step] | None = None,
    pending: list[PendingToolCall] | None = None,
) -> RunView:
    return RunView(
        id=record.id,
        program_id=record.program_id,
        program_name=record.program_name,
        status=record.status,
        inputs=record.inputs,
        metadata=record.metadata,
        state=current_state(record, steps) if steps is not None else None,
        output=record.output if record.status == "succeeded" else None,
        error=record.error,
        created_at=record.created_at,
        updated_at=record.updated_at,
        finished_at=record.finished_at,
        resumed=record.resumed,
        steps=[step_view(s) for s in steps] if steps is not None else None,
        pending_tool_calls=[
            PendingToolCallView(call_id=p.call_id, name=p.name, args=jsonable(p.args), timeout_s=p.timeout_s)
            for p in pending or []
        ],
    )


def program_spec(record_spec: dict[str, Any]) -> ProgramSpec:
    return ProgramSpec.model_validate(record_spec)
