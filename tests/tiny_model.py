"""The tiny seeded model the engine, scheduler, server and demo tests run: every test builds it in
milliseconds, and its byte tokenizer's special tokens sit right after the 256 byte tokens."""

from __future__ import annotations

from legato.engine_adapter.torch import ModelConfig


def tiny_model_config(max_position_embeddings: int = 1024) -> ModelConfig:
    return ModelConfig(
        vocab_size=264,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=256,
        eos_token_id=257,
    )


TINY = tiny_model_config()
