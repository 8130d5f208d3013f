"""What the schemathesis runs of the two HTTP services share (`legato serve`: tests/server/
test_fuzz.py; `legato engine serve`: tests/engine_http/test_server_fuzz.py).

Every operation of the OpenAPI document is called with `EXAMPLES` generated requests per mode
(schema-valid, schema-invalid), and **every** schemathesis check runs on every answer: no 5xx,
every status, content type and header documented, every body matching its schema,
schema-invalid requests refused, schema-valid requests accepted. The one exception an operation
may declare (`Semantic`): rules JSON Schema cannot state (a prompt against the context, token
ids against the engine's vocabulary, JSON inside a string...), answered with one documented
status and a message; there a schema-valid request may get that status, with a message that
matches the operation's rules when it lists them.

CI draws the same examples every run (hypothesis's derandomize: a failure is a change, not a
new draw); `LEGATO_FUZZ_SEED=N` draws another set, to look for defects locally.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

EXAMPLES = 20  # per operation and mode: bounded so the suite stays fast
SEED = os.environ.get("LEGATO_FUZZ_SEED")
POSITIVE_OK = {200, 201, 401, 403, 404, 409, 429}  # schemathesis's own list, minus 3xx and 5xx


@dataclass(frozen=True, slots=True)
class Semantic:
    """An operation's rules JSON Schema cannot state: the status that answers them and, when
    given, a pattern every such answer's message matches (so another 4xx is still a finding)."""

    status: int
    messages: re.Pattern[str] | None = None


def label(operation: Any) -> str:
    return f"{operation.method.upper()} {operation.path}"


def check_operation(
    operation: Any, mode: GenerationMode, semantic: Semantic | None, examples: int = EXAMPLES
) -> None:
    """Run every check on `examples` generated requests of one operation in one mode."""
    name = label(operation)
    excluded = [positive_data_acceptance] if semantic is not None else []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=SEED is None,
    )
    def call(case: Any) -> None:
        # streams are bounded by the read timeout; a timeout is not a finding
        response = case.call_and_validate(timeout=30, excluded_checks=excluded)
        if semantic is not None and mode is GenerationMode.POSITIVE:
            assert response.status_code in POSITIVE_OK | {semantic.status}, (name, response.text[:300])
            if response.status_code == semantic.status:
                message = response.json()["error"]["message"]
                assert message, response.text
                if semantic.messages is not None:
                    assert semantic.messages.search(message), (name, message)

    if SEED is not None:
        call = seed(int(SEED))(call)
    try:
        call()
    except Unsatisfiable:  # no parameters and no body: nothing invalid to send
        assert mode is GenerationMode.NEGATIVE, name
