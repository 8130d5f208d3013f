"""SkyRL's real `RemoteInferenceClient` against `legato serve`: skyrl 0.3.0 needs Python 3.12, so
it runs in the test-only environment `make skyrl-env` builds (`.venv-skyrl`: skyrl without its
training stack, plus the aiohttp and pydantic its client imports), as a subprocess
(`skyrl_driver.py`) talking HTTP to the server this test starts. Skipped where that environment
is missing (no Python 3.12); `test_frameworks.py` holds contract tests of the same calls."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from legato.engine_adapter.torch.checkpoint import save_checkpoint
from legato.server.state import ServerState
from tests.rl.helpers import dense_logprobs, engine_of, shifted_weights

ROOT = Path(__file__).resolve().parents[2]
SKYRL_PYTHON = ROOT / ".venv-skyrl" / "bin" / "python"
DRIVER = Path(__file__).with_name("skyrl_driver.py")
PROMPT = list(range(70, 110))

pytestmark = pytest.mark.skipif(
    not SKYRL_PYTHON.exists(), reason="no .venv-skyrl (`make skyrl-env` builds it where Python 3.12 is)"
)


def test_skyrl_remote_inference_client_syncs_weights_through_legato_serve(
    one_server: tuple[str, ServerState], tmp_path: Path
) -> None:
    url, state = one_server
    model = engine_of(state).core.model
    new = shifted_weights(state)
    saved = type(model)(model.config)
    saved.load_state_dict(new, strict=False)
    checkpoint = save_checkpoint(saved, tmp_path / "step-1")
    done = subprocess.run(
        [str(SKYRL_PYTHON), str(DRIVER), url, state.engine.model_name, str(checkpoint), json.dumps(PROMPT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    before, after = seen["before"], seen["after"]
    # two trajectories of one prompt, greedy: the same answer, with a logprob per token
    assert before["response_ids"][0] == before["response_ids"][1] and len(before["response_ids"][0]) == 10
    assert len(before["response_logprobs"][0]) == 10 and before["stop_reasons"] == ["length", "length"]
    assert all(isinstance(text, str) for text in before["responses"])  # SkyRL detokenized them
    # pause(keep) -> update -> resume, fanned out to the one server: the new weights answer
    assert [seen[step][url]["status"] for step in ("pause", "update", "resume")] == [200, 200, 200]
    assert after["response_ids"][0] != before["response_ids"][0]
    for ids, logprobs in zip(after["response_ids"], after["response_logprobs"], strict=True):
        dense = dense_logprobs(state, PROMPT + ids, len(PROMPT))
        assert max(abs(a - b) for a, b in zip(logprobs, dense, strict=True)) <= 1e-4
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/get_weight_version").json()["weight_version"] == "1"
    assert seen["tokenize"] and all(isinstance(t, int) for t in seen["tokenize"][0])
    assert seen["world_size"] == [1, 1]
    for step in ("reset_prefix_cache", "sleep", "wake_up"):
        assert seen[step][url]["status"] == 200, (step, seen[step])
