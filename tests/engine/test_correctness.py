"""Paged, batched, chunked, prefix-cached greedy decoding equals a dense uncached reference."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legato.engine_adapter.base import GenerateRequest, SamplingParams
from legato.engine_adapter.torch import EngineCore
from tests.engine.conftest import assert_matches_reference

byte_tokens = st.lists(st.integers(min_value=0, max_value=255), min_size=1, max_size=60)


@st.composite
def batch_mixes(draw: st.DrawFn) -> list[tuple[list[int], int]]:
    """Several prompts, some extending a shared prefix, each with its own max_tokens."""
    shared = draw(st.lists(st.integers(0, 255), min_size=0, max_size=40))
    n = draw(st.integers(1, 5))
    out = []
    for _ in range(n):
        tail = draw(byte_tokens)
        prompt = (shared + tail) if draw(st.booleans()) else tail
        out.append((prompt, draw(st.integers(1, 12))))
    return out


def _run(core: EngineCore, mix: list[tuple[list[int], int]]) -> dict[str, list[int]]:
    reqs = [
        GenerateRequest(f"r{i}", tuple(p), SamplingParams(max_tokens=m, ignore_eos=True))
        for i, (p, m) in enumerate(mix)
    ]
    outs = core.run_to_completion(reqs)
    return {rid: [t for o in chunks for t in o.token_ids] for rid, chunks in outs.items()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mix=batch_mixes(), budget=st.sampled_from([8, 17, 64]), blocks=st.sampled_from([12, 24, 64]))
def test_batched_engine_matches_dense_reference(
    make_core: Callable[..., EngineCore], mix: list[tuple[list[int], int]], budget: int, blocks: int
) -> None:
    core = make_core(num_blocks=blocks, max_num_batched_tokens=budget, max_num_seqs=4)
    got = _run(core, mix)
    for i, (prompt, max_tokens) in enumerate(mix):
        tokens = got[f"r{i}"]
        assert len(tokens) == max_tokens
        assert_matches_reference(core, prompt, tokens)
    stats = core.stats()
    assert stats.used_blocks == 0 and stats.running == 0 and stats.waiting == 0


def test_small_pool_forces_preemption_and_stays_correct(make_core: Callable[..., EngineCore]) -> None:
    core = make_core(num_blocks=10, max_num_batched_tokens=32, max_num_seqs=8)
    mix = [([(i * 7 + j) % 256 for j in range(30)], 40) for i in range(4)]
    got = _run(core, mix)
    assert core.stats().preemptions > 0
    for i, (prompt, _) in enumerate(mix):
        assert_matches_reference(core, prompt, got[f"r{i}"])


def test_prefix_hit_changes_no_token(make_core: Callable[..., EngineCore]) -> None:
    core = make_core(max_num_batched_tokens=16)
    prompt = tuple(range(40, 90))
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    first = core.run_to_completion([GenerateRequest("a", prompt, params)])["a"]
    second = core.run_to_completion([GenerateRequest("b", prompt, params)])["b"]
    assert first[0].cached_tokens == 0
    assert second[0].cached_tokens == 48  # 3 full blocks of 16
    assert [t for o in first for t in o.token_ids] == [t for o in second for t in o.token_ids]
    assert core.stats().prefix_hit_requests == 1


def test_generated_blocks_are_cached_for_the_next_turn(make_core: Callable[..., EngineCore]) -> None:
    core = make_core()
    prompt = list(range(100, 120))
    out = core.run_to_completion(
        [GenerateRequest("a", tuple(prompt), SamplingParams(max_tokens=30, ignore_eos=True))]
    )
    reply = [t for o in out["a"] for t in o.token_ids]
    next_turn = prompt + reply + [1, 2, 3]
    assert core.cached_prefix_tokens(next_turn) == 48  # prompt+reply = 50 tokens, 49 have KV


def test_cache_salt_separates_tenants(make_core: Callable[..., EngineCore]) -> None:
    core = make_core()
    prompt = tuple(range(64))
    params = SamplingParams(max_tokens=2, ignore_eos=True)
    core.run_to_completion([GenerateRequest("a", prompt, params, cache_salt="tenant-a")])
    out = core.run_to_completion([GenerateRequest("b", prompt, params, cache_salt="tenant-b")])
    assert out["b"][0].cached_tokens == 0
    assert core.cached_prefix_tokens(prompt, "tenant-a") == 64
    assert core.cached_prefix_tokens(prompt, "tenant-b") == 64
    assert core.cached_prefix_tokens(prompt, None) == 0


def test_priority_orders_admission(make_core: Callable[..., EngineCore]) -> None:
    core = make_core(max_num_seqs=1)
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    core.add_request(GenerateRequest("low", (1, 2, 3), params, priority=5))
    core.add_request(GenerateRequest("high", (4, 5, 6), params, priority=-1))
    order: list[str] = []
    while core.has_unfinished():
        for o in core.step():
            if o.finished:
                order.append(o.request_id)
    assert order == ["high", "low"]


def test_gather_fallback_without_decode_workspace(make_core: Callable[..., EngineCore]) -> None:
    """Past the workspace's byte limit decode attention gathers from the paged cache instead."""
    core = make_core(max_num_batched_tokens=24, max_num_seqs=3)
    core.runner.workspace.max_bytes = 0
    mix = [(list(range(i, i + 10 + 7 * i)), 6 + 3 * i) for i in range(5)]
    got = _run(core, mix)
    assert core.runner.workspace.tensor is None
    for i, (prompt, _) in enumerate(mix):
        assert_matches_reference(core, prompt, got[f"r{i}"])


def test_decode_workspace_recycles_rows_as_requests_come_and_go(make_core: Callable[..., EngineCore]) -> None:
    core = make_core(max_num_batched_tokens=24, max_num_seqs=3)
    mix = [(list(range(i, i + 10 + 7 * i)), 6 + 3 * i) for i in range(5)]
    got = _run(core, mix)
    ws = core.runner.workspace
    assert ws.tensor is not None and ws.tensor.shape[2] == 8  # 3 concurrent rows fit the first size
    assert ws.row_fills >= 5
    for i, (prompt, _) in enumerate(mix):
        assert_matches_reference(core, prompt, got[f"r{i}"])


def test_decode_workspace_sized_for_max_tokens_is_not_regrown(make_core: Callable[..., EngineCore]) -> None:
    """The workspace is sized for the decoding sequences' prompt + max_tokens when they start
    decoding, so decoding the batch never reallocates it (touching fresh pages is costly)."""
    core = make_core(max_num_batched_tokens=256, max_num_seqs=8)
    mix = [([(i * 11 + j) % 256 for j in range(20 + i)], 40) for i in range(6)]
    reqs = [
        GenerateRequest(f"r{i}", tuple(p), SamplingParams(max_tokens=m, ignore_eos=True))
        for i, (p, m) in enumerate(mix)
    ]
    for r in reqs:
        core.add_request(r)
    outs: dict[str, list[int]] = {r.request_id: [] for r in reqs}
    for _ in range(2):  # every prompt prefills in the first step, then all decode
        for o in core.step():
            outs[o.request_id].extend(o.token_ids)
    ws = core.runner.workspace
    assert ws.tensor is not None and ws.grows == 1
    assert ws.tensor.shape[2] >= 6 and ws.tensor.shape[4] >= 25 + 40
    while core.has_unfinished():
        for o in core.step():
            outs[o.request_id].extend(o.token_ids)
    assert ws.grows == 1
    for i, (prompt, max_tokens) in enumerate(mix):
        assert len(outs[f"r{i}"]) == max_tokens
        assert_matches_reference(core, prompt, outs[f"r{i}"])


def test_decode_workspace_near_its_byte_limit_takes_the_headroom_that_fits(
    make_core: Callable[..., EngineCore],
) -> None:
    """When the usual headroom would pass the byte limit, the workspace takes as many positions
    as fit rather than exactly what the step needs (which would reallocate it every few steps, or
    fall back to gathering from the paged cache as a large batch once did)."""
    core = make_core(max_num_batched_tokens=256, max_num_seqs=8)
    ws = core.runner.workspace
    layers, _, kvh, width = core.runner.kv_cache.shape
    per_position = layers * kvh * width * 4 * 8  # keys and values of 8 rows, float32
    ws.max_bytes = per_position * 64  # room for 64 positions; the prompts need ~40
    mix = [([(i * 13 + j) % 256 for j in range(36 + i)], 20) for i in range(4)]
    got = _run(core, mix)
    assert ws.tensor is not None and ws.grows == 1
    assert ws.tensor.shape[4] == 64
    for i, (prompt, _) in enumerate(mix):
        assert_matches_reference(core, prompt, got[f"r{i}"])
