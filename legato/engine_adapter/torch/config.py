"""Model and engine configuration as plain dataclasses.

`ModelConfig` mirrors the fields of a Hugging Face Llama / Qwen2 `config.json` that change the
computation; `from_hf_dict` validates each one and names the field at fault, because a wrong
config otherwise shows up much later as a baffling shape error. `EngineConfig` holds the serving
knobs (KV-cache size, chunked-prefill token budget, batch limits, device).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legato.engine_adapter.base import EngineError
from legato.spec.adaptive import check_draft_len
from legato.spec.drafter import ENGINE_DRAFTERS, MODEL_DRAFTER

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


class ConfigError(EngineError):
    """A model or engine config field is missing or has a bad value."""


def check_device(device: str) -> None:
    """`cpu`, `cuda` or `cuda:N`, and for CUDA a GPU this torch build can use: checked when the
    engine is configured, so a typo or a CPU-only machine is one clear error, not a traceback
    from deep inside the first tensor moved there."""
    if device == "cpu":
        return
    index = device.removeprefix("cuda:") if device.startswith("cuda:") else None
    if device != "cuda" and not (index is not None and index.isascii() and index.isdigit()):
        raise ConfigError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r}: torch {torch.__version__} sees no CUDA GPU on this machine "
            "(a CPU build, or no driver); use cpu"
        )
    if index is not None and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")


def describe_device(device: str) -> str:
    """The device with its model (the CPU's from /proc/cpuinfo, the GPU's name), for reports:
    a measured speed is a fact about one machine."""
    if device != "cpu":
        import torch

        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu ({line.split(':', 1)[1].strip()})"
    except OSError:
        pass
    return "cpu"


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Architecture of a Llama-family decoder (Llama 2/3, Qwen2 with qkv bias)."""

    vocab_size: int = 264
    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 0  # 0 = hidden_size // num_attention_heads
    max_position_embeddings: int = 16384
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # only {"rope_type": "llama3", ...} is supported
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2: bias on q/k/v projections
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        positive = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"model config field {name!r} must be a positive integer, got {value!r}")
        if self.head_dim == 0:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"model config field 'hidden_size' ({self.hidden_size}) must be divisible by "
                    f"'num_attention_heads' ({self.num_attention_heads}) when 'head_dim' is not given"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if not isinstance(self.head_dim, int) or self.head_dim < 2 or self.head_dim % 2:
            raise ConfigError(
                f"model config field 'head_dim' must be an even integer >= 2, got {self.head_dim!r}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"model config field 'num_key_value_heads' ({self.num_key_value_heads}) must divide "
                f"'num_attention_heads' ({self.num_attention_heads})"
            )
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"model config field {name!r} must be a positive number, got {value!r}")
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"model config field 'model_type' is {self.model_type!r}; supported: {SUPPORTED_MODEL_TYPES}"
            )
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in ("llama3", "default"):
                raise ConfigError(
                    f"model config field 'rope_scaling' has rope_type {kind!r}; "
                    "supported: 'llama3', 'default'"
                )

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache elements per token (multiply by the dtype size for bytes)."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        """Read a Hugging Face `config.json` dict, validating the fields that matter."""
        model_type = raw.get("model_type")
        if model_type is None:
            raise ConfigError("model config field 'model_type' is missing (expected 'llama' or 'qwen2')")
        required = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        )
        for name in required:
            if name not in raw:
                raise ConfigError(f"model config field {name!r} is missing")
        eos = raw.get("eos_token_id")
        if isinstance(eos, list):  # Llama 3 lists several end tokens; the first is the main one
            eos = eos[0] if eos else None
        attention_bias = bool(raw.get("attention_bias", model_type == "qwen2"))
        return cls(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=raw["num_attention_heads"],
            num_key_value_heads=raw.get("num_key_value_heads") or raw["num_attention_heads"],
            head_dim=raw.get("head_dim") or 0,
            max_position_embeddings=raw.get("max_position_embeddings", 4096),
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=raw.get("rope_theta", 10000.0),
            rope_scaling=raw.get("rope_scaling"),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            model_type=model_type,
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=eos,
        )

    def to_hf_dict(self, torch_dtype: str = "float32") -> dict[str, Any]:
        """The `config.json` Hugging Face tools expect for this architecture."""
        arch = "Qwen2ForCausalLM" if self.model_type == "qwen2" else "LlamaForCausalLM"
        out: dict[str, Any] = {
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": torch_dtype,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }
        if self.model_type == "llama":
            out["attention_bias"] = self.attention_bias
            out["mlp_bias"] = False
        return out


DEFAULT_KV_CACHE_TOKENS = 32768


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Serving knobs of the torch engine.

    KV-cache size: give `num_blocks`, or `kv_cache_tokens` (rounded up to whole blocks), or
    neither (DEFAULT_KV_CACHE_TOKENS). `max_num_batched_tokens` is the per-step token budget that
    chunked prefill shares with decodes; `max_model_len` defaults to the model's maximum positions.
    """

    block_size: int = 16
    num_blocks: int | None = None
    kv_cache_tokens: int | None = None
    max_num_batched_tokens: int = 512
    max_num_seqs: int = 64
    max_model_len: int | None = None
    device: str = "cpu"
    dtype: str | None = None  # None = float32 on CPU, bfloat16 on CUDA
    seed: int = 0  # seeds the default model's weights and unseeded sampling
    enable_prefix_caching: bool = True
    request_timeout_s: float = 600.0  # longest wait for one streamed chunk
    command_timeout_s: float = 60.0  # longest wait for a control call (pin, export, stats...)
    # KV tiers below the device (see legato.cache.tier_manager); both off by default.
    host_tier_bytes: int = 0  # host-RAM pool for evicted blocks; 0 = no host tier
    redis_url: str | None = None  # shared Redis tier, e.g. redis://127.0.0.1:6379/0
    redis_cluster: bool = False  # redis_url is a seed node of a Redis Cluster (db 0 only)
    redis_chunk_blocks: int = 16  # blocks per Redis value
    redis_ttl_s: int = 3600
    redis_op_timeout_s: float = 0.1  # a dead or stalled Redis costs at most this per call
    tier_fetch_timeout_s: float = 5.0  # longest wait for a tier load before prefill (then recompute)
    # speculative decoding of greedy requests (speculator.py): a drafter name, None = off
    speculative_drafter: str | None = None
    num_speculative_tokens: int = 4  # largest draft per verify step (adapted per request below it)
    # the `draft-model` drafter's model: a checkpoint directory of a smaller model with the
    # target's vocabulary (draft_model.py); None = that drafter is not available
    draft_model: str | None = None

    def __post_init__(self) -> None:
        ints = ("block_size", "max_num_batched_tokens", "max_num_seqs")
        for name in ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"engine config field {name!r} must be a positive integer, got {value!r}")
        for name in ("num_blocks", "kv_cache_tokens", "max_model_len"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(
                    f"engine config field {name!r} must be a positive integer or None, got {value!r}"
                )
        if self.dtype is not None and self.dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(
                f"engine config field 'dtype' must be 'float32', 'float16' or 'bfloat16', got {self.dtype!r}"
            )
        for name in ("host_tier_bytes", "redis_chunk_blocks", "redis_ttl_s"):
            value = getattr(self, name)
            least = 0 if name == "host_tier_bytes" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(
                    f"engine config field {name!r} must be an integer >= {least}, got {value!r}"
                )
        _check_speculation(self.speculative_drafter, self.num_speculative_tokens, self.draft_model)
        check_device(self.device)
        for name in ("request_timeout_s", "command_timeout_s", "redis_op_timeout_s", "tier_fetch_timeout_s"):
            value = getattr(self, name)
            if not value > 0 or math.isnan(value):
                raise ConfigError(f"engine config field {name!r} must be > 0, got {value!r}")

    @property
    def resolved_dtype(self) -> str:
        if self.dtype is not None:
            return self.dtype
        return "bfloat16" if self.device.startswith("cuda") else "float32"

    @property
    def resolved_num_blocks(self) -> int:
        if self.num_blocks is not None:
            return self.num_blocks
        tokens = self.kv_cache_tokens or DEFAULT_KV_CACHE_TOKENS
        return -(-tokens // self.block_size)

    def with_overrides(self, **overrides: Any) -> EngineConfig:
        """A copy with some fields replaced; an unknown field name is an error naming it."""
        names = {f.name for f in dataclasses.fields(self)}
        for key in overrides:
            if key not in names:
                raise ConfigError(f"unknown engine config field {key!r}; known fields: {sorted(names)}")
        return dataclasses.replace(self, **overrides)


def _check_speculation(drafter: str | None, max_draft: int, draft_model: str | None) -> None:
    if drafter is not None and drafter not in ENGINE_DRAFTERS:
        raise ConfigError(
            f"engine config field 'speculative_drafter' must be one of {', '.join(ENGINE_DRAFTERS)} or None, "
            f"got {drafter!r}"
        )
    if draft_model is not None and (not isinstance(draft_model, str) or not draft_model.strip()):
        raise ConfigError(
            f"engine config field 'draft_model' must be a checkpoint directory, got {draft_model!r}"
        )
    if drafter == MODEL_DRAFTER and draft_model is None:
        raise ConfigError(
            f"engine config field 'speculative_drafter' is {MODEL_DRAFTER!r} but 'draft_model' is not set "
            "(a checkpoint directory of a smaller model with the same vocabulary)"
        )
    try:
        check_draft_len(max_draft, "engine config field 'num_speculative_tokens'")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
