"""Prompt-lookup n-gram drafting: the simple baseline (vLLM `method: "ngram"`).

Find the longest n-gram (n from `max_n` down to `min_n`) ending the context that occurred earlier
in it, and propose the tokens that followed its most recent earlier occurrence. No counts, no
scoring: one occurrence decides. `max_n = 4` is vLLM's documented example
(`prompt_lookup_max: 4`); `min_n = 2` skips one-token matches.
"""

from __future__ import annotations

from legato.spec.context import ProgramContext
from legato.spec.suffix_index import Draft


class NgramDrafter:
    name = "ngram"

    def __init__(self, min_n: int = 2, max_n: int = 4) -> None:
        if not 2 <= min_n <= max_n <= 16:
            raise ValueError(f"need 2 <= min_n <= max_n <= 16, got {min_n}, {max_n}")
        self.min_n = min_n
        self.max_n = max_n

    def propose(self, ctx: ProgramContext, max_len: int) -> Draft:
        if max_len <= 0:
            return Draft()
        q = ctx.tail(self.max_n)
        for n in range(min(self.max_n, len(q)), self.min_n - 1, -1):
            start = ctx.index.last_occurrence(q[len(q) - n :])
            if start is not None:
                toks = tuple(ctx.index.tokens(start)[:max_len])
                if -1 in toks:
                    toks = toks[: toks.index(-1)]
                return Draft(toks, (1.0,) * len(toks), n)
        return Draft()
