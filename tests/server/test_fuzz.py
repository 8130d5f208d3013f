"""Property test of the whole REST app's OpenAPI surface (workflows, runs, events, health, the
OpenAI-compatible proxy, /metrics): schemathesis generates valid and invalid requests from the
schema and runs **all** its checks (`tests.openapi_fuzz`) on every answer: no 5xx, every status
and content type and header documented, every body matching its schema, schema-violating
requests refused, and schema-valid requests accepted. Real socket; the engine is the real-time
simulator with sleeping off (`time_scale=0`), so generated calls finish at once.

One documented exception to "schema-valid requests are accepted": four operations check what
JSON Schema cannot state, and answer it with their documented 4xx and a message -- a program's
graph (references, reachability, loop bounds, planned calls: 422 on `POST /v1/programs` and
`POST /v1/runs`) and an OpenAI request's cross-field and model rules (the prompt against the
context, `echo` with `logprobs`, tool-call arguments that are not JSON...: 400, OpenAI's status,
on the proxy's two routes), and the RL routes (`RL_PATHS`: token ids against the engine's
vocabulary, control calls the engine does not support: 400, as vLLM and SGLang answer). There a
schema-valid request may get exactly that status."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from schemathesis import GenerationMode

from legato.sim.realtime import RealtimeSimConfig, RealtimeSimEngine
from tests.openapi_fuzz import Semantic, check_operation, label
from tests.server.proxy_harness import legato_server

SEMANTIC = {  # operation -> the status of rules JSON Schema cannot state (see the docstring)
    "POST /v1/programs": 422,
    "POST /v1/runs": 422,
    "POST /v1/chat/completions": 400,
    "POST /v1/completions": 400,
}
# The RL routes (rollouts, SkyRL / slime / verl wire shapes, the control plane) answer in their
# frameworks' convention, 400, for what depends on the serving engine: token ids against its
# vocabulary, control calls the engine does not support (here the simulator: no weight updates).
RL_PATHS = (
    "/v1/rollouts",
    "/inference/",
    "/tokenize",
    "/detokenize",
    "/generate",
    "/abort_request",
    "/pause",
    "/resume",
    "/sleep",
    "/wake_up",
    "/reset_prefix_cache",
    "/flush_cache",
    "/init_weight_transfer_engine",
    "/update_weights",
    "/continue_generation",
    "/finish_session",
)


def _semantic(name: str) -> Semantic | None:
    path = name.split(" ", 1)[1]
    if name in SEMANTIC:
        return Semantic(SEMANTIC[name])
    return Semantic(400) if path.startswith(RL_PATHS) else None


def test_the_service_conforms_to_its_openapi_document(tmp_path: Path) -> None:
    engine = RealtimeSimEngine(RealtimeSimConfig(time_scale=0.0, max_model_len=2048))
    with legato_server(tmp_path, engine, policy="continuum", tenants=("acme",)) as served:
        schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
        schema.config.update(base_url=served.url, headers=served.headers("acme"))
        checked = []
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                check_operation(operation, mode, _semantic(label(operation)))
            checked.append(label(operation))
    for expected in (
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "GET /v1/models",
        "POST /v1/programs/{program_id}/release",
        "GET /metrics",
        "POST /v1/programs",
        "POST /v1/runs",
        "GET /v1/runs/{run_id}/events",
    ):
        assert expected in checked, checked
