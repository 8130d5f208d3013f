"""Logprob `bytes`: a token's own bytes, also for byte tokens that are only part of a UTF-8
character (decoding such a token alone gives U+FFFD, whose bytes are not the token's)."""

from __future__ import annotations

from pathlib import Path

from legato.engine_adapter.torch.tokenizer import ByteTokenizer, HFTokenizer


def test_byte_tokenizer_bytes() -> None:
    tok = ByteTokenizer()
    euro = "€".encode()  # e2 82 ac
    assert [tok.token_bytes(t) for t in tok.encode("€")] == [bytes((b,)) for b in euro]
    assert tok.token_bytes(tok.im_end_id) == b"<|im_end|>"
    assert b"".join(tok.token_bytes(t) for t in tok.encode("naïve €5")) == "naïve €5".encode()


def _byte_level_bpe(path: Path) -> HFTokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|end|>"]
    )
    tok.train_from_iterator(["hello world, hello there"] * 20, trainer)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text('{"eos_token": "<|end|>"}')
    return HFTokenizer.from_dir(path)


def test_byte_level_bpe_bytes(tmp_path: Path) -> None:
    tok = _byte_level_bpe(tmp_path)
    ids = tok.encode("hello €")  # € was never merged: three single-byte tokens
    pieces = [tok.token_bytes(t) for t in ids]
    assert b"".join(pieces) == "hello €".encode()
    assert pieces[-3:] == [b"\xe2", b"\x82", b"\xac"]
    assert tok.decode(ids[-3:-2]) == "\ufffd"  # what the old code reported the bytes of
    assert tok.token_bytes(tok.eos_token_id) == b"<|end|>"
