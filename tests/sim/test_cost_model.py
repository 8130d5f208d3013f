import pytest

from legato.sim.cost_model import CostModel
from legato.sim.hardware import GPUS
from legato.sim.models import MODELS


@pytest.fixture
def h100_8b() -> CostModel:
    return CostModel(MODELS["llama-3.1-8b"], GPUS["h100"])


def test_kv_bytes_per_token_from_config() -> None:
    # 2 (K, V) x 32 layers x 8 KV heads x 128 head dim x 2 bytes
    assert MODELS["llama-3.1-8b"].kv_bytes_per_token == 131072
    assert MODELS["qwen2.5-32b"].kv_bytes_per_token == 2 * 64 * 8 * 128 * 2
    assert MODELS["llama-3.1-70b"].kv_bytes_per_token == 2 * 80 * 8 * 128 * 2


def test_prefill_step_matches_hand_roofline(h100_8b: CostModel) -> None:
    # 2048-token prefill from scratch on H100 (989 TFLOP/s x 0.5) with Llama-3.1-8B:
    # FLOPs = 2 * 8.03e9 * 2048 + 4*32*32*128 * (2048*2049/2) = 3.3991e13 -> 68.738 ms compute;
    # bytes = 16.06e9 + 131072 * 2048 = 16.328e9 at 3.35e12 x 0.8 -> 6.093 ms; + 1.5 ms overhead.
    t = h100_8b.step_time(2048, 2048 * 2049 / 2, 2048)
    assert t == pytest.approx(0.070238, rel=1e-4)


def test_decode_step_matches_hand_roofline(h100_8b: CostModel) -> None:
    # 64 sequences each at context 1000: FLOPs = 2*8.03e9*64 + 524288*64000 -> 2.146 ms;
    # bytes = 16.06e9 + 131072*64000 = 24.45e9 -> 9.123 ms: memory-bound, + 1.5 ms.
    t = h100_8b.step_time(64, 64_000, 64_000)
    assert t == pytest.approx(0.0106226, rel=1e-4)


@pytest.mark.parametrize("n,ctx", [(1, 10), (64, 64_000), (256, 8_000_000), (8, 2_000_000)])
def test_decode_run_closed_form_equals_step_sum(h100_8b: CostModel, n: int, ctx: int) -> None:
    for k in (1, 7, 300):
        by_step = sum(h100_8b.step_time(n, ctx + n * j, ctx + n * j) for j in range(k))
        assert h100_8b.decode_run_time(n, ctx, k) == pytest.approx(by_step, rel=1e-9)


def test_decode_run_crossing_compute_bound() -> None:
    # A slow-compute GPU makes long decode runs cross from memory- to compute-bound mid-run.
    cm = CostModel(MODELS["llama-3.1-8b"], GPUS["t4"], eff_compute=0.01)
    n, ctx = 128, 10_000
    by_step = sum(cm.step_time(n, ctx + n * j, ctx + n * j) for j in range(500))
    assert cm.decode_run_time(n, ctx, 500) == pytest.approx(by_step, rel=1e-9)


def test_decode_steps_until(h100_8b: CostModel) -> None:
    dt = h100_8b.decode_run_time(32, 32_000, 10)
    assert h100_8b.decode_steps_until(32, 32_000, 100, dt) == 10
    assert h100_8b.decode_steps_until(32, 32_000, 100, dt + 1e-9) == 11
    assert h100_8b.decode_steps_until(32, 32_000, 5, 1e9) == 5


def test_kv_capacity_from_memory(h100_8b: CostModel) -> None:
    # 80 GB x 0.9 - 16.06 GB weights - 1 GB reserve = 54.94 GB / (131072 B x 16 tokens)
    assert h100_8b.kv_capacity_blocks(16) == 26197
    with pytest.raises(ValueError, match="does not fit"):
        CostModel(MODELS["llama-3.1-70b"], GPUS["t4"]).kv_capacity_blocks(16)
