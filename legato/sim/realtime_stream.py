"""One request inside the real-time simulated engine (`legato.sim.realtime`): its state, its
fake but deterministic tokens, and how a step's outputs reach the event loops that wait for them.

Tokens are a function of the prompt, the request seed and the position, drawn from lower-case
letters and spaces (so the text is readable and stop strings work), with their exact uniform
logprob.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from legato.engine_adapter.base import GenerateRequest, TokenChunk
from legato.engine_adapter.mailbox import Mailbox
from legato.sim.sim_request import SimRequest

_ALPHABET = b"abcdefghijklmnopqrstuvwxyz     "  # spaces weighted so the text has words
_LOGPROB = -math.log(len(_ALPHABET))  # exact: tokens are drawn uniformly from the alphabet
Item = TokenChunk | BaseException
Put = Callable[[list[Item]], None]


@dataclass(slots=True)
class SimStream:
    """One request inside the engine: its simulated-replica request, its output so far, its stream."""

    request: GenerateRequest
    arrival: int
    loop: asyncio.AbstractEventLoop
    put: Put  # runs on `loop`: hands items to the request's stream
    sim: SimRequest | None = None  # its request on the simulated replica, once added
    cached: int = 0
    output: list[int] = field(default_factory=list)
    text: str = ""  # all generated text (one character per token)
    emitted: int = 0  # characters of `text` already sent
    rng_state: int = 0


def sample(req: SimStream) -> TokenChunk:
    sampling = req.request.sampling
    req.rng_state, token = _next(req.rng_state)
    first = not req.output
    req.output.append(token)
    req.text += chr(token)
    reason: str | None = None
    end = len(req.text)
    stops = [x for x in sampling.stop if x]
    if stops:
        cut = min((i for i in (req.text.find(x) for x in stops) if i >= 0), default=-1)
        if cut >= 0:
            end, reason = cut, "stop"
        else:  # hold back what could still become the start of a stop string
            end -= max(len(x) for x in stops) - 1
    if reason is None and len(req.output) >= sampling.max_tokens:
        end, reason = len(req.text), "length"
    delta = req.text[req.emitted : max(end, req.emitted)]
    req.emitted += len(delta)
    return TokenChunk(
        token_ids=(token,),
        text=delta,
        logprobs=(_LOGPROB,) if sampling.logprobs else None,
        finished=reason is not None,
        finish_reason=reason,
        prompt_tokens=len(req.request.prompt_token_ids) if first else 0,
        cached_tokens=req.cached if first else 0,
    )


def _next(state: int) -> tuple[int, int]:
    state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
    return state, _ALPHABET[(state >> 33) % len(_ALPHABET)]


def planned_output(request: GenerateRequest) -> list[int]:
    """The `max_tokens` tokens `sample` will draw for this request (a stop may end it sooner)."""
    state, out = seed_of(request), []
    for _ in range(request.sampling.max_tokens):
        state, token = _next(state)
        out.append(token)
    return out


def seed_of(request: GenerateRequest) -> int:
    """Deterministic per (prompt, seed): same request, same tokens, on every run and process."""
    digest = hashlib.sha256(repr((request.sampling.seed, request.prompt_token_ids[-64:])).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def putter(box: Mailbox[Item]) -> Put:
    def put(items: list[Item]) -> None:
        for item in items:
            box.put(item)  # refused once the consumer has stopped (closed the box)

    return put


def deliver(out: list[tuple[SimStream, list[Item]]]) -> None:
    """Hand a step's outputs to their event loops: one thread hop per loop per step, not per
    request (200 streams at 50 steps/s would otherwise flood the loop with callbacks)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Put, list[Item]]]] = {}
    for req, items in out:
        by_loop.setdefault(req.loop, []).append((req.put, items))
    for loop, batch in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            loop.call_soon_threadsafe(_put_all, batch)


def _put_all(batch: list[tuple[Put, list[Item]]]) -> None:
    for put, items in batch:
        put(items)


__all__ = ["Item", "Put", "SimStream", "deliver", "planned_output", "putter", "sample", "seed_of"]
