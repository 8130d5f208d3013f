"""Suffix matching over a token stream: the data structure behind the suffix drafter.

SuffixDecoding (Oliaro et al., arXiv 2411.04975; ArcticInference's C++ suffix tree) keeps a
depth-bounded suffix tree with a count on every node: the tokens after a match are drafted by
walking to the most frequent child, each with probability count(child) / count(node). A Python
trie of every substring up to the depth costs `depth` nodes per token, too much memory for
100k-token agent contexts, so this index stores the same information another way: the token
stream itself plus, for a few key lengths, where each n-gram occurs. The subtree under a matched
pattern is then read off the occurrences: the children of the node are the tokens that follow
each occurrence, and their counts are how many occurrences continue that way.

Bounds (like the bounded tree): per n-gram only the `max_occurrences` most recent occurrences
are kept, and the stream can drop its oldest documents (`max_tokens`). Documents appended with
`append_document` are separated, so no match or continuation crosses from one to the next; the
stream built with `extend` is one document (a program's context is one running text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

KEY_LENGTHS = (2, 4, 8, 16)  # n-gram lengths indexed; a match of length L is found via the
# largest key <= L, so matches shorter than the smallest key are not used
_SEP = -1  # document separator (token ids are >= 0)


@dataclass(frozen=True, slots=True)
class Draft:
    """Draft tokens with their estimated acceptance probabilities (cumulative, non-increasing)
    and the score (sum of the probabilities: the expected number of accepted tokens)."""

    tokens: tuple[int, ...] = ()
    probs: tuple[float, ...] = ()
    match_len: int = 0

    @property
    def score(self) -> float:
        return sum(self.probs)


class SuffixIndex:
    """A token stream with n-gram occurrence lists; see the module docstring."""

    def __init__(self, max_occurrences: int = 64, max_tokens: int | None = None) -> None:
        if max_occurrences < 1:
            raise ValueError(f"max_occurrences must be >= 1, got {max_occurrences}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.max_occurrences = max_occurrences
        self.max_tokens = max_tokens
        self._toks: list[int] = []
        self._base = 0  # absolute position of self._toks[0] (older tokens were evicted)
        self._doc_start = 0  # absolute start of the open document
        self._doc_ends: list[int] = []  # absolute end of each closed document still held
        self._stale = 0  # tokens evicted since the occurrence lists were last pruned
        self._occ: list[dict[tuple[int, ...], list[int]]] = [{} for _ in KEY_LENGTHS]

    def __len__(self) -> int:
        """Absolute length of the stream (evicted tokens included)."""
        return self._base + len(self._toks)

    @property
    def held_tokens(self) -> int:
        return len(self._toks)

    def tokens(self, start: int = 0) -> list[int]:
        """The held tokens from absolute position `start` (separators included)."""
        return self._toks[max(0, start - self._base) :]

    def extend(self, tokens: Sequence[int]) -> None:
        """Append tokens to the open document."""
        toks, cap = self._toks, self.max_occurrences
        tables = list(zip(KEY_LENGTHS, self._occ, strict=True))
        for t in tokens:
            if t < 0:
                raise ValueError(f"token ids must be >= 0, got {t}")
            toks.append(t)
            end = self._base + len(toks)  # absolute position just after t
            avail = end - self._doc_start
            for k, table in tables:
                if k > avail:
                    break
                key = tuple(toks[-k:])
                lst = table.get(key)
                if lst is None:
                    table[key] = [end]
                else:
                    lst.append(end)
                    if len(lst) > 2 * cap:
                        del lst[:-cap]

    def append_document(self, tokens: Sequence[int]) -> None:
        """Append a whole document (e.g. one earlier output), closed by a separator."""
        self.extend(tokens)
        self._toks.append(_SEP)
        self._doc_ends.append(len(self))
        self._doc_start = len(self)
        self._evict()

    def _evict(self) -> None:
        if self.max_tokens is None or len(self._toks) <= self.max_tokens:
            return
        drop_to = self._base
        while self._doc_ends and len(self) - drop_to > self.max_tokens:
            drop_to = self._doc_ends.pop(0)
        if drop_to <= self._base:
            return
        del self._toks[: drop_to - self._base]
        self._stale += drop_to - self._base
        self._base = drop_to
        if self._stale >= self.max_tokens:  # prune stale occurrences: O(1) amortised per token
            self._stale = 0
            for table in self._occ:
                for key in [key for key, lst in table.items() if lst[-1] <= drop_to]:
                    del table[key]

    def last_occurrence(self, pattern: Sequence[int]) -> int | None:
        """Absolute position just after the most recent occurrence of `pattern` that has at
        least one token after it, or None. Patterns of 2..16 tokens."""
        n = len(pattern)
        if not KEY_LENGTHS[0] <= n <= KEY_LENGTHS[-1]:
            raise ValueError(f"pattern length must be {KEY_LENGTHS[0]}..{KEY_LENGTHS[-1]}, got {n}")
        i = max(j for j, k in enumerate(KEY_LENGTHS) if k <= n)
        k = KEY_LENGTHS[i]
        lst = self._occ[i].get(tuple(pattern[n - k :]))
        if not lst:
            return None
        toks, base, end_all = self._toks, self._base, len(self)
        want = list(pattern)
        for end in reversed(lst):
            if end <= base or end >= end_all or end - n < base:
                continue
            if toks[end - n - base : end - base] == want and toks[end - base] != _SEP:
                return end
        return None

    # --- drafting --------------------------------------------------------------------------

    def draft(
        self,
        query: Sequence[int],
        max_len: int,
        *,
        max_depth: int = 24,
        spec_factor: float = 1.0,
        min_prob: float = 0.1,
    ) -> Draft:
        """The best-scoring draft continuing `query` (its last `max_depth` tokens matched).

        For each candidate match length L the occurrences whose preceding tokens equal the last L
        tokens of the query form the matched node; the draft walks the most frequent
        continuation while the cumulative probability stays >= `min_prob`, at most
        min(max_len, spec_factor * L) tokens (SuffixDecoding's `max_spec_factor`). The draft with
        the highest score (expected accepted tokens) wins; ties go to the longer match."""
        if max_len <= 0 or not query:
            return Draft()
        q = list(query[-max_depth:])
        nq = len(q)
        toks, base = self._toks, self._base
        held_end = len(self)
        matched: dict[int, int] = {}  # continuation start (absolute) -> match length
        best = Draft()
        for i in range(len(KEY_LENGTHS) - 1, -1, -1):
            k = KEY_LENGTHS[i]
            if k > nq:
                continue
            top = nq if i == len(KEY_LENGTHS) - 1 else min(nq, KEY_LENGTHS[i + 1] - 1)
            # matches first found at this key are at most `top` long: their drafts are at most
            # spec_factor * top tokens, each with p <= 1, so they cannot beat a better score
            if best.probs and best.score >= min(max_len, spec_factor * top):
                break
            lst = self._occ[i].get(tuple(q[nq - k :]))
            if not lst:
                continue
            for end in lst[-self.max_occurrences :]:
                if end <= base or end >= held_end or end in matched:
                    continue  # evicted, or nothing follows it yet
                j = k
                lo = end - base
                while j < nq and lo - j - 1 >= 0 and toks[lo - j - 1] == q[nq - j - 1]:
                    j += 1
                matched[end] = j
            by_end = sorted(matched.items(), reverse=True)  # most recent first, as _walk wants
            for length in sorted({m for m in matched.values() if k <= m <= top}, reverse=True):
                cap = min(max_len, int(spec_factor * length))
                # a draft of at most `cap` tokens scores at most `cap`, and shorter matches
                # only lower the cap: none of them can beat `best` any more
                if cap <= 0 or best.score >= cap:
                    break
                cand = self._walk([e for e, m in by_end if m >= length], cap, min_prob, length)
                if cand.score > best.score:
                    best = cand
        return best

    def _walk(self, starts: list[int], cap: int, min_prob: float, length: int) -> Draft:
        """Follow the most frequent continuation of the occurrences (most recent first, so ties
        go to the most recent: the first token to reach the top count wins)."""
        toks, base, n = self._toks, self._base, len(self._toks)
        cur = [s - base for s in starts]
        out: list[int] = []
        probs: list[float] = []
        p = 1.0
        for depth in range(cap):
            if len(cur) == 1:  # one occurrence left: its text is the rest of the draft, at p
                s = cur[0] + depth
                rest = toks[s : min(n, s + cap - depth)]
                if _SEP in rest:
                    rest = rest[: rest.index(_SEP)]
                out.extend(rest)
                probs.extend([p] * len(rest))
                break
            counts: dict[int, int] = {}
            for s in cur:
                if s + depth < n:
                    t = toks[s + depth]
                    if t != _SEP:
                        counts[t] = counts.get(t, 0) + 1
            if not counts:
                break
            c = max(counts.values())
            tok = next(t for t, v in counts.items() if v == c)
            p *= c / len(cur)
            if p < min_prob:
                break
            out.append(tok)
            probs.append(p)
            cur = [s for s in cur if s + depth < n and toks[s + depth] == tok]
        return Draft(tuple(out), tuple(probs), length)
