"""`RLControl` over HTTP engines: the frameworks' control calls reach a vLLM or SGLang server's own
routes (translated between the two spellings), an operation the server has no route for is a 400
before anything is sent, and a torch replica refuses NCCL transfer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from fastapi import FastAPI, Request

from legato.engine_adapter.http.sglang import SGLangEngine
from legato.engine_adapter.http.vllm import VLLMEngine
from legato.engine_adapter.torch.tokenizer import ByteTokenizer
from legato.rl.control import ControlError, RLControl
from tests.server.serving import serve_in_thread


@pytest.fixture
def upstream() -> Iterator[tuple[str, list[tuple[str, dict[str, str], Any]]]]:
    """A server that records every control call it gets (method, path, query, JSON body)."""
    seen: list[tuple[str, dict[str, str], Any]] = []
    app = FastAPI()

    @app.post("/{path:path}")
    async def record(path: str, request: Request) -> dict[str, bool]:
        raw = await request.body()
        seen.append((f"/{path}", dict(request.query_params), await request.json() if raw else None))
        return {"success": True}

    with serve_in_thread(app) as url:
        yield url, seen


def test_vllm_and_sglang_get_their_own_spelling(upstream: tuple[str, list[Any]]) -> None:
    url, seen = upstream
    tok = ByteTokenizer()
    control = RLControl([VLLMEngine(url, "m", tok), SGLangEngine(url, tok, model_name="m")])

    async def calls() -> None:
        await control.pause("abort")
        await control.resume()
        await control.reset_prefix_cache()
        nccl = {"update_info": {"names": ["w"], "dtype_names": ["bfloat16"], "shapes": [[2]]}}
        with pytest.raises(ControlError, match="no route for 'update_weights'"):
            await control.forward_only("update_weights", nccl, "torch refuses")  # SGLang has none

    anyio.run(calls)
    assert seen == [
        ("/pause", {"mode": "abort", "clear_cache": "false"}, None),
        ("/pause_generation", {}, {"mode": "abort"}),
        ("/resume", {}, {}),
        ("/continue_generation", {}, None),
        ("/reset_prefix_cache", {}, {}),
        ("/flush_cache", {}, None),
    ]  # and the refused NCCL update sent nothing


def test_disk_update_reaches_sglang_as_sent(upstream: tuple[str, list[Any]]) -> None:
    url, seen = upstream
    control = RLControl([SGLangEngine(url, ByteTokenizer(), model_name="m")])
    body = {"model_path": "/ckpt/step-3", "load_format": None, "weight_version": "3"}
    anyio.run(lambda: control.update_from_disk("/ckpt/step-3", "3", body))
    assert seen == [("/update_weights_from_disk", {}, body)]
