"""What recomputing, holding and reloading KV costs on each replica, in engine seconds.

Every threshold of the Legato policy is a comparison of two of these costs, so they come from
the engine the policy runs on, never from a constant:

- when the driver declares the engine's facts (`ReplicaView.prefill_s_per_token` etc.; the
  simulator derives them from its roofline cost model for the GPU and model, the torch engine
  reports the prefill cost it fits to its own step timings, a vLLM or SGLang replica the one it
  fits to the server's prefill-phase metrics), they are used as they are;
- otherwise (a real engine that does not declare them) they are measured online: the seconds a
  replica spent with calls in flight divided by the tokens it computed in that time (uncached
  prompt plus output). That is an upper bound on a prefill token's cost (decode tokens are
  slower than prefill tokens and both are counted), so recomputation looks dearer than it is
  and the policy errs toward keeping KV, which is what an engine without a policy does.

Loading from a tier (`ReplicaView.tiers`) costs its round trip plus bytes over its bandwidth; a
tier counts only while it has room for the context (`free_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from legato.scheduler.policy import ReplicaView


@dataclass(slots=True)
class _Observed:
    in_flight: int = 0
    busy_since: float = 0.0
    busy_s: float = 0.0
    tokens: float = 0.0


@dataclass(slots=True)
class EngineRates:
    """Per-replica costs: declared facts where the view has them, online measurements else."""

    _seen: dict[int, _Observed] = field(default_factory=dict)
    _call_s: float = 0.0  # summed dispatch-to-finish time of finished calls
    _calls: int = 0

    def record_call(self, duration_s: float) -> None:
        self._call_s += max(0.0, duration_s)
        self._calls += 1

    def mean_call_s(self) -> float | None:
        """Mean time a call spends on an engine, dispatch to finish (None: none finished)."""
        return self._call_s / self._calls if self._calls else None

    # --- online measurement (used only where the view declares nothing) -----------------

    def call_started(self, replica: int, now: float) -> None:
        o = self._seen.setdefault(replica, _Observed())
        if o.in_flight == 0:
            o.busy_since = now
        o.in_flight += 1

    def call_finished(self, replica: int, now: float, computed_tokens: float) -> None:
        o = self._seen.get(replica)
        if o is None or o.in_flight == 0:
            return
        o.in_flight -= 1
        o.tokens += max(0.0, computed_tokens)
        # Busy time is counted up to every call's end, not only when the replica drains: a
        # loaded engine may never be idle, and its costs must be known while it is loaded.
        o.busy_s += now - o.busy_since
        o.busy_since = now

    def _measured_s_per_token(self, replica: int) -> float | None:
        o = self._seen.get(replica)
        if o is None or o.tokens <= 0.0 or o.busy_s <= 0.0:
            return None
        return o.busy_s / o.tokens

    # --- costs -----------------------------------------------------------------------------

    def recompute_s(self, view: ReplicaView, start: float, end: float) -> float | None:
        """Seconds to prefill context tokens [start, end) again (the part before `start` is
        still cached); None while nothing is known about the engine."""
        n = max(0.0, end - start)
        if view.prefill_s_per_token is not None:
            pairs = n * start + n * (n + 1) / 2.0
            return n * view.prefill_s_per_token + pairs * (view.prefill_s_per_pair or 0.0)
        per_token = self._measured_s_per_token(view.replica)
        return None if per_token is None else n * per_token

    def reload_s(self, view: ReplicaView, start: float, end: float) -> float | None:
        """Cheapest way back for context [start, end) once evicted: recompute, or load it from
        the fastest tier that has room to keep it (a tier's round trip and bandwidth)."""
        best = self.recompute_s(view, start, end)
        if view.kv_bytes_per_token is None:
            return best
        nbytes = max(0.0, end - start) * view.kv_bytes_per_token
        for tier in view.tiers:
            if tier.free_bytes >= nbytes:
                load = tier.load_s(nbytes)
                best = load if best is None else min(best, load)
                break
        return best

    def batching_programs(self, view: ReplicaView, mean_ctx: float) -> float | None:
        """Programs a decode batch needs before reading their KV costs as much as reading the
        weights once: below this, every sequence held out of the batch costs throughput nearly
        one for one (a step reads all the weights whatever the batch); None when unknown."""
        if view.decode_step_s is None or not view.decode_s_per_ctx_token or mean_ctx <= 0.0:
            return None
        return view.decode_step_s / (view.decode_s_per_ctx_token * mean_ctx)
