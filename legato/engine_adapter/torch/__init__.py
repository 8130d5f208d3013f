"""The embedded torch reference engine: a Llama-family decoder with a paged KV cache, continuous
batching, chunked prefill, automatic prefix caching, pins, eviction hints and KV export/import.

Use `load_engine()` for the async `TorchEngine` (the `Engine` protocol), or `build_core()` for the
synchronous `EngineCore` that benchmarks drive step by step.
"""

from legato.engine_adapter.torch.checkpoint import (
    CheckpointError,
    build_default_model,
    default_model_config,
    load_checkpoint,
    save_checkpoint,
)
from legato.engine_adapter.torch.config import ConfigError, EngineConfig, ModelConfig
from legato.engine_adapter.torch.core import EngineCore
from legato.engine_adapter.torch.engine import TorchEngine, build_core, load_engine
from legato.engine_adapter.torch.model import LlamaForCausalLM
from legato.engine_adapter.torch.outputs import EngineStats, RequestOutput
from legato.engine_adapter.torch.tokenizer import ByteTokenizer, HFTokenizer

__all__ = [
    "ByteTokenizer",
    "CheckpointError",
    "ConfigError",
    "EngineConfig",
    "EngineCore",
    "EngineStats",
    "HFTokenizer",
    "LlamaForCausalLM",
    "ModelConfig",
    "RequestOutput",
    "TorchEngine",
    "build_core",
    "build_default_model",
    "default_model_config",
    "load_checkpoint",
    "load_engine",
    "save_checkpoint",
]
