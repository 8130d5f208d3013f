"""SGLang's conservative admission (`new_token_ratio`), for engines whose policy declares
`PolicyTraits.reserve_output` (the `lpm` baseline).

SGLang admits a request only if, beyond its prompt, the pool keeps room for the output still
to come: `min(max_new_tokens, CLIP)` for each request admitted in this round and
`min(max_new_tokens - generated, CLIP) x new_token_ratio` for each running one
(`python/sglang/srt/managers/schedule_policy.py`, `PrefillAdder`). The ratio starts at
`SGLANG_INIT_NEW_TOKEN_RATIO` = 0.7, decays linearly to 0.7 x 0.14 over 600 decode steps, and
after a retraction jumps to (tokens decoded + 20 per request) / their max_new_tokens
(`python/sglang/global_config.py` defaults; `ScheduleBatch.retract_decode`,
`retract_decode_steps = 20`).
"""

from __future__ import annotations

INIT_RATIO = 0.7  # global_config.default_init_new_token_ratio
MIN_RATIO_FACTOR = 0.14  # global_config.default_min_new_token_ratio_factor
DECAY_STEPS = 600.0  # global_config.default_new_token_ratio_decay_steps
RETRACT_DECODE_STEPS = 20  # global_config.retract_decode_steps
CLIP_MAX_NEW_TOKENS = 4096  # SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION


class OutputReserve:
    """The `new_token_ratio` state of one replica and the room it reserves."""

    def __init__(self, max_new_tokens: int) -> None:
        self.max_new = min(max_new_tokens, CLIP_MAX_NEW_TOKENS)
        self.ratio = INIT_RATIO
        self.min_ratio = INIT_RATIO * MIN_RATIO_FACTOR
        self.decay = (INIT_RATIO - self.min_ratio) / DECAY_STEPS

    def running_tokens(self, n_running: int, generated: int) -> float:
        """Tokens reserved for the output still to come of the running requests."""
        return max(0.0, n_running * self.max_new - generated) * self.ratio

    def new_tokens(self) -> int:
        """Tokens reserved for the output of a request admitted in this round (unscaled)."""
        return self.max_new

    def decoded(self, steps: int) -> None:
        self.ratio = max(self.min_ratio, self.ratio - steps * self.decay)

    def retracted(self, n_running: int, generated: int) -> None:
        if n_running:
            estimate = (generated + RETRACT_DECODE_STEPS * n_running) / (n_running * self.max_new)
            self.ratio = min(1.0, estimate)
