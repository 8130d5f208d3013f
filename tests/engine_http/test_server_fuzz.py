"""Property test of `legato engine serve`'s whole OpenAPI surface with every schemathesis check
(`tests.openapi_fuzz`): no 5xx, every status, content type, header and body as documented,
schema-invalid requests refused and schema-valid ones accepted. The real command on a real
socket, serving a tiny seeded torch checkpoint (so generated requests finish in milliseconds).

The documented exception (`Semantic`): what JSON Schema cannot state, answered 400 (OpenAI's,
vLLM's and SGLang's status) with a message. On the OpenAI routes and `/tokenize` (whose chat
messages go through the same chat rules) that is OpenAI's cross-field and model rules, as on
`legato serve`'s proxy; on the token routes, the rules listed in `TOKEN_RULES`: token ids
against the model's vocabulary, prompt and output against its context, grammars that do not
compile, logit-bias keys that are no token ids, and one sample per request (`n > 1`: the
OpenAI routes). Any other 400 on those routes is a finding.
"""

from __future__ import annotations

import re
from pathlib import Path

import schemathesis
from schemathesis import GenerationMode

from tests.engine_http.serving import serve_cli
from tests.openapi_fuzz import Semantic, check_operation, label
from tests.server.launching import save_tiny_checkpoint

TOKEN_RULES = re.compile(
    r"outside the vocabulary|exceed this model's context|grammar|JSON Schema|logit_bias keys"
    r"|n must be 1 here"
)
OPENAI_RULES = Semantic(400)
SEMANTIC = {
    "POST /v1/completions": OPENAI_RULES,
    "POST /v1/chat/completions": OPENAI_RULES,
    "POST /tokenize": OPENAI_RULES,
    "POST /detokenize": Semantic(400, TOKEN_RULES),
    "POST /generate": Semantic(400, TOKEN_RULES),
    "POST /inference/v1/generate": Semantic(400, TOKEN_RULES),
}


def test_the_engine_server_conforms_to_its_openapi_document(tmp_path: Path) -> None:
    checkpoint = save_tiny_checkpoint(tmp_path)
    with serve_cli("--checkpoint", str(checkpoint), "--num-blocks", "256") as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        schema.config.update(base_url=url)
        checked = []
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                check_operation(operation, mode, SEMANTIC.get(label(operation)))
            checked.append(label(operation))
    for expected in ("POST /v1/chat/completions", "POST /generate", "POST /abort_request", "GET /metrics"):
        assert expected in checked, checked
