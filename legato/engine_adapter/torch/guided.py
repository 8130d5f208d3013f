"""Guided decoding in the torch engine: one llguidance matcher per sequence, a token mask per step.

`GrammarCompiler` (one per engine) wraps the engine's vocabulary as an llguidance tokenizer and
makes a `SequenceGrammar` for each constrained request. The engine asks the sequence for its
allowed tokens before sampling (the mask is applied in the sampler) and feeds it the token it
appended; nothing else moves the matcher, so preemption (KV recomputed, tokens kept) and prefix
caching (KV only) leave it untouched.

Finishing within `max_tokens`: a grammar can let a model write forever (a string that never
closes: the seeded model is random and does exactly that). So the sequence keeps a *closing
witness*: a short token path from its current state to an accepting state plus end-of-sequence,
found by walking a copy of the matcher and preferring tokens that close structures (`"`, `}`,
`]`, ...). When the remaining budget is no longer than the witness plus the most it has grown in
one token on this sequence (learned online), the sequence follows it, so a constrained output
ends complete and valid whenever its budget allows. The witness is searched again when the
budget has halved since the last search, and at every token once the budget is within twice the
witness length (far from the end that is O(log max_tokens) searches, near the end one per
token, each a few matcher steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import llguidance
import torch
from torch import Tensor

from legato.engine_adapter.base import EngineError, GrammarSpec
from legato.engine_adapter.chat.grammar import ll_grammar
from legato.engine_adapter.torch.tokenizer import ByteTokenizer, HFTokenizer

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

    def sequence(self, spec: GrammarSpec, stop_ids: Sequence[int]) -> SequenceGrammar:
        matcher = llguidance.LLMatcher(self.lltok, ll_grammar(spec), log_level=0)
        if matcher.is_error():
            raise EngineError(f"the output grammar cannot be compiled: {matcher.get_error()}")
        return SequenceGrammar(matcher, self, tuple(stop_ids))


class SequenceGrammar:
    """One request's matcher, its closing witness, and its mask."""

    def __init__(
        self, matcher: llguidance.LLMatcher, compiler: GrammarCompiler, stops: tuple[int, ...]
    ) -> None:
        self.matcher = matcher
        self.compiler = compiler
        self.stops = stops
        self.forced: list[int] = []  # the witness being followed
        self.witness_len: int | None = None
        self.searched_at: int | None = None  # budget at the last witness search
        self.growth = 1  # the largest one-token growth of the witness seen so far
        self.hopeless = False

    def _mask(self, matcher: llguidance.LLMatcher) -> Tensor:
        bias = matcher.compute_logit_bias()
        allowed = torch.frombuffer(bytearray(bias), dtype=torch.uint8)[: self.compiler.vocab_size] > 0
        if matcher.is_accepting():
            allowed[list(self.stops)] = True
        return allowed

    def _witness(self, limit: int) -> list[int] | None:
        """A short path to acceptance plus end-of-sequence, at most `limit` tokens (None: none).
        Preferred (closing) tokens are tried with a cheap validity check; otherwise the lowest
        allowed token id is taken."""
        m = self.matcher.deep_copy()
        path: list[int] = []
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

    def allowed(self, budget: int) -> Tensor:
        """Tokens allowed next, with `budget` tokens left to generate (this one included)."""
        if self.matcher.is_error():
            out = torch.zeros(self.compiler.vocab_size, dtype=torch.bool)
            out[list(self.stops)] = True  # a broken matcher ends the sequence
            return out
        if not self.forced and not self.hopeless:
            last, at = self.witness_len, self.searched_at
            if last is None or at is None or budget <= 2 * last or budget * 2 <= at:
                witness = self._witness(budget + 1)
                if witness is not None and last is not None and at == budget + 1:
                    # Learned online: how much the closing distance can grow in one token.
                    self.growth = max(self.growth, len(witness) - (last - 1))
                self.searched_at = budget
                self.witness_len = None if witness is None else len(witness)
                # No closing path fits the budget: the output ends by length (stop searching).
                self.hopeless = witness is None
                if witness is not None and len(witness) + self.growth >= budget:
                    self.forced = witness
        if self.forced:
            out = torch.zeros(self.compiler.vocab_size, dtype=torch.bool)
            out[self.forced[0]] = True
            return out
        return self._mask(self.matcher)

    def accept(self, token: int) -> None:
        """The engine appended `token`: move the matcher (and the witness being followed)."""
        if self.forced:
            if self.forced[0] == token:
                self.forced.pop(0)
            else:
                self.forced.clear()
        if token in self.stops:
            return
        self.matcher.consume_token(token)
