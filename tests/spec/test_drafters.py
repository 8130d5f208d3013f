"""Drafters: a draft is a continuation that exists in the indexed text; bounds; bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legato.spec.adaptive import MAX_DRAFT_LEN, AdaptiveDraftLength, check_draft_len
from legato.spec.context import AgentHistory, ProgramContext
from legato.spec.drafter import SuffixDrafter, make_drafter
from legato.spec.ngram import NgramDrafter
from legato.spec.suffix_index import SuffixIndex


def _occurs(needle: list[int], hay: list[int]) -> bool:
    n = len(needle)
    return any(hay[i : i + n] == needle for i in range(len(hay) - n + 1))


def _ctx(tokens: list[int], history: AgentHistory | None = None) -> ProgramContext:
    ctx = ProgramContext("agent", history)
    ctx.index.extend(tokens)
    return ctx


def test_suffix_draft_continues_the_most_frequent_branch() -> None:
    # "1 2 3" is followed by 4 twice and by 9 once: the draft follows 4, then 5
    ctx = _ctx([1, 2, 3, 4, 5, 0, 1, 2, 3, 9, 0, 1, 2, 3, 4, 5, 0, 7, 1, 2, 3])
    d = SuffixDrafter(min_prob=0.0).propose(ctx, 4)
    assert d.tokens[:2] == (4, 5)
    assert d.probs[0] == pytest.approx(2 / 3)
    assert d.match_len >= 3


def test_ngram_proposes_what_followed_the_last_occurrence() -> None:
    ctx = _ctx([1, 2, 3, 4, 8, 1, 2, 3, 5, 6, 9, 1, 2, 3])
    assert NgramDrafter().propose(ctx, 3).tokens == (5, 6, 9)
    assert NgramDrafter().propose(_ctx([1, 2, 3, 4]), 3).tokens == ()


def test_suffix_drafter_takes_the_agent_history_when_it_scores_higher() -> None:
    history = AgentHistory()
    history.add_output("agent", [10, 11, 12, 13, 14, 15, 16, 17])
    ctx = _ctx([5, 10, 11, 12, 13], history)
    assert SuffixDrafter().propose(ctx, 3).tokens == (14, 15, 16)
    assert SuffixDrafter(agent=False).propose(ctx, 3).tokens == ()
    other = ProgramContext("other-agent", history)
    other.index.extend([5, 10, 11, 12, 13])
    assert SuffixDrafter().propose(other, 3).tokens == ()  # scoped to the agent


def test_program_context_appends_only_what_a_prompt_adds() -> None:
    ctx = ProgramContext("a")
    ctx.add_prompt([1, 2, 3])
    ctx.add_output_tokens([4, 5])
    ctx.add_prompt([1, 2, 3, 4, 5, 6, 7])
    assert ctx.index.tokens() == [1, 2, 3, 4, 5, 6, 7]
    ctx.add_prompt([9, 9])  # not an extension: appended whole
    assert ctx.index.tokens() == [1, 2, 3, 4, 5, 6, 7, 9, 9]


def test_agent_history_is_bounded() -> None:
    history = AgentHistory(max_tokens=50, max_agents=2)
    for i in range(40):
        history.add_output("a", [i % 7] * 10)
    idx = history.index("a")
    assert idx is not None and idx.held_tokens <= 50 + 11
    history.add_output("b", [1])
    history.add_output("c", [1])
    assert history.index("a") is None  # least recently used agent dropped


_tokens = st.lists(st.integers(0, 5), min_size=0, max_size=120)


@settings(max_examples=150, deadline=None)
@given(_tokens, st.integers(0, 20), st.sampled_from(["suffix", "suffix-local", "ngram"]))
def test_a_local_draft_is_a_continuation_in_the_indexed_text(tokens: list[int], k: int, name: str) -> None:
    ctx = _ctx(tokens)
    d = make_drafter(name).propose(ctx, k)
    assert len(d.tokens) <= k
    assert all(0.0 < p <= 1.0 for p in d.probs)
    assert list(d.probs) == sorted(d.probs, reverse=True)
    if d.tokens:
        assert d.match_len >= 2
        matched = tokens[len(tokens) - d.match_len :]
        # the matched suffix followed by the draft is a stretch of the indexed text
        assert _occurs(matched + list(d.tokens), tokens)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=30), max_size=8), _tokens, st.integers(1, 12)
)
def test_an_agent_draft_never_crosses_documents(docs: list[list[int]], tokens: list[int], k: int) -> None:
    history = AgentHistory()
    for doc in docs:
        history.add_output("agent", doc)
    idx = history.index("agent")
    q = tokens[-24:]
    d = idx.draft(q, k) if idx is not None else None
    if d is not None and d.tokens:
        assert any(_occurs(q[len(q) - d.match_len :] + list(d.tokens), doc) for doc in docs)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, MAX_DRAFT_LEN), st.lists(st.tuples(st.integers(0, 80), st.integers(0, 80)), max_size=50)
)
def test_adaptive_length_stays_bounded(max_len: int, steps: list[tuple[int, int]]) -> None:
    adaptive = AdaptiveDraftLength(max_len)
    for drafted, accepted in steps:
        drafted = min(drafted, adaptive.cap)
        adaptive.record(drafted, min(accepted, drafted))
        assert (1 if max_len else 0) <= adaptive.cap <= max_len


def test_adaptive_length_grows_on_full_acceptance_and_falls_on_rejection() -> None:
    adaptive = AdaptiveDraftLength(16)
    adaptive.record(16, 2)
    assert adaptive.cap == 8
    adaptive.record(8, 0)
    assert adaptive.cap == 4
    adaptive.record(4, 4)
    assert adaptive.cap == 8


@pytest.mark.parametrize("value", [-1, MAX_DRAFT_LEN + 1, 10**9, True, 2.5])
def test_bad_draft_lengths_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="draft length"):
        check_draft_len(value)  # type: ignore[arg-type]


def test_unknown_drafter_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown drafter 'eagle'; valid: suffix"):
        make_drafter("eagle")


def test_index_refuses_negative_tokens_and_bad_bounds() -> None:
    with pytest.raises(ValueError):
        SuffixIndex().extend([1, -2])
    with pytest.raises(ValueError):
        SuffixIndex(max_occurrences=0)


def _reference_draft(
    toks: list[int], query: list[int], max_len: int, max_depth: int, spec_factor: float, min_prob: float
) -> tuple[tuple[int, ...], tuple[float, ...], int]:
    """The suffix draft by its definition, by brute force over every position (no occurrence
    caps): for each match length L (>= 2, longest first), walk the most frequent continuation of
    the occurrences matching the query's last L tokens; the best score wins, ties to the longer."""
    q = query[-max_depth:]
    nq = len(q)
    match: dict[int, int] = {}  # continuation start -> match length
    for end in range(1, len(toks)):
        j = 0
        while j < min(nq, end) and toks[end - j - 1] == q[nq - j - 1]:
            j += 1
        if j >= 2:
            match[end] = j
    best: tuple[tuple[int, ...], tuple[float, ...], int] = ((), (), 0)
    for length in sorted(set(match.values()), reverse=True):
        cap = min(max_len, int(spec_factor * length))
        cur = sorted((e for e, m in match.items() if m >= length), reverse=True)
        out: list[int] = []
        probs: list[float] = []
        p = 1.0
        for depth in range(cap):
            counts: dict[int, int] = {}
            for s in cur:
                if s + depth < len(toks):
                    counts[toks[s + depth]] = counts.get(toks[s + depth], 0) + 1
            if not counts:
                break
            c = max(counts.values())
            tok = next(t for t, v in counts.items() if v == c)
            p *= c / len(cur)
            if p < min_prob:
                break
            out.append(tok)
            probs.append(p)
            cur = [s for s in cur if s + depth < len(toks) and toks[s + depth] == tok]
        if sum(probs) > sum(best[1]):
            best = (tuple(out), tuple(probs), length)
    return best


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 3), max_size=150),
    st.lists(st.integers(0, 3), min_size=1, max_size=30),
    st.integers(1, 20),
    st.sampled_from([0.5, 1.0, 2.0]),
    st.sampled_from([0.0, 0.1, 0.4]),
)
def test_suffix_draft_equals_its_definition(
    toks: list[int], query: list[int], max_len: int, spec_factor: float, min_prob: float
) -> None:
    """The index's pruned search (keys, early exits, one-occurrence copies) drafts exactly
    what the definition does, wherever no occurrence list is capped."""
    idx = SuffixIndex(max_occurrences=1000)
    idx.extend(toks)
    d = idx.draft(query, max_len, max_depth=24, spec_factor=spec_factor, min_prob=min_prob)
    ref = _reference_draft(toks, query, max_len, 24, spec_factor, min_prob)
    assert (d.tokens, d.probs) == ref[:2]
    if d.tokens:
        assert d.match_len == ref[2]
