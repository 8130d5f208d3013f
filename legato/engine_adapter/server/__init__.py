"""The engine's own HTTP server: any `Engine` behind OpenAI's, SGLang's and vLLM's APIs.

`create_engine_app(engine)` is what `legato engine serve` runs. It exists so that the embedded
torch engine can stand in for vLLM or SGLang anywhere (Legato's HTTP engines, the `openai`
client, third-party tools) and so the HTTP engines are contract-tested against a real server
in CI, with no GPU.

Two rules shape the handlers:

* Bad input is the client's to fix, so it gets a 4xx naming the field and what to do, never a
  500: request validation errors are 400 (not FastAPI's 422, matching vLLM and OpenAI), an
  unknown model is 404, and the first engine chunk is awaited *before* a streaming response
  starts, so an `EngineError` (prompt too long, engine closed) still becomes a status code.
* A client that goes away aborts its engine request at once (streaming or not): work nobody
  will read must not hold KV blocks or batch slots.
"""

from legato.engine_adapter.server.app import create_engine_app
from legato.engine_adapter.server.lifecycle import DEFAULT_CHUNK_TIMEOUT_S

__all__ = ["DEFAULT_CHUNK_TIMEOUT_S", "create_engine_app"]
