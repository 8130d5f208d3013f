"""Hugging Face checkpoint directories: load and save.

Layout: `config.json`, weights in `model.safetensors` or shards listed by
`model.safetensors.index.json`, and the tokenizer (`tokenizer.json` + `tokenizer_config.json`
with its chat template). The default byte-level tokenizer has no `tokenizer.json`; it is saved as
a `tokenizer_config.json` whose `tokenizer_class` is `LegatoByteTokenizer`.

Every failure names what to fix: the missing file, the missing tensor, the config field, or the
tensor whose shape does not match the config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from legato.engine_adapter.base import EngineError
from legato.engine_adapter.torch.config import ConfigError, ModelConfig
from legato.engine_adapter.torch.model import LlamaForCausalLM, init_default_weights
from legato.engine_adapter.torch.tokenizer import ByteTokenizer, HFTokenizer

BYTE_TOKENIZER_CLASS = "LegatoByteTokenizer"
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CheckpointError(EngineError):
    """A checkpoint directory is incomplete or does not match its config."""


def torch_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ConfigError(f"unsupported dtype {name!r}; use one of {sorted(_DTYPES)}") from None


def default_model_config() -> ModelConfig:
    """The small default model: a few milliseconds per step on a laptop CPU."""
    tok = ByteTokenizer()
    return ModelConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def build_default_model(
    seed: int = 0, config: ModelConfig | None = None, device: str = "cpu", dtype: str = "float32"
) -> LlamaForCausalLM:
    """A seeded random model: the same seed gives the same weights on every machine."""
    model = LlamaForCausalLM(config or default_model_config())
    init_default_weights(model, seed)
    return model.to(device=device, dtype=torch_dtype(dtype)).fuse().eval()


def read_config(path: Path) -> ModelConfig:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"checkpoint {path} has no config.json")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg_file} must hold a JSON object")
    try:
        return ModelConfig.from_hf_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{cfg_file}: {exc}") from exc
    except TypeError as exc:
        raise ConfigError(f"{cfg_file}: {exc}") from exc


def weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no 'weight_map' object")
        files = sorted({path / str(f) for f in weight_map.values()})
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"shard {f.name} listed in {index.name} is missing from {path}")
        return files
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(path.glob("*.safetensors"))
    if not found:
        raise CheckpointError(f"checkpoint {path} has no *.safetensors weights")
    return found


def load_model(path: Path, device: str = "cpu", dtype: str = "float32") -> LlamaForCausalLM:
    """Build the model from a checkpoint directory, checking every tensor against the config."""
    path = Path(path)
    config = read_config(path)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    tensors: dict[str, torch.Tensor] = {}
    target = torch_dtype(dtype)
    for f in weight_files(path):
        with safe_open(str(f), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                if name.endswith(_IGNORED_SUFFIXES):
                    continue
                if name == "lm_head.weight" and config.tie_word_embeddings:
                    continue
                if name not in expected:
                    raise CheckpointError(
                        f"{f.name}: unexpected tensor {name!r} (not part of a {config.model_type} model with "
                        f"this config; check 'num_hidden_layers', 'attention_bias', 'tie_word_embeddings')"
                    )
                t = handle.get_tensor(name)
                if tuple(t.shape) != expected[name]:
                    raise CheckpointError(
                        f"{f.name}: tensor {name!r} has shape {tuple(t.shape)} but config.json implies "
                        f"{expected[name]}"
                    )
                tensors[name] = t.to(target)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"checkpoint {path} is missing tensor {missing[0]!r}{more}")
    model = model.to_empty(device=device).to(target)
    model.load_state_dict(tensors, strict=False, assign=False)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Rebuild the non-persistent RoPE tables, which `to_empty` left uninitialised.
    from legato.engine_adapter.torch.model import RotaryEmbedding

    model.rotary = RotaryEmbedding(config).to(device)
    return model.fuse().eval()


def load_tokenizer(path: Path, config: ModelConfig) -> ByteTokenizer | HFTokenizer:
    cfg_file = path / "tokenizer_config.json"
    if cfg_file.is_file():
        raw = json.loads(cfg_file.read_text())
        if raw.get("tokenizer_class") == BYTE_TOKENIZER_CLASS:
            return ByteTokenizer()
    return HFTokenizer.from_dir(path, config.eos_token_id)


def load_checkpoint(
    path: Path | str, device: str = "cpu", dtype: str = "float32"
) -> tuple[LlamaForCausalLM, ByteTokenizer | HFTokenizer]:
    """Model and tokenizer from a Hugging Face checkpoint directory."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    model = load_model(path, device, dtype)
    return model, load_tokenizer(path, model.config)


def save_checkpoint(
    model: LlamaForCausalLM,
    path: Path | str,
    tokenizer: ByteTokenizer | HFTokenizer | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write the model (and tokenizer) in Hugging Face layout; shards when `max_shard_bytes` is set."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # clone: parameters are views into fused weights, and safetensors refuses shared storage
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    dtype_name = str(next(iter(state.values())).dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(model.config.to_hf_dict(dtype_name), indent=2))
    if max_shard_bytes is None:
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for name, t in state.items():
            nbytes = t.numel() * t.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][name] = t
            size += nbytes
        weight_map: dict[str, str] = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(path / fname), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, fname))
        total = sum(t.numel() * t.element_size() for t in state.values())
        index: dict[str, Any] = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if isinstance(tokenizer, ByteTokenizer):
        tok_cfg = {"tokenizer_class": BYTE_TOKENIZER_CLASS, "eos_token": "<|eos|>", "bos_token": "<|bos|>"}
        (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    elif isinstance(tokenizer, HFTokenizer):
        tokenizer._tok.save(str(path / "tokenizer.json"))
        hf_cfg: dict[str, Any] = {"eos_token": tokenizer.eos_token, "bos_token": tokenizer.bos_token}
        if tokenizer.chat_template is not None:
            hf_cfg["chat_template"] = tokenizer.chat_template
        (path / "tokenizer_config.json").write_text(json.dumps(hf_cfg, indent=2))
    return path


def model_fingerprint(model: LlamaForCausalLM) -> str:
    """A short identity of the weights, mixed into every block hash so KV from different weights
    never matches. Hashes the config plus a sample of every tensor (not all bytes: a multi-GB
    checkpoint would take seconds), which is enough to tell different checkpoints apart."""
    import hashlib

    h = hashlib.sha256(json.dumps(model.config.to_hf_dict(), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        sample = t.detach().reshape(-1)[:256].float().cpu()
        h.update(name.encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]
