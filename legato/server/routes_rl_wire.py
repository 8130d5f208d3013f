"""The RL frameworks' data-plane routes on `legato serve`, as they send them:

* SkyRL (`skyrl/backends/skyrl_train/inference_servers/remote_inference_client.py`):
  `POST /inference/v1/generate` `{"token_ids", "sampling_params", "model"}` with `X-Session-ID`
  (the program id), reading `choices[0].token_ids`, `finish_reason` and
  `logprobs.content[].logprob`; `POST /finish_session?session_id=` ends the session (404 unknown).
* slime (`slime/rollout/sglang_rollout.py`): SGLang's `POST /generate` `{"input_ids",
  "sampling_params", "return_logprob": true}` with the `X-SMG-Routing-Key` header, reading
  `meta_info.output_token_logprobs` (`[logprob, token_id, text]`); `POST /abort_request`.

Every call goes through the program scheduler; answers add `weight_version` (per choice, and per
token as `weight_versions`). A client `cache_salt` is accepted for SkyRL's sake but never used as
the salt: the engine keys its prefix cache by the authenticated tenant and the weight version,
which is the isolation SkyRL's salt asks for.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from legato.engine_adapter.base import GenerateRequest, SamplingParams, TokenChunk, assemble_result
from legato.engine_adapter.openai_api import (
    DetokenizeRequest,
    DetokenizeResponse,
    SGLangAbortRequest,
    SGLangGenerateRequest,
    TokenizeRequest,
    TokenizeResponse,
    VLLMGenerateRequest,
)
from legato.engine_adapter.server.openai_fields import logit_bias
from legato.engine_adapter.server.service import make_usage
from legato.engine_adapter.server.streams import sglang_response
from legato.engine_adapter.server.strict_json import StrictJSONRoute
from legato.rl.rollout import SampleOutput
from legato.server.admin import require_admin
from legato.server.auth import Tenant, current_tenant
from legato.server.errors import ApiError, responses
from legato.server.proxy_generation import server_errors
from legato.server.proxy_models import MAX_ID_LEN, SESSION_HEADER
from legato.server.rl_service import RolloutService
from legato.server.routes_rl_control import run_control

TenantDep = Annotated[Tenant, Depends(current_tenant)]
ROUTING_KEY_HEADER = "x-smg-routing-key"  # slime's consistent-hashing key (SGLang Model Gateway)


def _session(raw: Request, *names: str, body_value: str | None = None) -> str | None:
    value = body_value
    for name in names:
        value = value or raw.headers.get(name)
    if value is not None and not 1 <= len(value) <= MAX_ID_LEN:
        raise ApiError(400, f"the session id must be 1 to {MAX_ID_LEN} characters", param=names[0])
    return value


def _refuse(field: str, why: str) -> None:
    raise ApiError(400, f"{field}: {why} on legato serve", param=field)


def _vllm_choice(rl: RolloutService, out: SampleOutput) -> dict[str, Any]:
    svc = rl.proxy.svc
    lps = svc.token_id_logprobs(out.token_ids, out.logprobs or None, out.top_logprobs or None)
    choice: dict[str, Any] = {
        "index": out.index,
        "token_ids": out.token_ids,
        "finish_reason": out.finish_reason,
        "weight_version": out.weight_version,
        "weight_versions": out.weight_versions,
    }
    if lps is not None:
        choice["logprobs"] = lps.model_dump(exclude_none=True)
    return choice


def wire_router(rl: RolloutService) -> APIRouter:
    router = APIRouter(tags=["rl-frameworks"], route_class=StrictJSONRoute)
    svc = rl.proxy.svc

    @router.post(
        "/inference/v1/generate",
        responses=responses(400, 409, 503),
        summary="vLLM's token-in/token-out generate (SkyRL's data plane); X-Session-ID = program id.",
    )
    async def vllm_generate(body: VLLMGenerateRequest, raw: Request, tenant: TenantDep) -> Response:
        with server_errors():
            svc.check_model(body.model)
            prompt = svc.check_tokens(body.token_ids, "token_ids")
        if body.stream:
            _refuse("stream", "the RL routes answer in one piece")
        if body.priority:
            _refuse("priority", "the scheduler sets priorities")
        if body.request_id is not None:
            _refuse("request_id", "name the program with X-Session-ID instead")
        sp = body.sampling_params
        if sp.structured_outputs is not None:
            _refuse("sampling_params.structured_outputs", "use /v1/chat/completions for structured output")
        with server_errors():
            sampling = svc.vllm_sampling(sp, len(prompt))
        outs = await rl.generate(tenant, _session(raw, SESSION_HEADER), prompt, sampling, raw, node="skyrl")
        if outs is None:
            return Response(status_code=499)
        completion = sum(len(o.token_ids) for o in outs)
        return JSONResponse(
            {
                "request_id": f"rl-{id(outs):x}",
                "choices": [_vllm_choice(rl, o) for o in outs],
                "usage": make_usage(len(prompt), completion, outs[0].cached_tokens).model_dump(),
                "weight_version": outs[0].weight_version,
            }
        )

    @router.post(
        "/tokenize",
        response_model=TokenizeResponse,
        responses=responses(400),
        summary="Text to token ids (vLLM's shape; SkyRL's client calls it). Text prompts only.",
    )
    async def tokenize(body: TokenizeRequest, tenant: TenantDep) -> TokenizeResponse:
        with server_errors():
            svc.check_model(body.model)
        if body.messages is not None or body.prompt is None:
            _refuse("messages", "send `prompt` text (chat templates: /v1/chat/completions)")
        tokens = svc.tokenizer.encode(body.prompt or "")
        return TokenizeResponse(count=len(tokens), max_model_len=svc.max_model_len, tokens=list(tokens))

    @router.post(
        "/detokenize",
        response_model=DetokenizeResponse,
        responses=responses(400),
        summary="Token ids to text (vLLM's shape; SkyRL's client calls it after generate).",
    )
    async def detokenize(body: DetokenizeRequest, tenant: TenantDep) -> DetokenizeResponse:
        with server_errors():
            svc.check_model(body.model)
            ids = svc.check_tokens(body.tokens, "tokens")
        return DetokenizeResponse(prompt=svc.tokenizer.decode(ids))

    @router.post(
        "/finish_session",
        responses=responses(400, 404),
        summary="End a session (program): its KV is no longer kept. 404 for an unknown id.",
    )
    async def finish_session(
        tenant: TenantDep, session_id: Annotated[str, Query(min_length=1, max_length=MAX_ID_LEN)]
    ) -> dict[str, Any]:
        rl.finish(tenant, session_id)
        return {"session_id": session_id, "finished": True}

    @router.post(
        "/generate",
        responses=responses(400, 409, 503),
        summary="SGLang's native generate (slime's data plane); the routing key is the program id.",
    )
    async def sglang_generate(body: SGLangGenerateRequest, raw: Request, tenant: TenantDep) -> Response:
        if (body.text is None) == (body.input_ids is None):
            raise ApiError(400, "send exactly one of `text` or `input_ids`", param="input_ids")
        if body.stream:
            _refuse("stream", "the RL routes answer in one piece")
        if body.priority:
            _refuse("priority", "the scheduler sets priorities")
        sp = body.sampling_params
        if sp.json_schema is not None or sp.ebnf is not None:
            _refuse("sampling_params.json_schema", "use /v1/chat/completions for structured output")
        if sp.n != 1:
            _refuse("sampling_params.n", "send n > 1 to /inference/v1/generate or /v1/rollouts")
        with server_errors():
            prompt = (
                svc.check_tokens(body.input_ids, "input_ids")
                if body.input_ids is not None
                else tuple(svc.tokenizer.encode(body.text or ""))
            )
            sampling = svc.sampling(
                max_tokens=sp.max_new_tokens,
                max_tokens_field="sampling_params.max_new_tokens",
                prompt_len=len(prompt),
                temperature=sp.temperature,
                top_p=sp.top_p,
                top_k=max(sp.top_k, 0),
                seed=sp.sampling_seed if sp.sampling_seed is not None else sp.seed,
                stop=sp.stop,
                stop_token_ids=sp.stop_token_ids,
                ignore_eos=sp.ignore_eos,
                logprobs=body.return_logprob,
                presence_penalty=sp.presence_penalty,
                frequency_penalty=sp.frequency_penalty,
                logit_bias=logit_bias(sp.logit_bias, svc.tokenizer.vocab_size),
            )
        program = _session(raw, ROUTING_KEY_HEADER, body_value=body.session_id or body.routing_key)
        rid = body.rid
        outs = await rl.generate(tenant, program, prompt, sampling, raw, node="slime", request_id=rid)
        if outs is None:
            return Response(status_code=499)
        return JSONResponse(_sglang_body(rl, prompt, sampling, outs[0], rid))

    @router.post(
        "/abort_request",
        responses=responses(400, 403),
        summary="SGLang's abort: by `rid` (or the session / routing key), or `abort_all` (admin).",
    )
    async def abort_request(body: SGLangAbortRequest, tenant: TenantDep) -> dict[str, Any]:
        if body.abort_all:  # every tenant's requests: the control plane's (admin only)
            require_admin(tenant)
            await run_control(rl.control.pause("abort"))
            await run_control(rl.control.resume())
            return {"success": True}
        if not body.rid:
            raise ApiError(400, "rid (or abort_all) is required", param="rid")
        return {"success": rl.abort(tenant, body.rid)}

    return router


def _sglang_body(
    rl: RolloutService, prompt: tuple[int, ...], sampling: SamplingParams, out: SampleOutput, rid: str | None
) -> dict[str, Any]:
    req = GenerateRequest(rid or "rl", prompt, sampling)
    chunk = TokenChunk(
        token_ids=tuple(out.token_ids),
        text=rl.proxy.svc.tokenizer.decode(out.token_ids),
        logprobs=tuple(out.logprobs) if sampling.logprobs else None,
        finished=True,
        finish_reason=out.finish_reason,
        prompt_tokens=len(prompt),
        cached_tokens=out.cached_tokens,
    )
    body = sglang_response(rl.proxy.svc, req, assemble_result(req, [chunk]), len(prompt)).model_dump()
    body["meta_info"]["weight_version"] = out.weight_version
    body["meta_info"]["weight_versions"] = out.weight_versions
    return body
