"""The length of the longest common prefix of two sequences: how far two prompts (token ids)
or two texts share KV. Compared a slice at a time, so long equal stretches cost C-speed slice
comparisons rather than a Python loop per element."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

CHUNK = 4096  # elements compared per slice; a mismatch costs at most one chunk of element steps


def common_prefix(a: Sequence[T], b: Sequence[T]) -> int:
    """Length of the longest common prefix of `a` and `b` (strings, tuples or lists)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i : i + CHUNK] == b[i : i + CHUNK]:
        i += CHUNK
    i = min(i, n)
    while i < n and a[i] == b[i]:
        i += 1
    return i
