"""Property test of the whole REST app's OpenAPI surface (workflows, runs, events, health, the
OpenAI-compatible proxy, /metrics): schemathesis generates valid and invalid requests from the
schema and runs **all** its checks on every answer: no 5xx, every status and content type and
header documented, every body matching its schema, schema-violating requests refused, and
schema-valid requests accepted. Real socket; the engine is the real-time simulator with sleeping
off (`time_scale=0`), so generated calls finish at once.

One documented exception to "schema-valid requests are accepted": four operations check what
JSON Schema cannot state, and answer it with their documented 4xx and a message -- a program's
graph (references, reachability, loop bounds, planned calls: 422 on `POST /v1/programs` and
`POST /v1/runs`) and an OpenAI request's cross-field and model rules (the prompt against the
context, `echo` with `logprobs`, tool-call arguments that are not JSON...: 400, OpenAI's status,
on the proxy's two routes), and the RL routes (`RL_PATHS`: token ids against the engine's
vocabulary, control calls the engine does not support: 400, as vLLM and SGLang answer). There a
schema-valid request may get exactly that status."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from legato.sim.realtime import RealtimeSimConfig, RealtimeSimEngine
from tests.server.proxy_harness import legato_server

EXAMPLES = 20  # per operation and mode: bounded so the suite stays fast
# CI draws the same examples every run (hypothesis's derandomize: a failure is a change, not a new
# draw); LEGATO_FUZZ_SEED=N draws another set, to look for defects locally.
SEED = os.environ.get("LEGATO_FUZZ_SEED")
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


def _semantic(label: str) -> int | None:
    path = label.split(" ", 1)[1]
    if label in SEMANTIC:
        return SEMANTIC[label]
    return 400 if path.startswith(RL_PATHS) else None


POSITIVE_OK = {200, 201, 401, 403, 404, 409, 429}  # schemathesis's own list, minus 3xx and 5xx


def _check(operation: Any, mode: GenerationMode, semantic: int | None) -> None:
    """Run every check on `EXAMPLES` generated requests of one operation in one mode."""
    label = f"{operation.method.upper()} {operation.path}"
    excluded = [positive_data_acceptance] if semantic is not None else []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=SEED is None,
    )
    def call(case: Any) -> None:
        # streams (SSE of runs) are bounded by the read timeout; a timeout is not a finding
        response = case.call_and_validate(timeout=30, excluded_checks=excluded)
        if semantic is not None and mode is GenerationMode.POSITIVE:
            assert response.status_code in POSITIVE_OK | {semantic}, (label, response.text[:300])
            if response.status_code == semantic:
                assert response.json()["error"]["message"], response.text

    if SEED is not None:
        call = seed(int(SEED))(call)
    try:
        call()
    except Unsatisfiable:  # no parameters and no body: nothing invalid to send
        assert mode is GenerationMode.NEGATIVE, label


def test_the_service_conforms_to_its_openapi_document(tmp_path: Path) -> None:
    engine = RealtimeSimEngine(RealtimeSimConfig(time_scale=0.0, max_model_len=2048))
    with legato_server(tmp_path, engine, policy="continuum", tenants=("acme",)) as served:
        schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
        schema.config.update(base_url=served.url, headers=served.headers("acme"))
        checked = []
        for result in schema.get_all_operations():
            operation = result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _check(operation, mode, _semantic(label))
            checked.append(label)
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
