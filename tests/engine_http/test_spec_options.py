"""The `speculative` request option on the engine server: honoured (greedy output unchanged,
drafted / accepted tokens in `usage.speculative` and in /metrics by draft position), and refused
with a 400 naming the field when out of range or when the engine cannot speculate. A real server
in a thread around the tiny torch engine, called with the official `openai` client and httpx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from legato.engine_adapter.server import create_engine_app
from legato.engine_adapter.torch import ByteTokenizer, TorchEngine, load_engine, save_checkpoint
from legato.engine_adapter.torch.checkpoint import build_default_model
from tests.engine_http.serving import serve_cli, serve_in_thread
from tests.tiny_model import TINY

MODEL = "legato-default"
PROMPT = "abcdefgh" * 6  # repeats: the drafters have something to match


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    engine: TorchEngine = load_engine(model_config=TINY, num_blocks=256, max_num_batched_tokens=256)
    with serve_in_thread(create_engine_app(engine, on_shutdown=engine.close)) as served:
        yield served


@pytest.fixture
def client(url: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=60, max_retries=0)


def test_speculative_option_keeps_output_and_reports_counts(client: Any, url: str) -> None:
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0)
    assert getattr(plain.usage, "speculative", None) is None  # off unless asked for
    spec = client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=40,
        temperature=0,
        extra_body={"speculative": {"drafter": "ngram", "num_speculative_tokens": 6}},
    )
    assert spec.choices[0].text == plain.choices[0].text  # greedy verification is lossless
    counts = spec.usage.model_extra["speculative"]
    assert counts["drafted_tokens"] > 0
    assert 0 < counts["accepted_tokens"] <= counts["drafted_tokens"]
    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    assert 'vllm:spec_decode_num_accepted_tokens_per_pos{model_name="legato-default",position="0"}' in metrics
    assert "vllm:spec_decode_num_draft_tokens_total" in metrics


def test_streamed_usage_carries_the_counts(client: Any) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=30,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"speculative": {"drafter": "suffix", "num_speculative_tokens": 4}},
    )
    usage = [c.usage for c in stream if c.usage is not None][-1]
    assert usage.completion_tokens > 0
    # the engine-wide back-off may have found drafting not worth it on this machine by now
    counts = usage.model_extra.get("speculative") or {"drafted_tokens": 0, "accepted_tokens": 0}
    assert 0 <= counts["accepted_tokens"] <= counts["drafted_tokens"]


def test_drafter_none_turns_speculation_off_for_the_request(client: Any) -> None:
    out = client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=20,
        temperature=0,
        extra_body={"speculative": {"drafter": "none"}},
    )
    assert getattr(out.usage, "speculative", None) is None


@pytest.mark.parametrize(
    ("speculative", "named"),
    [
        ({"num_speculative_tokens": -1}, "num_speculative_tokens"),
        ({"num_speculative_tokens": 100000}, "num_speculative_tokens"),
        ({"num_speculative_tokens": "many"}, "num_speculative_tokens"),
        ({"drafter": "eagle"}, "drafter"),
        ({"window": 3}, "window"),
        ("suffix", "speculative"),
    ],
)
def test_bad_speculative_options_are_a_400_naming_the_field(url: str, speculative: Any, named: str) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 4, "speculative": speculative}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "speculative" in (error.get("param") or "") + error["message"]
    assert named in (error.get("param") or "") + error["message"]


def test_an_engine_that_cannot_speculate_refuses_the_option(fake_url: str) -> None:
    body = {"model": "fake-model", "prompt": "hi", "max_tokens": 4, "speculative": {"drafter": "ngram"}}
    r = httpx.post(f"{fake_url}/v1/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "speculative"


def test_asking_for_the_draft_model_of_an_engine_without_one_is_a_400(url: str) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 4, "speculative": {"drafter": "draft-model"}}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert "needs an engine started with a draft model" in r.json()["error"]["message"]


def test_engine_serve_drafts_with_a_draft_model(tmp_path: Path) -> None:
    """`legato engine serve --draft-model DIR --speculative-drafter draft-model` (a real
    subprocess): the draft model is the target's own checkpoint, so every draft is accepted."""
    from openai import OpenAI

    checkpoint = save_checkpoint(build_default_model(0, TINY), tmp_path / "tiny", ByteTokenizer())
    args = ("--checkpoint", str(checkpoint), "--draft-model", str(checkpoint))
    with serve_cli(*args, "--speculative-drafter", "draft-model", "--num-blocks", "256") as served:
        client = OpenAI(base_url=f"{served}/v1", api_key="unused", timeout=60, max_retries=0)
        out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, temperature=0)
    counts = out.usage.model_extra["speculative"]
    assert counts["drafted_tokens"] > 0
    assert counts["accepted_tokens"] == counts["drafted_tokens"]


def test_the_api_names_every_engine_drafter() -> None:
    from typing import get_args

    from legato.engine_adapter.openai_spec import DrafterName
    from legato.spec.drafter import ENGINE_DRAFTERS

    assert set(get_args(DrafterName)) == {*ENGINE_DRAFTERS, "none"}
