"""Guided decoding in the torch engine: one llguidance matcher per sequence, a token mask per step.

`GrammarCompiler` (one per engine) wraps the engine's vocabulary as an llguidance tokenizer and
makes a `SequenceGrammar` for each constrained request. The engine asks the sequence for its
allowed tokens before sampling (the mask is applied in the sampler) and feeds it the token it
appended; nothing else moves the matcher, so preemption (KV recomputed, tokens kept) and prefix
caching (KV only) leave it untouched.

Finishing within `max_tokens`: a grammar can let a model write forever (a string that never
closes: the seeded model is random and does exactly that). So each sequence keeps a *closing
witness*: a short token path from its state to acceptance plus end-of-sequence, found by walking
a copy of the matcher and preferring tokens that close structures (`"`, `}`, `]`, ...). Near the
end of the budget every sampled token is vetted: if the witness from the state after it no
longer fits in the budget left, the current witness's next token is appended instead. The
invariant "a witness fits" then holds to the end, so a constrained output ends complete and
valid whenever its budget allows at all. "Near" is a budget within twice the longest witness
seen on the sequence (the first one is a whole structure from scratch, e.g. a full tool call);
further out a token is assumed not to outgrow the slack, and no search is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import llguidance
import torch
from torch import Tensor

from legato.engine_adapter.base import EngineError, GrammarSpec
from legato.engine_adapter.chat.grammar import ll_grammar
from legato.engine_adapter.torch.tokenizer import ByteTokenizer, HFTokenizer

if TYPE_CHECKING:
    from legato.engine_adapter.torch.sequence import Sequence as Seq

# Characters that close or shortest-complete JSON and call syntax, most closing first.
_CLOSERS = '"}],0\n>'


class _ByteVocab:
    """The byte tokenizer as llguidance's `TokenizerWrapper` expects it."""

    def __init__(self, tokenizer: ByteTokenizer, vocab_size: int) -> None:
        names = {i: t.encode() for t, i in tokenizer.special_ids.items()}
        self.tokens = [
            bytes([i]) if i < 256 else names.get(i, f"<|unused_{i}|>".encode()) for i in range(vocab_size)
        ]
        self.eos_token_id = tokenizer.eos_token_id
        self.bos_token_id = tokenizer.bos_token_id
        self.special_token_ids = list(range(256, vocab_size))

    def __call__(self, s: bytes | str) -> list[int]:
        return list(s if isinstance(s, bytes) else s.encode())


class GrammarCompiler:
    """The engine's vocabulary for llguidance; makes per-sequence grammars."""

    def __init__(self, tokenizer: ByteTokenizer | HFTokenizer, vocab_size: int) -> None:
        stops = list(tokenizer.stop_token_ids)
        if isinstance(tokenizer, ByteTokenizer):
            wrapper = llguidance.TokenizerWrapper(_ByteVocab(tokenizer, vocab_size))
            self.lltok = llguidance.LLTokenizer(wrapper, n_vocab=vocab_size, eos_token=stops)
        else:
            raw = tokenizer._tok.to_str()
            self.lltok = llguidance.LLTokenizer(raw, n_vocab=vocab_size, eos_token=stops)
        self.vocab_size = vocab_size
        prefer = []
        for ch in _CLOSERS:
            ids = tokenizer.encode(ch)
            if len(ids) == 1:
                prefer.append(ids[0])
        self.prefer = tuple(prefer)

    def sequence(self, spec: GrammarSpec, stop_ids: Sequence[int], max_tokens: int) -> SequenceGrammar:
        matcher = llguidance.LLMatcher(self.lltok, ll_grammar(spec), log_level=0)
        if matcher.is_error():
            raise EngineError(f"the output grammar cannot be compiled: {matcher.get_error()}")
        return SequenceGrammar(matcher, self, tuple(stop_ids), max_tokens)


class SequenceGrammar:
    """One request's matcher, its closing witness, and its mask."""

    def __init__(
        self,
        matcher: llguidance.LLMatcher,
        compiler: GrammarCompiler,
        stops: tuple[int, ...],
        max_tokens: int,
    ) -> None:
        self.matcher = matcher
        self.compiler = compiler
        self.stops = stops
        self.witness = self._witness(matcher, max_tokens)  # None: stale (or none fits)
        # The longest closing distance seen: from the start state it is a whole fresh structure,
        # so one token is assumed never to add more than this to the distance.
        self.longest = len(self.witness) if self.witness is not None else max_tokens
        self._next: tuple[int, list[int]] | None = None  # a vetted token and its witness

    def _mask(self, matcher: llguidance.LLMatcher) -> Tensor:
        bias = matcher.compute_logit_bias()
        allowed = torch.frombuffer(bytearray(bias), dtype=torch.uint8)[: self.compiler.vocab_size] > 0
        if matcher.is_accepting():
            allowed[list(self.stops)] = True
        return allowed

    def _witness(
        self, matcher: llguidance.LLMatcher, limit: int, first: int | None = None
    ) -> list[int] | None:
        """A short path from `matcher`'s state (after `first`, when given) to acceptance plus
        end-of-sequence, at most `limit` tokens counting `first` (None: none found). Preferred
        (closing) tokens are tried with a cheap validity check, else the lowest allowed id."""
        m = matcher.deep_copy()
        path: list[int] = []
        if first is not None:
            if not m.consume_token(first):
                return None
            path.append(first)
        while len(path) < limit:
            if m.is_accepting():
                return [*path, self.stops[0]]
            token = next((t for t in self.compiler.prefer if m.validate_tokens([t]) == 1), -1)
            if token < 0:
                token = m.compute_logit_bias().find(b"\xc8")  # llguidance marks allowed with 200
            if token < 0 or token >= self.compiler.vocab_size or not m.consume_token(token):
                return None
            path.append(token)
        return None

    def allowed(self) -> Tensor:
        """Tokens the grammar allows next (end-of-sequence only once it accepts)."""
        if self.matcher.is_error():
            out = torch.zeros(self.compiler.vocab_size, dtype=torch.bool)
            out[list(self.stops)] = True  # a broken matcher ends the sequence
            return out
        return self._mask(self.matcher)

    def vet(self, token: int, budget: int) -> int:
        """The token to append instead of the sampled `token` (itself, unless taking it would
        leave no way to close within the `budget` tokens left, this one included: then the
        witness's next token)."""
        self._next = None
        if token in self.stops or self.matcher.is_error():
            return token
        if budget > 2 * self.longest:
            self.witness = None  # far from the end: no check, the witness goes stale
            return token
        if self.witness is None:
            self.witness = self._witness(self.matcher, budget)
            if self.witness is None:
                return token  # nothing fits any more: the output ends by length
            self.longest = max(self.longest, len(self.witness))
        if token == self.witness[0]:
            return token
        after = self._witness(self.matcher, budget, first=token)
        if after is None:
            return self.witness[0]
        self._next = (token, after)
        self.longest = max(self.longest, len(after))
        return token

    def accept(self, token: int) -> None:
        """The engine appended `token`: move the matcher and the witness."""
        if self._next is not None and self._next[0] == token:
            self.witness = self._next[1][1:]
        elif self.witness and self.witness[0] == token:
            self.witness = self.witness[1:]
        else:
            self.witness = None
        self._next = None
        if token not in self.stops:
            self.matcher.consume_token(token)


def grammar_masks(seqs: Sequence[Seq]) -> list[Tensor | None] | None:
    """Each sequence's allowed tokens (None for unconstrained ones; None when none is)."""
    if all(s.grammar is None for s in seqs):
        return None
    return [None if s.grammar is None else s.grammar.allowed() for s in seqs]


def vet_tokens(seqs: Sequence[Seq], tokens: list[int], logprobs: list[float] | None, logits: Tensor) -> None:
    """Replace sampled tokens that would leave a constrained sequence unable to close within its
    budget (in place; a replaced token's logprob is read from `logits`)."""
    for i, seq in enumerate(seqs):
        if seq.grammar is None:
            continue
        token = seq.grammar.vet(tokens[i], seq.sampling.max_tokens - seq.num_output_tokens)
        if token != tokens[i]:
            tokens[i] = token
            if logprobs is not None:
                logprobs[i] = float(torch.log_softmax(logits[i].float(), dim=-1)[token])
