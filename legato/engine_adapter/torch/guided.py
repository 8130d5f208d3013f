"""Guided decoding in the torch engine: one llguidance matcher per sequence, a token mask per step.

`GrammarCompiler` (one per engine) wraps the engine's vocabulary as an llguidance tokenizer and
makes a `SequenceGrammar` for each constrained request. The engine asks for the allowed tokens
before sampling (one `[B, vocab]` mask, applied in the sampler; `guided_masks.py`) and hands
each sampled token to `vet`, which moves the matcher; nothing else does, so preemption (KV
recomputed, tokens kept) and prefix caching (KV only) leave it untouched.

Finishing within `max_tokens`: a grammar can let a model write forever (a string that never
closes: the seeded model is random and does exactly that). So each sequence keeps a *closing
witness*: a token path from its state to acceptance plus end-of-sequence that fits the budget
left, found by walking a copy of the matcher and preferring tokens that close structures (`"`,
`}`, `]`, ...). Every sampled token is vetted against it: the witness's own next token keeps it
(minus that token); a content token after which the same path still validates keeps it as is
(one llguidance validation, the common case: a character inside a string or number); a token
that took the place of the witness's next one (another digit, another continuation byte) keeps
the rest of it; any other token gets a fresh search from the state after it, and if no path
from there fits the budget, the witness's next token is appended instead. The invariant "a
witness fits" holds from the first token to the last, so a constrained output ends complete and
valid whenever its `max_tokens` allows at all, with no length cap or constant added to the user's schema.

Repairs repeat: with byte tokens a random UTF-8 lead byte inside a string needs the same one to
three continuation bytes before the old path fits again, an escape backslash the same escaped
character. Each sequence remembers the few bridges its searches found (the tokens between a
deviation and the point where the old path resumes) and tries them, one validation each, before
searching. Per sequence, not per engine: what a request outputs never depends on other requests.

Each sequence keeps the bitmask of its matcher's current state (`mask`), computed once per
state. The engine computes it right after `vet` moves the matcher (`guided_masks.vet_tokens`),
while llguidance's lexer and parser tables are still in the CPU caches: computed at the start of
the next step instead, after a forward pass has evicted them, the same mask costs several times
as much (about 8 us against 2 us a row on the byte vocabulary, measured in the structured bench).
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from collections.abc import Sequence

import llguidance

from legato.engine_adapter.base import EngineError, GrammarSpec
from legato.engine_adapter.chat.grammar import ll_grammar
from legato.engine_adapter.torch.tokenizer import ByteTokenizer, HFTokenizer

# Characters that close or shortest-complete JSON and call syntax, most closing first.
_CLOSERS = '"}],0\n>'
# Bridges a sequence remembers (most recently useful first). The repairs that recur are the three
# UTF-8 continuation lengths and an escape; a longer list costs a validation per miss.
_BRIDGES = 4


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
    """The engine's vocabulary for llguidance; makes per-sequence grammars.

    Each distinct grammar is compiled once: its matcher, never advanced, is kept as a template
    and every sequence gets a `deep_copy` of it. Copies share llguidance's lazily built lexer
    (its DFA states and token-trie walks), so a batch of requests with one schema builds those
    once instead of once per sequence, and mask computation touches one lexer's memory, not
    one per row. `capacity`: how many templates are kept (least recently used dropped); the
    engine passes its `max_num_seqs`, the most grammars that can be decoding at once."""

    def __init__(self, tokenizer: ByteTokenizer | HFTokenizer, vocab_size: int, capacity: int = 64) -> None:
        stops = list(tokenizer.stop_token_ids)
        try:
            if isinstance(tokenizer, ByteTokenizer):
                wrapper = llguidance.TokenizerWrapper(_ByteVocab(tokenizer, vocab_size))
                self.lltok = llguidance.LLTokenizer(wrapper, n_vocab=vocab_size, eos_token=stops)
            else:
                self.lltok = llguidance.LLTokenizer(tokenizer.to_json(), n_vocab=vocab_size, eos_token=stops)
        except (ValueError, RuntimeError) as exc:
            raise EngineError(
                f"structured output is not available for this model's tokenizer (llguidance: {exc})"
            ) from exc
        self.vocab_size = vocab_size
        self.capacity = max(1, capacity)
        self._templates: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        single = {ch: ids[0] for ch in _CLOSERS if len(ids := tokenizer.encode(ch)) == 1}
        self.prefer = tuple(single.values())
        self.closers = frozenset(single[ch] for ch in '"}]' if ch in single)

    def sequence(self, spec: GrammarSpec, stop_ids: Sequence[int], max_tokens: int) -> SequenceGrammar:
        text = ll_grammar(spec)
        template = self._templates.get(text)
        if template is None:
            template = llguidance.LLMatcher(self.lltok, text, log_level=0)
            if template.is_error():
                raise EngineError(f"the output grammar cannot be compiled: {template.get_error()}")
            self._templates[text] = template
            if len(self._templates) > self.capacity:
                self._templates.popitem(last=False)
        else:
            self._templates.move_to_end(text)
        return SequenceGrammar(template.deep_copy(), self, tuple(stop_ids), max_tokens)


class SequenceGrammar:
    """One request's matcher and its closing witness. The matcher moves in `vet`, on the token
    the engine is about to append."""

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
        self.bridges: list[list[int]] = []  # repairs that let the old witness resume (see module doc)
        # A path to the end that fits the budget left (None: none does; the output ends by length).
        self.witness = self._witness(matcher, max_tokens)
        self._stop_bits = sum(1 << t for t in set(stops) if t < compiler.vocab_size)
        self._new_mask_buffer()
        self._mask: int | None = None  # None: not computed for the matcher's state yet

    def _new_mask_buffer(self) -> None:
        size = (self.compiler.vocab_size + 31) // 32 * 4
        self._buf = bytearray(size)  # never resized: its address stays valid
        self._cbuf = (ctypes.c_char * size).from_buffer(self._buf)
        self._addr = ctypes.addressof(self._cbuf)

    def mask(self) -> int:
        """The tokens allowed next as one integer (bit t: token t), from llguidance's bitmask;
        an accepting (or failed) matcher also allows the sequence's stop tokens. Computed once
        per matcher state."""
        if self._mask is None:
            m = self.matcher
            bits = 0
            if not m.is_error():
                m.unsafe_compute_mask_ptr(self._addr, len(self._buf))
                bits = int.from_bytes(self._buf, "little")
            if m.is_accepting() or m.is_error():
                bits |= self._stop_bits
            self._mask = bits
        return self._mask

    def fork(self) -> SequenceGrammar:
        """An independent copy for a sibling sequence (n > 1 samples forked from one prompt)."""
        twin = SequenceGrammar.__new__(SequenceGrammar)
        twin.matcher = self.matcher.deep_copy()
        twin.compiler = self.compiler
        twin.stops = self.stops
        twin.bridges = [list(b) for b in self.bridges]
        twin.witness = None if self.witness is None else list(self.witness)
        twin._stop_bits = self._stop_bits
        twin._new_mask_buffer()
        twin._mask = self._mask
        return twin

    def _witness(
        self, matcher: llguidance.LLMatcher, limit: int, resume: list[int] | None = None
    ) -> list[int] | None:
        """A short path from `matcher`'s state to acceptance plus end-of-sequence, at most `limit`
        tokens (None: none found). Preferred (closing) tokens are tried with a cheap validity
        check, else the lowest allowed token id is taken. `resume`: the previous witness; each
        time the walk closes something, it ends if that path, or its rest after the first such
        closer, continues from there (a deviation inside a string, or a new array item, is
        closed, then the old path goes on)."""
        m = matcher.deep_copy()
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
            if resume and token in self.compiler.closers:
                found = _rejoin(m, path, resume, limit, consumed=True)
                if found is not None:
                    self._remember(path)
                    return found
        return None

    def _remember(self, bridge: list[int]) -> None:
        if bridge in self.bridges:
            self.bridges.remove(bridge)
        self.bridges.insert(0, list(bridge))
        del self.bridges[_BRIDGES:]

    def _bridged(self, limit: int) -> list[int] | None:
        """A remembered bridge after which the old witness (or its rest) fits from the matcher's
        state, within `limit` tokens; None when none does."""
        w = self.witness
        assert w is not None
        for bridge in self.bridges:
            if self.matcher.validate_tokens(bridge) < len(bridge):
                continue  # a short check first: most misses fail inside the bridge
            found = _rejoin(self.matcher, bridge, w, limit, consumed=False)
            if found is not None:
                self._remember(bridge)
                return found
        return None

    def vet(self, token: int, budget: int) -> int:
        """Advance the matcher on the sampled `token`, or on the witness's next token instead when
        taking `token` would leave no way to close within the `budget` tokens left (this one
        included); returns the token to append."""
        self._mask = None
        m, w = self.matcher, self.witness
        if token in self.stops or m.is_error():
            return token
        if w is None:  # nothing fits any more
            m.consume_token(token)
            return token
        if token == w[0]:
            m.consume_token(token)
            self.witness = w[1:]
            return token
        m.consume_token(token)
        if len(w) <= budget - 1 and m.validate_tokens(w) == len(w):
            return token  # a content token: the same path still closes the structure
        if len(w) > 1 and m.validate_tokens(w[1:]) == len(w) - 1:  # stood in for its next token
            self.witness = w[1:]  # (another continuation byte or digit: len(w) - 1 < budget)
            return token
        after = self._bridged(budget - 1) or self._witness(m, budget - 1, resume=w)
        if after is not None:
            self.witness = after
            return token
        m.rollback(1)
        m.consume_token(w[0])
        self.witness = w[1:]
        return w[0]


def _rejoin(
    m: llguidance.LLMatcher, bridge: list[int], old: list[int], limit: int, consumed: bool
) -> list[int] | None:
    """`bridge` + `old`, or `bridge` + the rest of `old` after the structure the bridge's last
    token closed, whichever fits `limit` and validates first (None: neither). `consumed`: `m`
    already stands after the bridge (else it stands before it)."""
    last = bridge[-1]
    tails = [old] + ([old[old.index(last) + 1 :]] if last in old else [])
    for tail in tails:
        path = bridge + tail
        if len(path) > limit:
            continue
        check = tail if consumed else path
        if m.validate_tokens(check) == len(check):
            return path
    return None
