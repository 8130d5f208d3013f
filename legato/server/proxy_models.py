"""The OpenAI proxy's request and response models: OpenAI's requests plus the program fields
(`program_id`, hints), how those fields are merged from the body, `extra_body` and SkyRL's
`X-Session-ID` header, and the live-programs listing. Used by `server/proxy.py`."""

from __future__ import annotations

from typing import Literal

from fastapi import Request
from pydantic import BaseModel, Field

from legato.engine_adapter.fields import STRICT_REQUEST, Seconds
from legato.engine_adapter.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
)
from legato.server.errors import ApiError

MAX_ID_LEN = 256

# --- request models: OpenAI's, plus the program fields ----------------------------------------


class ProgramFields(BaseModel):
    """What ties a request to an agent program, and what the agent knows comes next."""

    model_config = STRICT_REQUEST  # as the OpenAI fields: unknown ones are a 400, types strict

    program_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ID_LEN,
        description="Agent program this call belongs to (namespaced by your tenant). Calls with the "
        "same id are scheduled as one program. Omitted: the call is a program of its own.",
    )
    is_last_step: bool | None = Field(
        default=None, description="No later call of this program reuses this call's prefix: end it."
    )
    next_tool: str | None = Field(
        default=None, min_length=1, max_length=128, description="The tool the agent runs with this output."
    )
    expected_tool_latency_s: Seconds | None = Field(
        default=None, description="How long that tool is expected to take, in seconds."
    )


class ProxyChatRequest(ChatCompletionRequest, ProgramFields):
    model_config = STRICT_REQUEST
    extra_body: ProgramFields | None = Field(
        default=None, description="Program fields nested, as raw clients may send them."
    )


class ProxyCompletionRequest(CompletionRequest, ProgramFields):
    model_config = STRICT_REQUEST
    extra_body: ProgramFields | None = Field(
        default=None, description="Program fields nested, as raw clients may send them."
    )


class ProgramReleased(BaseModel):
    program_id: str
    released: Literal[True] = True
    calls: int = Field(description="LLM calls the program made.")
    duration_s: float = Field(description="Seconds from its first call to the release.")


SESSION_HEADER = "x-session-id"  # SkyRL's HTTP inference client sends its trajectory id here
REPLICA_HEADER = "x-legato-replica"


class LiveProgram(BaseModel):
    program_id: str
    calls: int = Field(description="LLM calls the program made so far.")
    in_flight: int = Field(description="Calls running now.")
    step: str | None = Field(description="What runs between calls (the hinted tool, or `client`).")
    age_s: float = Field(description="Seconds since its first call.")
    idle_s: float = Field(description="Seconds since its last call started or ended.")


class LivePrograms(BaseModel):
    object: Literal["list"] = "list"
    data: list[LiveProgram]
    idle_timeout_s: float = Field(description="A program with no call for this long ends by itself.")


def program_fields(
    body: ProxyChatRequest | ProxyCompletionRequest, raw: Request | None = None
) -> ProgramFields:
    """Top-level fields, overridden by those set inside `extra_body`; without a `program_id`,
    the `X-Session-ID` header (SkyRL's) names the program."""
    merged = ProgramFields(
        program_id=body.program_id,
        is_last_step=body.is_last_step,
        next_tool=body.next_tool,
        expected_tool_latency_s=body.expected_tool_latency_s,
    )
    if body.extra_body is not None:
        for name in body.extra_body.model_fields_set:
            setattr(merged, name, getattr(body.extra_body, name))
    session = raw.headers.get(SESSION_HEADER) if raw is not None else None
    if merged.program_id is None and session is not None:
        if not 1 <= len(session) <= MAX_ID_LEN:
            raise ApiError(
                400,
                f"X-Session-ID must be 1 to {MAX_ID_LEN} characters (it is the program_id)",
                param=SESSION_HEADER,
            )
        merged.program_id = session
    return merged
