"""Hugging Face checkpoint layout: round trip, sharding, clear errors, Qwen2, tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from legato.engine_adapter.base import GenerateRequest, SamplingParams
from legato.engine_adapter.torch import (
    CheckpointError,
    ConfigError,
    HFTokenizer,
    LlamaForCausalLM,
    ModelConfig,
    build_core,
    load_checkpoint,
    save_checkpoint,
)
from legato.engine_adapter.torch.model import init_default_weights
from legato.engine_adapter.torch.tokenizer import ByteTokenizer
from tests.engine.conftest import TINY

IDS = [5, 80, 17, 200, 33, 9, 140, 77]


def _model(config: ModelConfig = TINY, seed: int = 7) -> LlamaForCausalLM:
    model = LlamaForCausalLM(config)
    init_default_weights(model, seed)
    return model.eval()


def test_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    model = _model()
    save_checkpoint(model, tmp_path, ByteTokenizer())
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    loaded, tok = load_checkpoint(tmp_path)
    assert isinstance(tok, ByteTokenizer)
    assert torch.equal(model.dense_logits(IDS), loaded.dense_logits(IDS))


def test_sharded_round_trip(tmp_path: Path) -> None:
    model = _model()
    save_checkpoint(model, tmp_path, ByteTokenizer(), max_shard_bytes=100_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    loaded, _ = load_checkpoint(tmp_path)
    assert torch.equal(model.dense_logits(IDS), loaded.dense_logits(IDS))


def test_engine_serves_a_saved_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(_model(), tmp_path, ByteTokenizer())
    core = build_core(tmp_path, num_blocks=32)
    same = build_core(model_config=TINY, seed=7, num_blocks=32)  # the same seeded weights, built directly
    assert core.model_name == tmp_path.name
    assert core.fingerprint == same.fingerprint
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    a = core.run_to_completion([GenerateRequest("a", tuple(IDS), params)])["a"]
    b = same.run_to_completion([GenerateRequest("b", tuple(IDS), params)])["b"]
    assert [o.token_ids for o in a] == [o.token_ids for o in b]


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    save_checkpoint(_model(), tmp_path, ByteTokenizer())
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_checkpoint(tmp_path)


def test_shape_mismatch_names_tensor(tmp_path: Path) -> None:
    save_checkpoint(_model(), tmp_path, ByteTokenizer())
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"mlp\.(gate|up|down)_proj\.weight. has shape"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("hidden_size", "big", "hidden_size"),
        ("num_key_value_heads", 3, "num_key_value_heads"),
        ("model_type", "gpt2", "model_type"),
        ("rope_theta", -1, "rope_theta"),
        ("num_hidden_layers", None, "num_hidden_layers"),  # None = field removed
    ],
)
def test_bad_config_field_is_named(tmp_path: Path, field: str, value: object, pattern: str) -> None:
    save_checkpoint(_model(), tmp_path, ByteTokenizer())
    cfg = json.loads((tmp_path / "config.json").read_text())
    if value is None:
        del cfg[field]
    else:
        cfg[field] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=pattern):
        load_checkpoint(tmp_path)


def test_missing_directory_and_weights(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    save_checkpoint(_model(), tmp_path, ByteTokenizer())
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(tmp_path)


def test_qwen2_config_loads_with_qkv_bias(tmp_path: Path) -> None:
    cfg = ModelConfig(**{**_fields(TINY), "model_type": "qwen2", "attention_bias": True})
    model = _model(cfg)
    save_checkpoint(model, tmp_path, ByteTokenizer())
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["model_type"] == "qwen2" and "attention_bias" not in raw  # Qwen2 implies the bias
    loaded, _ = load_checkpoint(tmp_path)
    assert loaded.config.attention_bias
    bias = loaded.model.layers[0].self_attn.q_proj.bias
    assert bias is not None and bool(bias.abs().sum() > 0)
    assert torch.equal(model.dense_logits(IDS), loaded.dense_logits(IDS))


def _fields(cfg: ModelConfig) -> dict[str, object]:
    return {name: getattr(cfg, name) for name in cfg.__dataclass_fields__}


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_logits_match_hugging_face_transformers(tmp_path: Path, model_type: str) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = ModelConfig(**{**_fields(TINY), "model_type": model_type, "attention_bias": model_type == "qwen2"})
    model = _model(cfg)
    save_checkpoint(model, tmp_path, ByteTokenizer())
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = hf(torch.tensor([IDS])).logits[0]
    assert torch.allclose(model.dense_logits(IDS), ref, atol=1e-4)


def test_llama3_rope_scaling_is_accepted() -> None:
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    }
    plain = _model()
    scaled = LlamaForCausalLM(ModelConfig(**{**_fields(TINY), "rope_scaling": scaling}))
    scaled.load_state_dict(plain.state_dict())
    assert not torch.equal(plain.rotary.cos, scaled.rotary.cos)
    with pytest.raises(ConfigError, match="rope_scaling"):
        ModelConfig(**{**_fields(TINY), "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})


def _write_hf_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {
        "[UNK]": 0,
        "<|im_start|>": 1,
        "<|im_end|>": 2,
        "hello": 3,
        "world": 4,
        "user": 5,
        "assistant": 6,
    }
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.save(str(path / "tokenizer.json"))
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant{% endif %}"
    )
    cfg = {"eos_token": "<|im_end|>", "chat_template": template}
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))


def test_hf_tokenizer_with_chat_template(tmp_path: Path) -> None:
    _write_hf_tokenizer(tmp_path)
    tok = HFTokenizer.from_dir(tmp_path)
    assert tok.eos_token_id == 2
    assert tok.encode("hello world") == [3, 4]
    assert tok.decode([3, 4]) == "hello world"
    ids = tok.apply_chat_template([{"role": "user", "content": "hello"}])
    assert ids == [1, 5, 3, 2, 1, 6]


def test_checkpoint_with_hf_tokenizer_round_trips(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    _write_hf_tokenizer(src)
    tok = HFTokenizer.from_dir(src)
    save_checkpoint(_model(), dst, tok)
    _, loaded = load_checkpoint(dst)
    assert isinstance(loaded, HFTokenizer)
    assert loaded.apply_chat_template([{"role": "user", "content": "world"}]) == [1, 5, 4, 2, 1, 6]
