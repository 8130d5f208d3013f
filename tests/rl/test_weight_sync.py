"""Weight sync on the torch engine: pause modes, atomic in-place updates, checks that leave the old
weights serving, weight versions on every chunk, and the prefix cache moving with the version."""

from __future__ import annotations

import anyio
import pytest
import torch

from legato.engine_adapter.base import GenerateRequest, SamplingParams, TokenChunk
from legato.engine_adapter.torch import TorchEngine, build_core
from legato.engine_adapter.torch.weight_sync import (
    WeightUpdateError,
    decode_tensors,
    encode_tensors,
)
from tests.tiny_model import TINY

PROMPT = tuple(range(40, 72))
# A generation long enough that a pause sent at its first chunk lands well before its end (on a
# loaded machine the engine thread was seen 38 tokens ahead of the event loop), and within the
# tiny model's positions and `make_engine`'s blocks.
LONG = 900


def make_engine() -> TorchEngine:
    return TorchEngine(build_core(model_config=TINY, num_blocks=64, max_num_batched_tokens=64))


def shifted(engine: TorchEngine, scale: float = 0.05, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: (v + scale * torch.randn(v.shape, generator=g)).clone()
        for k, v in engine.core.model.state_dict().items()
    }


async def collect(engine: TorchEngine, rid: str, max_tokens: int = 8) -> list[TokenChunk]:
    req = GenerateRequest(rid, PROMPT, SamplingParams(max_tokens=max_tokens, ignore_eos=True, logprobs=True))
    return [c async for c in engine.generate(req)]


def test_msgpack_roundtrip_and_refusals() -> None:
    t = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}
    got, version = decode_tensors(encode_tensors(t, 7))
    assert version == "7"
    assert torch.equal(got["a"], t["a"]) and torch.equal(got["b"], t["b"])
    with pytest.raises(WeightUpdateError, match="msgpack"):
        decode_tensors(b"\xc1not msgpack")
    with pytest.raises(WeightUpdateError, match="dtype"):
        encode_tensors({"x": torch.ones(2, dtype=torch.int64)})


@pytest.mark.anyio
async def test_update_changes_output_and_versions_every_chunk() -> None:
    async with make_engine() as engine:
        before = await collect(engine, "a")
        assert {c.weight_version for c in before} == {"0"}
        cached_before = await engine.cached_prefix_tokens(PROMPT)
        assert cached_before > 0
        await engine.pause("keep")
        version = await engine.update_weights(shifted(engine), "v1")
        await engine.resume()
        assert version == "v1" and engine.weight_version == "v1"
        # KV of the old weights is never reused under the new ones
        assert await engine.cached_prefix_tokens(PROMPT) == 0
        after = await collect(engine, "b")
        assert {c.weight_version for c in after} == {"v1"}
        assert [c.logprobs for c in after] != [c.logprobs for c in before]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "tensor", "match"),
    [
        ("model.nope.weight", torch.zeros(3), "no tensor"),
        ("model.norm.weight", torch.zeros(3), "shape"),
        ("model.norm.weight", torch.zeros(64, dtype=torch.int32), "dtype"),
    ],
)
async def test_bad_tensor_keeps_old_weights(name: str, tensor: torch.Tensor, match: str) -> None:
    async with make_engine() as engine:
        before = [c.token_ids for c in await collect(engine, "a")]
        good = shifted(engine)
        with pytest.raises(WeightUpdateError, match=match):
            await engine.update_weights({**good, name: tensor})
        assert engine.weight_version == "0" and engine.paused is None
        assert [c.token_ids for c in await collect(engine, "b")] == before


@pytest.mark.anyio
async def test_pause_abort_ends_running_requests_cleanly() -> None:
    async with make_engine() as engine:
        chunks: list[TokenChunk] = []
        first = anyio.Event()

        async def run() -> None:
            req = GenerateRequest("long", PROMPT, SamplingParams(max_tokens=LONG, ignore_eos=True))
            async for c in engine.generate(req):
                chunks.append(c)
                first.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await first.wait()
            aborted = await engine.pause("abort")
        assert aborted == 1 and chunks[-1].finish_reason == "abort"
        await engine.update_weights(shifted(engine))
        stats = await engine.stats()
        assert stats.running == 0 and stats.used_blocks == 0  # nothing half-written left referenced
        await engine.resume()
        assert {c.weight_version for c in await collect(engine, "c")} == {"1"}


@pytest.mark.anyio
async def test_keep_mode_freezes_then_continues_with_new_version() -> None:
    async with make_engine() as engine:
        chunks: list[TokenChunk] = []
        first = anyio.Event()

        async def run() -> None:
            req = GenerateRequest("kept", PROMPT, SamplingParams(max_tokens=LONG, ignore_eos=True))
            async for c in engine.generate(req):
                chunks.append(c)
                first.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await first.wait()
            await engine.pause("keep")
            frozen = len(chunks)
            await anyio.sleep(0.05)
            assert len(chunks) == frozen  # no step while paused
            await engine.update_weights(shifted(engine), "2")
            await engine.resume()
        versions = [c.weight_version for c in chunks if c.token_ids]
        assert versions[0] == "0" and versions[-1] == "2"
        assert versions == sorted(versions)  # the old version's tokens, then the new one's
        assert chunks[-1].finish_reason == "length"


@pytest.mark.anyio
async def test_update_without_pause_waits_for_running_requests() -> None:
    async with make_engine() as engine:
        chunks: list[TokenChunk] = []
        first = anyio.Event()

        async def run() -> None:
            req = GenerateRequest("w", PROMPT, SamplingParams(max_tokens=30, ignore_eos=True))
            async for c in engine.generate(req):
                chunks.append(c)
                first.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await first.wait()
            await engine.update_weights(shifted(engine))
        assert {c.weight_version for c in chunks} == {"0"}  # never mixed
        assert engine.paused is None
