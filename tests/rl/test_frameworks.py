"""The three RL frameworks' calls against `legato serve`, with their exact request shapes.

SkyRL: skyrl 0.3.0's `RemoteInferenceClient` cannot be imported on Python 3.11 (its package
import chain reaches `skyrl/tinker/types.py`, which pydantic refuses below 3.12: "use
typing_extensions.TypedDict"), so here (Python 3.11) they are contract tests built from that
client's source (`skyrl/backends/skyrl_train/inference_servers/remote_inference_client.py`:
`_generate_single`, `pause`, `resume`, `update_named_weights`, `reset_prefix_cache`, `sleep`,
`wake_up`, `detokenize`); `test_skyrl_client.py` runs the client itself from Python 3.12.
slime: the payload and header of `slime/rollout/sglang_rollout.py` `generate`.
verl: `legato.rl.VerlServerManager` with verl's `generate` signature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import torch

from legato.engine_adapter.torch.checkpoint import save_checkpoint
from legato.rl import VerlServerManager
from legato.server.state import ServerState
from tests.rl.helpers import (
    LONG_CONTEXT,
    dense_logprobs,
    engine_of,
    shifted_weights,
    until_decoding,
    upload,
)

PROMPT = list(range(70, 110))


def skyrl_generate(
    c: httpx.Client, model: str, ids: list[int], session: str, sp: dict[str, Any]
) -> dict[str, Any]:
    """`RemoteInferenceClient._generate_single`, request and parsing as SkyRL does them."""
    payload = {"sampling_params": sp, "model": model, "token_ids": ids}
    headers = {"Content-Type": "application/json", "X-Session-ID": str(session)}
    resp = c.post("/inference/v1/generate", json=payload, headers=headers)
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    content = (choice.get("logprobs") or {}).get("content", [])
    return {
        "stop_reason": choice["finish_reason"],
        "response_ids": choice["token_ids"],
        "response_logprobs": [x["logprob"] for x in content] if content else None,
        "weight_version": choice["weight_version"],
    }


def test_skyrl_generate_pause_update_resume_generate(one_server: tuple[str, ServerState]) -> None:
    url, state = one_server
    model = state.engine.model_name
    sp = {"max_tokens": 10, "temperature": 0.0, "logprobs": 0}
    with httpx.Client(base_url=url, timeout=60) as c:
        before = skyrl_generate(c, model, PROMPT, "traj-1", sp)
        assert before["weight_version"] == "0" and len(before["response_logprobs"]) == 10
        text = c.post("/detokenize", json={"model": model, "tokens": before["response_ids"]})
        assert text.status_code == 200 and "prompt" in text.json()
        # control plane, as SkyRL fans it out: pause(keep) -> update -> resume
        r = c.post("/pause", params={"mode": "keep", "clear_cache": "false"})
        assert r.status_code == 200 and r.json()["replicas"][0]["paused"] == "keep"
        r = upload(c, shifted_weights(state))
        assert r.status_code == 200, r.text
        assert c.post("/resume").status_code == 200
        after = skyrl_generate(c, model, PROMPT, "traj-2", sp)
        assert after["weight_version"] == "1"
        assert after["response_ids"] != before["response_ids"]  # the new weights answer
        dense = dense_logprobs(state, PROMPT + after["response_ids"], len(PROMPT))
        assert max(abs(a - b) for a, b in zip(after["response_logprobs"], dense, strict=True)) <= 1e-4
        # the rest of SkyRL's control plane
        assert c.post("/reset_prefix_cache", json={"reset_running_requests": False}).status_code == 200
        assert c.post("/sleep", json={"level": 2}).status_code == 200
        assert c.post("/wake_up", json={}).status_code == 200
        assert c.get("/get_world_size").json() == {"world_size": 1}
        nccl = {"update_info": {"names": ["x"], "dtype_names": ["bfloat16"], "shapes": [[1]], "packed": True}}
        r = c.post("/update_weights", json=nccl)
        assert r.status_code == 400 and "NCCL" in r.text
        assert c.post("/finish_session", params={"session_id": "traj-1"}).status_code == 200
        r = c.post("/finish_session", params={"session_id": "never-seen"})
        assert r.status_code == 404


def test_update_from_a_checkpoint_directory(one_server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = one_server
    model = engine_of(state).core.model
    new = shifted_weights(state)
    saved = type(model)(model.config)
    saved.load_state_dict(new, strict=False)
    save_checkpoint(saved, tmp_path / "ckpt")
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/update_weights", json={"update_info": {"model_path": str(tmp_path / "ckpt")}})
        assert r.status_code == 200, r.text
    for name, t in new.items():
        assert torch.allclose(model.state_dict()[name], t)


@pytest.mark.parametrize(
    ("name", "tensor", "why"),
    [
        ("model.layers.0.self_attn.bogus.weight", torch.zeros(2), "no tensor"),
        ("model.norm.weight", torch.zeros(3), "shape"),
        ("model.norm.weight", torch.zeros(64, dtype=torch.int32), "dtype"),
    ],
)
def test_bad_tensor_is_a_400_and_old_weights_keep_serving(
    one_server: tuple[str, ServerState], name: str, tensor: torch.Tensor, why: str
) -> None:
    url, state = one_server
    model = state.engine.model_name
    sp = {"max_tokens": 8, "temperature": 0.0}
    with httpx.Client(base_url=url, timeout=60) as c:
        before = skyrl_generate(c, model, PROMPT, "s", sp)["response_ids"]
        body: dict[str, Any] = {**shifted_weights(state), name: tensor}
        if tensor.dtype == torch.int32:  # the wire refuses integer dtypes itself: send raw msgpack
            import msgpack

            r = c.post(
                "/update_weights",
                content=msgpack.packb(
                    {"tensors": [{"name": name, "dtype": "int32", "shape": [64], "data": bytes(256)}]}
                ),
                headers={"Content-Type": "application/msgpack"},
            )
        else:
            r = upload(c, body)
        assert r.status_code == 400 and why in r.text, r.text
        assert c.get("/get_weight_version").json()["weight_version"] == "0"
        assert skyrl_generate(c, model, PROMPT, "s2", sp)["response_ids"] == before


def test_pause_abort_during_generation_aborts_cleanly(long_server: tuple[str, ServerState]) -> None:
    """The abort lands mid-generation: it is sent only once the engine reports the call running
    and decoding (a call that reached the engine after the pause would be held for `resume` and
    finish under the new weights), and the call asks for thousands of tokens (the abort lands
    within tens of steps)."""
    url, state = long_server
    model = state.engine.model_name
    engine = engine_of(state)
    max_tokens = LONG_CONTEXT - len(PROMPT) - 16
    results: list[dict[str, Any]] = []

    async def scenario() -> None:
        generated_before = (await engine.stats()).generated_tokens
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:

            async def long_call() -> None:
                payload = {
                    "sampling_params": {"max_tokens": max_tokens, "ignore_eos": True},
                    "model": model,
                    "token_ids": PROMPT,
                }
                r = await c.post("/inference/v1/generate", json=payload, headers={"X-Session-ID": "long"})
                results.append(r.json())

            async with anyio.create_task_group() as tg:
                tg.start_soon(long_call)
                await until_decoding(engine, generated_before)
                r = await c.post("/pause", params={"mode": "abort"})
                assert r.status_code == 200
            r = await upload_async(c, shifted_weights(state))
            assert r.status_code == 200
            assert (await c.post("/resume")).status_code == 200

    anyio.run(scenario)
    choice = results[0]["choices"][0]
    assert choice["finish_reason"] == "abort", choice["finish_reason"]
    assert 2 <= len(choice["token_ids"]) < max_tokens  # cut mid-generation, partial tokens kept
    assert set(choice["weight_versions"]) == {"0"}  # nothing of the new version mixed in
    stats = anyio.run(engine.stats)
    assert stats.running == 0 and stats.used_blocks == 0


async def upload_async(c: httpx.AsyncClient, tensors: dict[str, torch.Tensor]) -> httpx.Response:
    from legato.engine_adapter.torch.weight_sync import MSGPACK_CONTENT_TYPE, encode_tensors

    return await c.post(
        "/update_weights", content=encode_tensors(tensors), headers={"Content-Type": MSGPACK_CONTENT_TYPE}
    )


def test_slime_generate_and_disk_update_flow(one_server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = one_server
    # slime's GenerateState.sampling_params and generate() payload, field for field
    sampling_params = {
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": -1,
        "max_new_tokens": 12,
        "stop": None,
        "stop_token_ids": None,
        "skip_special_tokens": True,
        "no_stop_trim": True,
        "spaces_between_special_tokens": False,
    }
    payload = {"sampling_params": sampling_params, "return_logprob": True, "input_ids": PROMPT}
    with httpx.Client(base_url=url, timeout=60) as c:
        out = c.post("/generate", json=payload, headers={"X-SMG-Routing-Key": "sample-1"})
        assert out.status_code == 200, out.text
        meta = out.json()["meta_info"]
        tokens = [item[1] for item in meta["output_token_logprobs"]]
        logps = [item[0] for item in meta["output_token_logprobs"]]
        assert len(tokens) == 12 and isinstance(out.json()["text"], str)
        assert meta["weight_version"] == "0"
        dense = dense_logprobs(state, PROMPT + tokens, len(PROMPT))
        assert max(abs(a - b) for a, b in zip(logps, dense, strict=True)) <= 1e-4
        # slime's weight sync: pause -> flush -> update from disk -> continue
        model = engine_of(state).core.model
        saved = type(model)(model.config)
        saved.load_state_dict(shifted_weights(state), strict=False)
        save_checkpoint(saved, tmp_path / "step1")
        assert c.post("/pause_generation", json={"mode": "abort"}).status_code == 200
        assert c.post("/flush_cache").status_code == 200
        body = {"model_path": str(tmp_path / "step1"), "load_format": None, "weight_version": "step-1"}
        r = c.post("/update_weights_from_disk", json=body)
        assert r.status_code == 200 and r.json()["success"] is True, r.text
        assert c.post("/continue_generation").status_code == 200
        assert c.get("/get_weight_version").json()["weight_version"] == "step-1"
        again = c.post("/generate", json=payload, headers={"X-SMG-Routing-Key": "sample-2"}).json()
        assert again["meta_info"]["weight_version"] == "step-1"
        bad = c.post("/update_weights_from_disk", json={**body, "model_path": str(tmp_path / "missing")})
        assert bad.status_code == 400 and "model_path" in bad.text
        assert c.post("/abort_request", json={"abort_all": True}).status_code == 200


def test_verl_server_manager(one_server: tuple[str, ServerState]) -> None:
    url, state = one_server

    async def scenario() -> None:
        manager = VerlServerManager(url, max_model_len=512)
        try:
            out = await manager.generate(
                "req-1",
                prompt_ids=PROMPT,
                sampling_params={"temperature": 1.0, "logprobs": True, "max_tokens": 9},
            )
            assert len(out.token_ids) == 9 and out.stop_reason == "completed" and out.weight_version == "0"
            assert out.log_probs is not None
            dense = dense_logprobs(state, PROMPT + out.token_ids, len(PROMPT))
            assert max(abs(a - b) for a, b in zip(out.log_probs, dense, strict=True)) <= 1e-4
            with pytest.raises(ValueError, match="repetition_penalty"):
                await manager.generate(
                    "req-1", prompt_ids=PROMPT, sampling_params={"repetition_penalty": 1.1}
                )
            await manager.release("req-1")
        finally:
            await manager.aclose()

    anyio.run(scenario)
