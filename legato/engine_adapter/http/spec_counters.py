"""Speculative-decoding counters of vLLM and SGLang servers, so `/metrics` and `/ui` show
acceptance whichever engine runs. Named like the torch engine's `EngineStats` fields, which is
what the server reads (`legato.server.metrics_spec`, the `/ui` replicas panel).

The two servers report them differently:

- **vLLM** keeps server-wide Prometheus counters in `/metrics`: `vllm:spec_decode_num_drafts`
  (one per request per step that verified a draft), `..._num_draft_tokens`,
  `..._num_accepted_tokens`, and `..._num_accepted_tokens_per_pos` by `position` (from 0).
  `VLLMEngine.stats()` reads them (summed over label sets: one per engine core and model).
- **SGLang** reports them per request, in a finished response's `meta_info`: `spec_verify_ct`
  (verify forwards; each emits the accepted draft tokens plus one of the target's own), and in
  recent versions the accepted and proposed draft tokens, `spec_accept_token_num` /
  `spec_draft_token_num` (named `spec_accepted_drafts` / `spec_proposed_drafts` in others).
  `SGLangEngine` adds up the requests it sent (`SGLangSpecTally`); where a server gives only
  `spec_verify_ct`, accepted tokens are `completion_tokens - spec_verify_ct` and drafted ones
  are unknown (not counted).

Samples that are not counts (NaN, infinite, negative, from a broken exporter) count as 0, and
draft positions past the longest draft a verify step can check (`MAX_DRAFT_LEN`) are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from legato.spec.adaptive import MAX_DRAFT_LEN

VLLM_DRAFTS = "vllm:spec_decode_num_drafts_total"
VLLM_DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
VLLM_ACCEPTED_TOKENS = "vllm:spec_decode_num_accepted_tokens_total"
VLLM_ACCEPTED_BY_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos"
# not a vLLM counter: `legato engine serve` adds it beside vLLM's (vLLM drafts a fixed length)
DRAFTED_BY_POSITION = "legato:spec_decode_num_draft_tokens_per_pos"

Samples = Mapping[str, list[tuple[dict[str, str], float]]]  # `common.parse_prometheus`


@dataclass(frozen=True, slots=True)
class SpecStats:
    """What an HTTP engine's `stats()` answers: its speculation counters since it started
    (vLLM: the server's; SGLang: the requests this client sent)."""

    spec_drafts: int = 0  # drafts verified (one per request per verify step)
    spec_draft_tokens: int = 0
    spec_accepted_tokens: int = 0
    spec_drafted_by_position: tuple[int, ...] = ()
    spec_accepted_by_position: tuple[int, ...] = ()


def vllm_spec_stats(metrics: Samples) -> SpecStats:
    """The counters in a parsed vLLM `/metrics` (all 0 for a server that does not speculate)."""
    return SpecStats(
        spec_drafts=_total(metrics, VLLM_DRAFTS),
        spec_draft_tokens=_total(metrics, VLLM_DRAFT_TOKENS),
        spec_accepted_tokens=_total(metrics, VLLM_ACCEPTED_TOKENS),
        spec_drafted_by_position=_by_position(metrics, DRAFTED_BY_POSITION),
        spec_accepted_by_position=_by_position(metrics, VLLM_ACCEPTED_BY_POSITION),
    )


def _total(metrics: Samples, name: str) -> int:
    return round(sum(_count(value) for _, value in metrics.get(name, ())))


def _count(value: float) -> float:
    """A counter sample as a count: NaN, infinite or negative samples (a broken exporter) are 0."""
    return value if math.isfinite(value) and value > 0.0 else 0.0


def _by_position(metrics: Samples, name: str) -> tuple[int, ...]:
    counts: dict[int, float] = {}
    for labels, value in metrics.get(name, ()):
        position = labels.get("position", "")
        if position.isascii() and position.isdigit() and int(position) < MAX_DRAFT_LEN:
            counts[int(position)] = counts.get(int(position), 0.0) + _count(value)
    if not counts:
        return ()
    return tuple(round(counts.get(i, 0.0)) for i in range(max(counts) + 1))


def sglang_request_counts(meta: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """(verify steps, drafted tokens, accepted tokens) of one finished SGLang request from its
    `meta_info`; None where the server did not speculate. Drafted is 0 where only
    `spec_verify_ct` is reported."""
    verify = _int(meta.get("spec_verify_ct"))
    if not verify:
        return None
    accepted = _int(meta.get("spec_accept_token_num", meta.get("spec_accepted_drafts")))
    drafted = _int(meta.get("spec_draft_token_num", meta.get("spec_proposed_drafts")))
    if accepted is None:
        completion = _int(meta.get("completion_tokens")) or 0
        accepted = max(0, completion - verify)
    return verify, drafted or 0, accepted


def _int(value: Any) -> int | None:
    """A non-negative count from JSON (None for anything else: a string, a bool, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return int(value) if value >= 0 else None


class SGLangSpecTally:
    """Speculation counters summed over the finished requests of one `SGLangEngine`."""

    def __init__(self) -> None:
        self._drafts = self._drafted = self._accepted = 0

    def add(self, meta: Mapping[str, Any]) -> tuple[int, int]:
        """Count one finished request; its (drafted, accepted) tokens (0, 0 without speculation)."""
        counts = sglang_request_counts(meta)
        if counts is None:
            return 0, 0
        verify, drafted, accepted = counts
        self._drafts += verify
        self._drafted += drafted
        self._accepted += accepted
        return drafted, accepted

    def stats(self) -> SpecStats:
        return SpecStats(self._drafts, self._drafted, self._accepted)


__all__ = ["SGLangSpecTally", "SpecStats", "sglang_request_counts", "vllm_spec_stats"]
