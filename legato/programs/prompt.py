"""Prompts as token ids: named prefix parts (tokenized once, shared) followed by dynamic text.

A prompt is `part_1 + ... + part_k + rendered slots`. Each prefix part is tokenized on its own and
cached, and the prompt's token ids are the concatenation, so every call that starts with the
same parts starts with the *same token ids* (a tokenizer merging across the boundary would
otherwise make the shared prefix differ by a token). `shared_prefix_tokens` tells the scheduler
how many leading tokens come from shared parts: the prefix it can predict reuse of.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from legato.engine_adapter.base import Tokenizer
from legato.programs.spec import PromptSpec
from legato.programs.state import lookup_path


@dataclass(frozen=True, slots=True)
class PrefixPart:
    """A named, shared piece of prompt text (a system prompt, tool descriptions, few-shot
    examples). Name it once, use it in any number of calls and programs."""

    name: str
    text: str


class PrefixRegistry:
    """Process-wide named prefix parts: `register_prefix("coder_system", "...")` once, then refer
    to it by name from any program. Re-registering a name with different text is an error,
    because programs already planned around the old text."""

    def __init__(self) -> None:
        self._parts: dict[str, str] = {}
        self._lock = threading.Lock()

    def register(self, name: str, text: str) -> PrefixPart:
        with self._lock:
            old = self._parts.get(name)
            if old is not None and old != text:
                raise ValueError(f"prefix part {name!r} is already registered with different text")
            self._parts[name] = text
        return PrefixPart(name, text)

    def get(self, name: str) -> PrefixPart:
        try:
            return PrefixPart(name, self._parts[name])
        except KeyError:
            known = ", ".join(sorted(self._parts)) or "(none)"
            raise KeyError(f"unknown prefix part {name!r}; registered: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._parts


default_prefixes = PrefixRegistry()


def register_prefix(name: str, text: str) -> PrefixPart:
    """Register a shared prefix part in the default registry."""
    return default_prefixes.register(name, text)


def render_value(value: Any) -> str:
    """Slot values: strings as-is, everything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def render_slots(prompt: PromptSpec, scope: Mapping[str, Any]) -> str:
    text = "".join(f"{s.label}{render_value(lookup_path(scope, s.var))}{s.suffix}" for s in prompt.slots)
    return text + prompt.suffix


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    token_ids: tuple[int, ...]
    shared_prefix_tokens: int
    parts: tuple[str, ...]  # names of the prefix parts it starts with


class PromptRenderer:
    """Turns (prefix parts, dynamic text) into token ids with one tokenizer, caching the
    tokenization of each part (LRU, bounded so a stream of one-off parts cannot grow it)."""

    def __init__(self, tokenizer: Tokenizer, max_cached_parts: int = 4096) -> None:
        self.tokenizer = tokenizer
        self._cache: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._max = max_cached_parts
        self.hits = 0
        self.misses = 0

    def part_tokens(self, text: str) -> tuple[int, ...]:
        ids = self._cache.get(text)
        if ids is not None:
            self._cache.move_to_end(text)
            self.hits += 1
            return ids
        self.misses += 1
        ids = tuple(self.tokenizer.encode(text))
        self._cache[text] = ids
        if len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return ids

    def render(self, parts: Iterable[PrefixPart], dynamic: str | Sequence[str] = "") -> RenderedPrompt:
        ids: list[int] = []
        names: list[str] = []
        for part in parts:
            ids.extend(self.part_tokens(part.text))
            names.append(part.name)
        shared = len(ids)
        pieces = [dynamic] if isinstance(dynamic, str) else list(dynamic)
        for piece in pieces:
            if piece:
                ids.extend(self.tokenizer.encode(piece))
        return RenderedPrompt(tuple(ids), shared, tuple(names))

    def render_spec(
        self, prompt: PromptSpec, prefix_parts: Mapping[str, str], scope: Mapping[str, Any]
    ) -> RenderedPrompt:
        parts = [PrefixPart(name, prefix_parts[name]) for name in prompt.parts]
        return self.render(parts, render_slots(prompt, scope))
