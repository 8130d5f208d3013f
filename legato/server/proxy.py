"""OpenAI-compatible agent proxy: `/v1/chat/completions`, `/v1/completions`, `/v1/models`, and
the live programs at `GET /v1/proxy/programs` and `POST /v1/proxy/programs/{program_id}/release`
(`POST /v1/programs/{program_id}/release` is its deprecated alias).

Agents written against the OpenAI API get program-level scheduling without declaring a graph:
each request carries a `program_id` (top level, or inside `extra_body` — the official client's
`extra_body=` merges its keys into the top-level JSON, raw clients may nest them — or SkyRL's
`X-Session-ID` header) and optional hints (`is_last_step`, `next_tool`,
`expected_tool_latency_s`). Every answer names the replica that ran the call in its
`X-Legato-Replica` header. The `ProgramTracker` turns the
sequence of requests into program events (run started, tool started / finished, run finished)
and every request becomes an `LLMCall` of that run, so the scheduler's policy pins the program's
KV through its tool calls, keeps it on one replica and shares the GPU fairly between programs
and tenants. A request without `program_id` is a one-call program.

Rules kept from the engine server (`legato.engine_adapter.server`, whose request/response
models, validation and SSE streaming this reuses): the first chunk is awaited before the
response starts, so scheduling or engine failures become status codes; a client that goes away
aborts its call at once; bad input is a 4xx that names the field. Security: the tenant comes
from the API key (`current_tenant`), program ids are namespaced by it, and the prefix-cache salt
is derived by the scheduler from the tenant id — a client's `cache_salt` (like `priority` and
`request_id`) is refused with a 400. A request with `n > 1` is one call of its program: one
engine request whose samples share a single prefill (the engine forks them), so the scheduler
admits, routes and pins it as one call; the program continues from `choices[0]`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response

from legato.engine_adapter.base import (
    Engine,
    GenerateRequest,
    GrammarSpec,
    TokenChunk,
    assemble_samples,
)
from legato.engine_adapter.openai_api import (
    ChatCompletionResponse,
    CompletionResponse,
    ModelCard,
    ModelList,
    SamplingFields,
)
from legato.engine_adapter.server.errors import stream_responses
from legato.engine_adapter.server.lifecycle import (
    DEFAULT_CHUNK_TIMEOUT_S,
    EventStream,
    collect_or_abort,
)
from legato.engine_adapter.server.openai_calls import chat_response, completion_response, openai_request
from legato.engine_adapter.server.service import EngineService
from legato.engine_adapter.server.streams import chat_events, completion_events
from legato.engine_adapter.server.strict_json import StrictJSONRoute
from legato.scheduler.base import CallScheduler
from legato.scheduler.events import CallHints, LLMCall
from legato.server.auth import QuotaTracker, Tenant, current_tenant
from legato.server.errors import ApiError, responses
from legato.server.metrics import ServiceMetrics
from legato.server.programs_tracker import (
    DEFAULT_IDLE_TIMEOUT_S,
    Program,
    ProgramTracker,
    TooManyPrograms,
)
from legato.server.proxy_generation import CallOutcome, ScheduledGeneration, placed, server_errors
from legato.server.proxy_models import (
    MAX_ID_LEN,
    LiveProgram,
    LivePrograms,
    ProgramFields,
    ProgramReleased,
    ProxyChatRequest,
    ProxyCompletionRequest,
    program_fields,
)


class Proxy:
    """Shared by the proxy's routes: validation (`EngineService`), the program tracker, metrics."""

    def __init__(
        self,
        scheduler: CallScheduler,
        engine: Engine,
        *,
        max_model_len: int | None = None,
        quotas: QuotaTracker | None = None,
        metrics: Callable[[], ServiceMetrics | None] = lambda: None,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        chunk_timeout_s: float = DEFAULT_CHUNK_TIMEOUT_S,
    ) -> None:
        limit = max_model_len if max_model_len is not None else getattr(engine, "max_model_len", None)
        self.svc = EngineService(engine, limit if isinstance(limit, int) else None, chunk_timeout_s)
        self.scheduler = scheduler
        self.quotas = quotas
        self.metrics = metrics
        self.tracker = ProgramTracker(scheduler, idle_timeout_s=idle_timeout_s, on_finish=self._finished)

    def _finished(self, program: Program, status: str, why: str, seconds: float) -> None:
        m = self.metrics()
        if m is not None:
            m.observe_run(source="proxy", status=status, seconds=seconds)
            m.programs_finished.labels(why).inc()

    def sampling_request(
        self,
        body: SamplingFields,
        prompt: tuple[int, ...],
        *,
        max_tokens: int | None,
        field: str,
        id_prefix: str,
        grammar: GrammarSpec | None = None,
    ) -> GenerateRequest:
        """Validated sampling as a `GenerateRequest` (its id names the response; the cache salt is
        left unset here: the scheduler derives it from the tenant)."""
        with server_errors():
            return openai_request(
                self.svc,
                body,
                prompt,
                max_tokens=max_tokens,
                max_tokens_field=field,
                id_prefix=id_prefix,
                client_routing=False,
                grammar=grammar,
            )

    async def start(
        self,
        tenant: Tenant,
        fields: ProgramFields,
        request: GenerateRequest,
        node: str,
        group: tuple[str, int] | None = None,
    ) -> ScheduledGeneration:
        """Register the call with its program and wait for its first chunk. `group`: the group
        the program belongs to and the prompt tokens its members share (an RL group: the
        scheduler holds that prompt once per replica and keeps the members together)."""
        if self.quotas is not None:
            self.quotas.check_tokens(tenant)
        one_off = fields.program_id is None
        program_id = fields.program_id or f"call-{uuid.uuid4().hex}"
        hints = CallHints(
            next_tool=fields.next_tool,
            expected_tool_latency_s=fields.expected_tool_latency_s,
            is_last_step=True if one_off else bool(fields.is_last_step),
        )
        try:
            program = self.tracker.begin_call(tenant.id, program_id, None if group is None else group[0])
        except TooManyPrograms as exc:
            raise ApiError(429, str(exc), param="program_id", retry_after_s=1.0) from exc
        call = LLMCall(
            call_id=request.request_id,
            run_id=program.run_id,
            program=program_id,
            node=node,
            tenant=tenant.id,
            prompt_token_ids=request.prompt_token_ids,
            sampling=request.sampling,
            group_prefix_tokens=None if group is None else group[1],
            hints=hints,
        )
        started = time.monotonic()

        def on_close(outcome: CallOutcome) -> None:
            ok = outcome.finish_reason != "abort"
            self.tracker.end_call(program, hints, ok=ok)
            m = self.metrics()
            if m is not None:
                m.observe_call(
                    source="proxy", finish_reason=outcome.finish_reason, seconds=time.monotonic() - started
                )

        generation = ScheduledGeneration(self.scheduler, call, request, self.svc.chunk_timeout_s, on_close)
        with server_errors():
            await generation.start()  # closes the generation itself when it fails
        replica_of = getattr(self.scheduler, "replica_of", None)
        generation.replica = replica_of(call.call_id) if replica_of is not None else None
        return generation

    async def collect(self, raw: Request, generation: ScheduledGeneration) -> list[TokenChunk] | None:
        with server_errors():
            return await collect_or_abort(raw, generation)

    async def reap_idle(self, period_s: float = 10.0) -> None:
        """Finish idle programs every `period_s` (run it in the app's task group). Without it
        they still end at the next call or /metrics scrape, which sweep too."""
        while True:
            await anyio.sleep(period_s)
            self.tracker.sweep()

    def router(self) -> APIRouter:
        """The routes (tenants come from `current_tenant`; tests may swap it through FastAPI's
        `app.dependency_overrides`)."""
        return _routes(self)


TenantDep = Annotated[Tenant, Depends(current_tenant)]


def _routes(proxy: Proxy) -> APIRouter:
    router = APIRouter(tags=["openai-proxy"], route_class=StrictJSONRoute)
    svc = proxy.svc

    @router.get(
        "/v1/models", response_model=ModelList, responses=responses(), summary="The model served here."
    )
    async def models(tenant: TenantDep) -> ModelList:
        return ModelList(data=[ModelCard(id=svc.model, max_model_len=svc.max_model_len)])

    @router.post(
        "/v1/chat/completions",
        response_model=ChatCompletionResponse,
        responses={**stream_responses(ChatCompletionResponse, "The chat completion"), **responses(503)},
        summary="Chat completion (OpenAI), scheduled as a call of the agent program `program_id`.",
    )
    async def chat_completions(body: ProxyChatRequest, raw: Request, tenant: TenantDep) -> Response:
        with server_errors():
            svc.check_model(body.model)
            chat = await svc.chat_prompt(body)
        req = proxy.sampling_request(
            body,
            chat.prompt,
            max_tokens=chat.max_tokens,
            field=chat.max_tokens_field,
            id_prefix="chatcmpl",
            grammar=chat.plan.grammar,
        )
        generation = await proxy.start(tenant, program_fields(body, raw), req, "chat")
        if body.stream:
            return placed(EventStream(chat_events(svc, body, req, generation, chat.plan)), generation)
        chunks = await proxy.collect(raw, generation)
        if chunks is None:
            return Response(status_code=499)
        return placed(
            chat_response(svc, body, chat.prompt, assemble_samples(req, chunks), chat.plan), generation
        )

    @router.post(
        "/v1/completions",
        response_model=CompletionResponse,
        responses={**stream_responses(CompletionResponse, "The completion"), **responses(503)},
        summary="Text completion (OpenAI), scheduled as a call of the agent program `program_id`.",
    )
    async def completions(body: ProxyCompletionRequest, raw: Request, tenant: TenantDep) -> Response:
        with server_errors():
            svc.check_model(body.model)
            prompt = svc.prompt_ids(body.prompt)
        req = proxy.sampling_request(
            body, prompt, max_tokens=body.max_tokens, field="max_tokens", id_prefix="cmpl"
        )
        generation = await proxy.start(tenant, program_fields(body, raw), req, "completion")
        if body.stream:
            return placed(EventStream(completion_events(svc, body, req, generation)), generation)
        chunks = await proxy.collect(raw, generation)
        if chunks is None:
            return Response(status_code=499)
        return placed(completion_response(svc, body, prompt, assemble_samples(req, chunks)), generation)

    @router.get(
        "/v1/proxy/programs",
        response_model=LivePrograms,
        responses=responses(),
        summary="The live agent programs of this tenant (called, not yet released, ended or idle).",
    )
    async def live_programs(tenant: TenantDep) -> LivePrograms:
        tracker = proxy.tracker
        tracker.sweep()
        now = tracker.clock()
        data = [
            LiveProgram(
                program_id=p.program_id,
                calls=p.calls,
                in_flight=p.in_flight,
                step=p.tool,
                age_s=round(now - p.started_at, 6),
                idle_s=round(now - p.last_seen, 6),
            )
            for p in tracker.programs.values()
            if p.tenant == tenant.id
        ]
        return LivePrograms(data=data, idle_timeout_s=tracker.idle_timeout_s)

    async def release(program_id: str, tenant: Tenant) -> ProgramReleased:
        program = proxy.tracker.release(tenant.id, program_id)
        if program is None:
            raise ApiError(
                404,
                f"no live program {program_id!r} for this tenant (never called, already released, or "
                f"ended after {proxy.tracker.idle_timeout_s:.0f} s idle)",
                param="program_id",
            )
        return ProgramReleased(
            program_id=program_id,
            calls=program.calls,
            duration_s=round(time.monotonic() - program.started_at, 6),
        )

    @router.post(
        "/v1/proxy/programs/{program_id}/release",
        response_model=ProgramReleased,
        responses=responses(),
        summary="End an agent program: its KV is no longer kept for a next call.",
    )
    async def release_program(
        program_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LEN)], tenant: TenantDep
    ) -> ProgramReleased:
        return await release(program_id, tenant)

    @router.post(
        "/v1/programs/{program_id}/release",
        response_model=ProgramReleased,
        responses=responses(),
        deprecated=True,
        summary="Deprecated alias of POST /v1/proxy/programs/{program_id}/release.",
    )
    async def release_program_old_path(
        program_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LEN)], tenant: TenantDep
    ) -> ProgramReleased:
        return await release(program_id, tenant)

    return router


def proxy_router(state: Any) -> APIRouter:
    """The proxy's routes for the REST app (`app.include_router(proxy_router(state))`); the
    `Proxy` is kept in `state.extras["proxy"]` (metrics read its program tracker)."""
    extras: dict[str, Any] = state.extras
    proxy = Proxy(
        state.scheduler,
        state.engine,
        quotas=state.quotas,
        metrics=lambda: extras.get("metrics"),
    )
    extras["proxy"] = proxy
    metrics = extras.get("metrics")
    if isinstance(metrics, ServiceMetrics):
        metrics.sources.tracker = proxy.tracker
    return proxy.router()


__all__ = ["Proxy", "ProxyChatRequest", "ProxyCompletionRequest", "proxy_router"]
