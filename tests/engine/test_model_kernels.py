"""The fused CPU kernels equal the torch ops they replace, and the engine is correct with and
without them (the dense reference never uses them, so test_correctness checks the kernel path)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from legato.engine_adapter.base import GenerateRequest, SamplingParams
from legato.engine_adapter.torch import EngineCore, cpu_kernels
from legato.engine_adapter.torch.cpu_kernels import CpuKernels
from legato.engine_adapter.torch.model import apply_rope
from legato.engine_adapter.torch.packed_decode import PackedDecoder
from tests.engine.conftest import assert_matches_reference


@pytest.fixture
def kern() -> CpuKernels:
    k = cpu_kernels.load()
    if k is None:
        pytest.skip("no C compiler: the CPU kernels are unavailable")
    return k


@pytest.mark.parametrize("dim", [16, 64, 71, 256])
def test_rmsnorm_and_silu_mul_match_torch(kern: CpuKernels, dim: int) -> None:
    gen = torch.Generator().manual_seed(dim)
    x = torch.randn(5, dim, generator=gen) * 3
    w = torch.randn(dim, generator=gen)
    torch.testing.assert_close(kern.rmsnorm(x, w, 1e-5), F.rms_norm(x, (dim,), w, 1e-5))
    gate_up = torch.randn(5, 2 * dim, generator=gen) * 30  # large |x|: exp's clamping
    want = F.silu(gate_up[:, :dim]) * gate_up[:, dim:]
    torch.testing.assert_close(kern.silu_mul(gate_up), want)


def test_rope_store_rotates_and_writes_the_cache(kern: CpuKernels) -> None:
    gen = torch.Generator().manual_seed(1)
    t, h, kvh, d, slots = 6, 4, 2, 16, 40
    qkv = torch.randn(t, h + 2 * kvh, d, generator=gen)
    positions = torch.tensor([5, 0, 33, 7, 8, 9])
    table = torch.randn(64, d // 2, generator=gen)
    cos, sin = torch.cat([table.cos()] * 2, -1), torch.cat([table.sin()] * 2, -1)
    slot_mapping = torch.tensor([3, 17, 0, 21, 22, 23])
    kv = torch.zeros(slots, kvh, 2 * d)
    want_qk = apply_rope(qkv[:, : h + kvh], cos[positions].unsqueeze(1), sin[positions].unsqueeze(1))
    v = qkv[:, h + kvh :].clone()
    kern.rope_store(qkv, h, cos, sin, positions, kv, slot_mapping)
    torch.testing.assert_close(qkv[:, : h + kvh], want_qk)
    torch.testing.assert_close(kv[slot_mapping], torch.cat([want_qk[:, h:], v], -1))
    assert kv.count_nonzero() == t * kvh * 2 * d  # nothing else was written


def _key_layout(logical: torch.Tensor, tile: int) -> torch.Tensor:
    """Keys `[rows, kvh, cap, dim]` in the workspace layout the kernel reads: transposed
    `[rows, kvh, dim, cap]` (tile 0), or tiled `[rows, kvh, cap / tile, dim, tile]`."""
    rows, kvh, cap, dim = logical.shape
    if not tile:
        return logical.transpose(-1, -2).contiguous()
    return logical.view(rows, kvh, cap // tile, tile, dim).transpose(-1, -2).contiguous()


def _key_logical(layout: torch.Tensor, tile: int) -> torch.Tensor:
    if not tile:
        return layout.transpose(-1, -2)
    rows, kvh, tiles, dim, _ = layout.shape
    return layout.transpose(-1, -2).reshape(rows, kvh, tiles * tile, dim)


@pytest.mark.parametrize("tile", [0, 16])
@pytest.mark.parametrize(
    ("heads", "kv_heads", "dim"), [(8, 4, 32), (6, 2, 16), (4, 4, 64), (6, 2, 48), (3, 1, 16)]
)
def test_decode_attention_matches_sdpa_on_ragged_rows(
    kern: CpuKernels, heads: int, kv_heads: int, dim: int, tile: int
) -> None:
    """GQA groups of 1-3 heads, ragged lengths around the 16-lane blocks, rows out of order, keys
    in both workspace layouts."""
    gen = torch.Generator().manual_seed(heads * 100 + dim)
    n, rows, cap = 7, 9, 160
    keys = _key_layout(torch.randn(rows, kv_heads, cap, dim, generator=gen), tile)
    values = torch.randn(rows, kv_heads, cap, dim, generator=gen)
    qkv = torch.randn(2 * n, heads + 2 * kv_heads, dim, generator=gen)[::2]  # strided rows
    row_of = torch.tensor([4, 0, 8, 1, 6, 2, 3])
    lens = torch.tensor([1, 15, 16, 17, 64, 100, 160])
    out = torch.empty(n, heads, dim)
    kern.decode_attention(qkv, heads, keys, values, row_of, lens, out, 1.0 / math.sqrt(dim))
    logical_keys = _key_logical(keys, tile)  # [rows, kvh, cap, dim]
    for i in range(n):
        r, length = int(row_of[i]), int(lens[i])
        # the new key and value landed at the last position before attending
        torch.testing.assert_close(logical_keys[r, :, length - 1], qkv[i, heads : heads + kv_heads])
        torch.testing.assert_close(values[r, :, length - 1], qkv[i, heads + kv_heads :])
        k = logical_keys[r, :, :length]
        v = values[r, :, :length]
        q = qkv[i, :heads].unsqueeze(1)
        want = F.scaled_dot_product_attention(q, k, v, enable_gqa=True).squeeze(1)
        torch.testing.assert_close(out[i], want, atol=2e-5, rtol=1e-4)


def _mix() -> list[tuple[list[int], int]]:
    return [([(i * 13 + j) % 256 for j in range(5 + 9 * i)], 4 + 5 * i) for i in range(5)]


def _generate(core: EngineCore, mix: list[tuple[list[int], int]]) -> dict[str, list[int]]:
    reqs = [
        GenerateRequest(f"r{i}", tuple(p), SamplingParams(max_tokens=m, ignore_eos=True))
        for i, (p, m) in enumerate(mix)
    ]
    outs = core.run_to_completion(reqs)
    return {rid: [t for o in chunks for t in o.token_ids] for rid, chunks in outs.items()}


@pytest.mark.parametrize("use_kernels", [True, False])
def test_engine_matches_reference_with_and_without_kernels(
    make_core: Callable[..., EngineCore], use_kernels: bool
) -> None:
    core = make_core(max_num_batched_tokens=24, max_num_seqs=3)
    core.model.use_cpu_kernels = use_kernels
    mix = _mix()
    got = _generate(core, mix)
    for i, (prompt, _) in enumerate(mix):
        assert_matches_reference(core, prompt, got[f"r{i}"])


def _packed_decoder_or_skip(core: EngineCore) -> PackedDecoder:
    kern = cpu_kernels.load()
    decoder = None if kern is None else core.model.packed_decoder(kern)
    if decoder is None:
        pytest.skip("no C compiler or no MKL in this torch build: the packed decode step is unavailable")
    return decoder


def test_packed_decode_step_gives_the_per_op_paths_tokens(make_core: Callable[..., EngineCore]) -> None:
    """The one-call decode step (MKL-packed weights) against the per-op kernel path and the dense
    reference, on a mix whose decodes join and leave the batch at different steps."""
    packed, per_op = make_core(max_num_seqs=5), make_core(max_num_seqs=5)
    per_op.model.use_packed_decode = False
    decoder = _packed_decoder_or_skip(packed)
    mix = _mix()
    got, want = _generate(packed, mix), _generate(per_op, mix)
    assert got == want
    assert decoder.steps > 0 and decoder.repacks == 1
    for i, (prompt, _) in enumerate(mix):
        assert_matches_reference(packed, prompt, got[f"r{i}"])


def test_packed_decode_step_follows_in_place_weight_changes(make_core: Callable[..., EngineCore]) -> None:
    packed, per_op = make_core(max_num_seqs=5), make_core(max_num_seqs=5)
    per_op.model.use_packed_decode = False
    decoder = _packed_decoder_or_skip(packed)
    mix = _mix()
    before = _generate(packed, mix)
    assert _generate(per_op, mix) == before  # same history, so the same prefix cache
    for core in (packed, per_op):
        with torch.no_grad():  # an in-place load, as load_state_dict does
            for layer in core.model.model.layers:
                layer.mlp.down_proj.weight.mul_(-3.0)
                layer.self_attn.q_proj.weight.mul_(2.0)  # a view into the fused q/k/v weight
    after = _generate(packed, mix)
    assert after == _generate(per_op, mix)
    assert after != before  # the change mattered, so the repack did too
    assert decoder.repacks == 2


def test_packed_decode_step_refuses_weights_replaced_after_fusing(
    make_core: Callable[..., EngineCore],
) -> None:
    core = make_core(max_num_seqs=5)
    _packed_decoder_or_skip(core)
    mlp = core.model.model.layers[0].mlp
    mlp.up_proj.weight = torch.nn.Parameter(torch.zeros_like(mlp.up_proj.weight), requires_grad=False)
    with pytest.raises(RuntimeError, match=r"model\.fuse\(\)"):
        _generate(core, _mix())
    core.model.fuse()  # the documented fix
    assert len(_generate(make_core(max_num_seqs=5), _mix())) == len(_mix())


def test_models_past_the_packing_limit_keep_the_per_op_path(
    make_core: Callable[..., EngineCore], monkeypatch: pytest.MonkeyPatch
) -> None:
    from legato.engine_adapter.torch import packed_decode

    monkeypatch.setattr(packed_decode, "MAX_PACKED_BYTES", 1024)
    core = make_core(max_num_seqs=5)
    kern = cpu_kernels.load()
    if kern is None:
        pytest.skip("no C compiler: the CPU kernels are unavailable")
    assert core.model.packed_decoder(kern) is None
    got = _generate(core, _mix())
    for i, (prompt, _) in enumerate(_mix()):
        assert_matches_reference(core, prompt, got[f"r{i}"])


def test_fuse_keeps_current_fused_weights_and_rebuilds_broken_ones(
    make_core: Callable[..., EngineCore],
) -> None:
    core = make_core()
    attn = core.model.model.layers[0].self_attn
    before = attn.qkv_weight.data_ptr()
    core.model.fuse()  # as every EngineCore on this model does
    assert attn.qkv_weight.data_ptr() == before
    want_k = attn.k_proj.weight.detach().clone()
    attn.k_proj.weight = torch.nn.Parameter(want_k.clone(), requires_grad=False)
    core.model.fuse()
    assert attn.qkv_weight.data_ptr() != before
    attn._check_fused()  # the projections are views of the new fused weight again
    torch.testing.assert_close(attn.k_proj.weight, want_k)


def test_engines_sharing_a_model_share_its_packed_weights(make_core: Callable[..., EngineCore]) -> None:
    first = make_core(max_num_seqs=5)
    decoder = _packed_decoder_or_skip(first)
    want = _generate(first, _mix())
    from legato.engine_adapter.torch import EngineConfig

    second = EngineCore(first.model, first.tokenizer, EngineConfig(num_blocks=64, max_num_seqs=5))
    assert _generate(second, _mix()) == want
    assert decoder.repacks == 1


@pytest.mark.parametrize("rows", [1, 7, 32, 33, 100])
def test_a_packed_weight_serves_any_number_of_rows(rows: int) -> None:
    gemm = cpu_kernels.packed_gemm()
    if gemm is None:
        pytest.skip("no MKL in this torch build: the packed GEMM is unavailable")
    gen = torch.Generator().manual_seed(rows)
    weight, x = torch.randn(72, 48, generator=gen), torch.randn(rows, 48, generator=gen)
    packed = gemm.pack(weight)  # sized for the default 32 rows
    torch.testing.assert_close(gemm.linear(x, packed, 72), x @ weight.T, atol=1e-4, rtol=1e-4)
