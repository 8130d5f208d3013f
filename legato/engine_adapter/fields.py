"""Constrained field types shared by every request model of the HTTP APIs (engine server, REST
service, OpenAI proxy, program specs): each range is written once, here, with where it comes
from, so a field means the same thing on every route and the OpenAPI schema states the bound.

Why these bounds: a value outside them either cannot be honoured (a seed the sampler cannot hold,
a cursor the store's 64-bit integer column cannot hold) or costs without bound (a retry delay of
1e308 s, 10,000 stop strings scanned at every token). Non-finite floats are refused everywhere:
JSON has no NaN or Infinity, and a NaN compares false with every bound. Request models also set
`strict=True` (see `STRICT_REQUEST`), so `"yes"` is not a boolean and `"5"` not an integer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field

U64_MAX = 2**64 - 1  # seeds: the torch and numpy generators take 64-bit unsigned seeds
I64_MAX = 2**63 - 1  # store sequence numbers: SQLite's INTEGER and Redis' counters are signed 64-bit
I32_MAX = 2**31 - 1  # token ids, token counts, priorities: int32 tensors and vLLM's own int32 fields

# Most samples one request may ask for (`n`, `best_of`): each holds its own KV, and the batch
# holds them all at once. vLLM has no fixed cap; 128 is OpenAI's own limit for `n`.
MAX_N = 128
# Most alternatives per token (`top_logprobs`, completions' `logprobs`): OpenAI's chat limit 20,
# also vLLM's default `max_logprobs`.
MAX_TOP_LOGPROBS = 20
# Stop strings: OpenAI takes 4; vLLM no fixed number. Every string is matched against the tail
# of the text at every generated token, so the count and length are bounded: 64 strings of at
# most 1,024 characters keep that scan under a microsecond-scale cost per token per string.
MAX_STOP_STRINGS = 64
MAX_STOP_CHARS = 1024
MAX_STOP_TOKEN_IDS = 1024
MAX_LOGIT_BIAS = 1024  # entries; OpenAI documents no count, vLLM checks only the ids
LOGIT_BIAS_LIMIT = 100.0  # OpenAI's range for a bias: [-100, 100]
MAX_DAY_S = 86_400.0  # any duration a client may state (timeouts, backoffs, tool latency)

STRICT_REQUEST = ConfigDict(extra="forbid", strict=True)
"""Request models: unknown fields are refused (named in the 4xx) and types are not coerced."""


def _integral(value: Any) -> Any:
    """JSON has one number type: `5.0` is the integer 5 (JSON Schema agrees), `5.5` is not."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


INTEGRAL = BeforeValidator(_integral)
"""On every integer field of a request: strict (no `"5"`, no `true`), but `5.0` is 5. It comes
last in `Annotated[int, Field(...), INTEGRAL]`, so the bounds stay in the JSON schema."""

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
# The two 64-bit bounds are stated as exclusive powers of two: the OpenAPI document writes bounds
# as doubles, where 2^64 - 1 becomes 2^64 (a bound off by one); 2^64 and 2^63 are exact.
Seed = Annotated[int, Field(ge=0, lt=U64_MAX + 1, description="0 .. 2^64-1"), INTEGRAL]
StoreSeq = Annotated[int, Field(ge=0, lt=I64_MAX + 1), INTEGRAL]
TokenId = Annotated[int, Field(ge=0, le=I32_MAX), INTEGRAL]
TokenCount = Annotated[int, Field(ge=1, le=I32_MAX), INTEGRAL]
Priority = Annotated[int, Field(ge=-I32_MAX - 1, le=I32_MAX), INTEGRAL]
TopK = Annotated[int, Field(ge=-1, le=I32_MAX, description="-1 or 0 disables top-k."), INTEGRAL]
SampleCount = Annotated[int, Field(ge=1, le=MAX_N), INTEGRAL]
TopLogprobs = Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), INTEGRAL]
Temperature = Annotated[
    float, Field(ge=0, le=2, allow_inf_nan=False, description="0 = greedy; OpenAI's range.")
]
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)]
Bias = Annotated[float, Field(ge=-LOGIT_BIAS_LIMIT, le=LOGIT_BIAS_LIMIT, allow_inf_nan=False)]
Seconds = Annotated[float, Field(ge=0, le=MAX_DAY_S, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0, le=MAX_DAY_S, allow_inf_nan=False)]
StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
StopList = StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)]
StopTokenIds = Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)]
LogitBias = Annotated[dict[str, Bias], Field(max_length=MAX_LOGIT_BIAS)]


def _a_real_bool(value: Any) -> Any:
    """Pydantic matches `Literal[False]` by equality, so `0` and `0.0` would pass as false."""
    if value is not None and not isinstance(value, bool):
        raise ValueError("must be a boolean")
    return value


# OpenAI's `store`: completions are never stored here, so only `false` (or absent) is taken
NotStored = Annotated[Literal[False] | None, BeforeValidator(_a_real_bool)]
