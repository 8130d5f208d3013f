"""Per-token postprocessing in the torch engine: append a sampled token to its sequence, detokenize
incrementally, apply stop tokens, `max_tokens` and stop strings (holding back text that could
still become a stop string), and build the `RequestOutput`. `EngineCore` (core.py) calls
`append_token` and does the scheduler's bookkeeping for a finished sample itself.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

from legato.engine_adapter.base import TopLogprobs
from legato.engine_adapter.torch.outputs import RequestOutput
from legato.engine_adapter.torch.sequence import Sequence as Seq
from legato.engine_adapter.torch.tokenizer import ByteTokenizer, HFTokenizer


def append_token(
    tokenizer: ByteTokenizer | HFTokenizer,
    seq: Seq,
    token: int,
    logprob: float | None,
    top: TopLogprobs | None,
) -> tuple[str | None, str]:
    """Append `token` to `seq`; returns (finish reason or None, the text to stream now)."""
    seq.token_ids.append(token)
    if logprob is not None:
        seq.logprobs.append(logprob)
    if top is not None:
        seq.top_logprobs.append(top)
    reason: str | None = None
    if token in seq.stop_token_ids:
        reason = "stop"
    elif seq.num_output_tokens >= seq.sampling.max_tokens:
        reason = "length"
    old_len = len(seq.text)
    detokenize(tokenizer, seq, flush=reason is not None)
    stops = seq.sampling.stop
    if stops and len(seq.text) > old_len:
        longest = max(len(s) for s in stops)
        window_start = max(0, old_len - longest + 1)
        hits = [i for i in (seq.text.find(s, window_start) for s in stops if s) if i >= 0]
        if hits:
            seq.text = seq.text[: min(hits)]
            reason = "stop"
    upto = len(seq.text) - held_back(seq.text, stops) if reason is None else len(seq.text)
    upto = max(upto, seq.emitted_text_len)
    delta = seq.text[seq.emitted_text_len : upto]
    seq.emitted_text_len = upto
    return reason, delta


def detokenize(tokenizer: ByteTokenizer | HFTokenizer, seq: Seq, flush: bool) -> None:
    """Incremental decoding: decode a small window of recent tokens and append only what is
    new, waiting while the text ends in an incomplete character (U+FFFD). Byte tokens go
    through a UTF-8 incremental decoder instead, which gives exactly the one-shot decoding
    of all the bytes (Python guarantees it) at a fraction of the cost."""
    if isinstance(tokenizer, ByteTokenizer):
        if seq.utf8 is None:
            seq.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        token = seq.token_ids[-1]
        seq.text += seq.utf8.decode(bytes((token,)) if 0 <= token < 256 else b"", final=flush)
        return
    base = seq.num_prompt_tokens  # offsets count output tokens
    ids = seq.token_ids
    prefix_text = tokenizer.decode(ids[base + seq.prefix_offset : base + seq.read_offset])
    new_text = tokenizer.decode(ids[base + seq.prefix_offset :])
    if len(new_text) > len(prefix_text) and (flush or not new_text.endswith("\ufffd")):
        seq.text += new_text[len(prefix_text) :]
        seq.prefix_offset = seq.read_offset
        seq.read_offset = len(ids) - base


def request_output(
    seq: Seq,
    tokens: tuple[int, ...],
    text: str,
    logprob: float | None,
    top: TopLogprobs | None,
    finished: bool,
) -> RequestOutput:
    """What one step produced for `seq` (logprobs only when the request asked for them)."""
    want_lp = seq.sampling.logprobs
    want_top = want_lp and seq.sampling.top_logprobs > 0
    return RequestOutput(
        request_id=seq.request_id,
        token_ids=tokens,
        text=text,
        logprobs=((logprob,) if logprob is not None else ()) if want_lp else None,
        finished=finished,
        finish_reason=seq.finish_reason,
        prompt_tokens=seq.num_prompt_tokens,
        cached_tokens=seq.cached_tokens or 0,
        index=seq.index,
        top_logprobs=((top,) if top is not None else ()) if want_top else None,
        spec_drafted=seq.spec_drafted,
        spec_accepted=seq.spec_accepted,
    )


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that could still grow into a stop string: that much
    is not streamed yet, so a stop string is never partly emitted before it is cut."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
