"""Tokenizers of the torch engine; both implement `legato.engine_adapter.base.Tokenizer`.

`ByteTokenizer` is the default model's: token id = byte value (0..255) plus a few special tokens
for ChatML-style chat, so every string round-trips and no vocabulary file is needed.
`HFTokenizer` wraps a `tokenizers.Tokenizer` loaded from a checkpoint's `tokenizer.json`, with the
chat template from `tokenizer_config.json` rendered by a sandboxed Jinja environment.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from legato.engine_adapter.base import EngineError
from legato.engine_adapter.chat.formats import hermes_turns

BYTE_SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|im_start|>", "<|im_end|>")
BYTE_VOCAB_SIZE = 264  # 256 bytes + specials, padded to a multiple of 8


class ByteTokenizer:
    """Byte-level tokenizer: ids 0..255 are bytes; 256.. are the special tokens.

    `encode` never produces special tokens from text (a user typing "<|im_end|>" cannot forge a
    turn boundary); `apply_chat_template` inserts them. `decode` drops special tokens and replaces
    invalid UTF-8 (a partial multi-byte character shows as U+FFFD until its last byte arrives).
    """

    # No Hugging Face template: the built-in ChatML rendering, tools in the hermes format.
    chat_template: str | None = None

    def __init__(self) -> None:
        self.special_ids = {tok: 256 + i for i, tok in enumerate(BYTE_SPECIAL_TOKENS)}
        self.bos_token_id = self.special_ids["<|bos|>"]
        self.pad_token_id = self.special_ids["<|pad|>"]
        self.im_start_id = self.special_ids["<|im_start|>"]
        self.im_end_id = self.special_ids["<|im_end|>"]
        self._eos = self.special_ids["<|eos|>"]

    @property
    def eos_token_id(self) -> int:
        return self._eos

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB_SIZE

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Tokens that end a generation: end of sequence and end of a chat turn."""
        return (self._eos, self.im_end_id)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def token_bytes(self, token_id: int) -> bytes:
        """The token's bytes: its byte for ids 0..255 (a lone UTF-8 continuation byte too), the
        special token's name for the others (logprobs show it; decoding drops it)."""
        if 0 <= token_id < 256:
            return bytes((token_id,))
        index = token_id - 256
        return BYTE_SPECIAL_TOKENS[index].encode() if index < len(BYTE_SPECIAL_TOKENS) else b""

    def decode(self, token_ids: Sequence[int]) -> str:
        try:  # the common case, all byte tokens, converts in C
            raw = bytes(token_ids)
        except ValueError:  # special tokens (>= 256) have no text
            raw = bytes(t for t in token_ids if 0 <= t < 256)
        return raw.decode("utf-8", errors="replace")

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """ChatML, with tools and tool calls in the hermes format (see `chat.formats`)."""
        for i, message in enumerate(messages):
            if "role" not in message or ("content" not in message and "tool_calls" not in message):
                raise EngineError(f"chat message {i} needs 'role' and 'content' keys, got {sorted(message)}")
        ids = [self.bos_token_id]
        for role, content in hermes_turns(messages, tools):
            ids.append(self.im_start_id)
            ids.extend(self.encode(f"{role}\n{content}"))
            ids.append(self.im_end_id)
            ids.extend(self.encode("\n"))
        if add_generation_prompt:
            ids.append(self.im_start_id)
            ids.extend(self.encode("assistant\n"))
        return ids


def _tojson(
    value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False
) -> str:
    """Hugging Face's `tojson` for chat templates: plain JSON, no HTML escaping."""
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


@functools.cache
def _byte_level_chars() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's table, used by Llama 3, Qwen
    and most byte-level vocabularies): printable Latin-1 bytes stand for themselves, the others
    are mapped in order onto code points from 256 up. Returns stand-in -> byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    out = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in out.values():
            out[chr(256 + extra)] = b
            extra += 1
    return out


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte fallback


def _decoder_types(config: Any) -> set[str]:
    """Every decoder type named in a tokenizer.json `decoder` entry (Sequence ones included)."""
    if isinstance(config, dict):
        found = {config["type"]} if isinstance(config.get("type"), str) else set()
        for value in config.values():
            found |= _decoder_types(value)
        return found
    if isinstance(config, list):
        return set().union(*(_decoder_types(v) for v in config)) if config else set()
    return set()


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json stores special tokens as strings or as {"content": ...} dicts."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


class HFTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` plus the checkpoint's chat template."""

    def __init__(
        self,
        tokenizer: Any,
        eos_token_id: int,
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        extra_stop_ids: Sequence[int] = (),
    ) -> None:
        self._tok = tokenizer
        self._eos = eos_token_id
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._stop_ids = tuple(dict.fromkeys((eos_token_id, *extra_stop_ids)))
        self._added = set(tokenizer.get_added_tokens_decoder())
        self._decoders = _decoder_types(json.loads(tokenizer.to_str()).get("decoder"))

    @classmethod
    def from_dir(cls, path: Path, config_eos: int | None = None) -> HFTokenizer:
        """Load `tokenizer.json` (+ `tokenizer_config.json` when present) from a checkpoint dir."""
        from tokenizers import Tokenizer as RawTokenizer

        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            raise EngineError(f"checkpoint {path} has no tokenizer.json")
        raw = RawTokenizer.from_file(str(tok_file))
        cfg: dict[str, Any] = {}
        cfg_file = path / "tokenizer_config.json"
        if cfg_file.is_file():
            cfg = json.loads(cfg_file.read_text())
        eos_text = _token_text(cfg.get("eos_token"))
        bos_text = _token_text(cfg.get("bos_token"))
        eos_id = raw.token_to_id(eos_text) if eos_text else None
        if eos_id is None:
            eos_id = config_eos
        if eos_id is None:
            raise EngineError(
                f"checkpoint {path}: no end-of-sequence token (set 'eos_token' in tokenizer_config.json "
                "or 'eos_token_id' in config.json)"
            )
        template = cfg.get("chat_template")
        if isinstance(template, list):  # some checkpoints list named templates
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        extra = []
        if config_eos is not None and config_eos != eos_id:
            extra.append(config_eos)
        return cls(raw, eos_id, template if isinstance(template, str) else None, bos_text, eos_text, extra)

    @property
    def eos_token_id(self) -> int:
        return self._eos

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return self._stop_ids

    def to_json(self) -> str:
        """The `tokenizers` JSON of the vocabulary (what llguidance builds its token trie from)."""
        return str(self._tok.to_str())

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(token_ids), skip_special_tokens=True))

    def token_bytes(self, token_id: int) -> bytes:
        """The token's own bytes, also when they are part of a UTF-8 character (decoding the token
        alone would give U+FFFD): byte-level pieces are mapped back to bytes, SentencePiece byte
        fallbacks `<0xNN>` are that byte, its `▁` is a space; added tokens are their text."""
        piece = self._tok.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id in self._added:
            return str(piece).encode()
        if "ByteLevel" in self._decoders:
            table = _byte_level_chars()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
        if "ByteFallback" in self._decoders and (m := _BYTE_PIECE.fullmatch(piece)):
            return bytes((int(m.group(1), 16),))
        if {"Metaspace", "Replace"} & self._decoders:
            return str(piece).replace("\u2581", " ").encode()
        return self.decode([token_id]).encode()

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        if self.chat_template is None:
            # No template shipped: fall back to ChatML (tools in the hermes format).
            text = "".join(
                f"<|im_start|>{role}\n{content}<|im_end|>\n"
                for role, content in hermes_turns(messages, tools)
            )
            if add_generation_prompt:
                text += "<|im_start|>assistant\n"
        else:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise EngineError(f"chat template error: {message}")

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            env.filters["tojson"] = _tojson
            text = env.from_string(self.chat_template).render(
                messages=[dict(m) for m in messages],
                tools=[dict(t) for t in tools] if tools else None,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        # The template writes special tokens as text; parse them as specials here.
        return list(self._tok.encode(text, add_special_tokens=False).ids)
