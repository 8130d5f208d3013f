"""Per-program draft length, adapted from the program's acceptance history.

SuffixDecoding caps a draft by how long the match behind it is (`max_spec_factor`); Dynamic
Speculative Planning adapts the length to how well drafts have been accepted. This keeps, per
program, a cap that moves like TCP's congestion window (additive-increase / multiplicative-
decrease, the textbook rule, not a value fitted to our traces): when a whole draft is accepted
the cap doubles (the program is copying: probe further), when a draft is cut at position a the
cap falls to max(a + 1, cap // 2). The cap always stays within [1, max_len].
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_DRAFT_LEN = 64  # largest draft length accepted anywhere (usage errors above it)


def check_draft_len(value: int, what: str = "draft length") -> int:
    """Validate a user-given draft length: 0..MAX_DRAFT_LEN, else ValueError saying why."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if value < 0 or value > MAX_DRAFT_LEN:
        raise ValueError(f"{what} must be between 0 and {MAX_DRAFT_LEN}, got {value}")
    return value


@dataclass(slots=True)
class AdaptiveDraftLength:
    max_len: int
    cap: int = field(init=False)
    drafted: int = 0
    accepted: int = 0
    steps: int = 0

    def __post_init__(self) -> None:
        check_draft_len(self.max_len, "max draft length")
        self.cap = self.max_len

    def record(self, drafted: int, accepted: int) -> None:
        """One verify step: `drafted` tokens proposed, the first `accepted` of them verified."""
        if not 0 <= accepted <= drafted:
            raise ValueError(f"accepted ({accepted}) must be within 0..drafted ({drafted})")
        self.steps += 1
        self.drafted += drafted
        self.accepted += accepted
        if drafted == 0 or self.max_len == 0:
            return
        if accepted == drafted:
            self.cap = min(self.max_len, max(1, self.cap) * 2)
        else:
            self.cap = max(1, accepted + 1, self.cap // 2)
        self.cap = min(self.cap, self.max_len)
