"""The rollout API on `legato serve` (passthrough and Legato's policy): multi-turn token-in /
token-out rollouts, logprobs equal to a dense recompute, loss masks, GRPO groups with one
prefill, weight versions across an update, abort and resume, finish."""

from __future__ import annotations

import threading

import anyio
import httpx
import pytest

from legato.server.state import ServerState
from tests.rl.helpers import LONG_CONTEXT, dense_logprobs, engine_of, shifted_weights, until_decoding, upload

PROMPT = list(range(60, 100))
SAMPLE = {"max_tokens": 12, "temperature": 1.0, "seed": 3, "ignore_eos": True}


def test_multi_turn_logprobs_match_dense_recompute_and_mask_marks_tool_tokens(
    rl_server: tuple[str, ServerState],
) -> None:
    url, state = rl_server
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/rollouts", json={"rollout_id": "r1", "prompt_ids": PROMPT, "sampling_params": SAMPLE})
        assert r.status_code == 200, r.text
        first = r.json()["turns"][0]
        assert len(first["token_ids"]) == 12 and first["weight_version"] == "0"
        tool = [116, 111, 111, 108]  # an observation the environment appends
        r = c.post(
            "/v1/rollouts/r1/turns", json={"env_ids": tool, "sampling_params": {**SAMPLE, "top_logprobs": 3}}
        )
        assert r.status_code == 200, r.text
        second = r.json()
        assert second["num_turns"] == 2 and len(second["top_logprobs"]) == 12
        assert all(len(alts) == 3 for alts in second["top_logprobs"])
        rec = c.get("/v1/rollouts/r1").json()
    assert rec["response_ids"] == first["token_ids"] + tool + second["token_ids"]
    assert rec["response_mask"] == [1] * 12 + [0] * 4 + [1] * 12
    assert rec["weight_versions"] == ["0"] * 12 + [None] * 4 + ["0"] * 12
    dense = dense_logprobs(state, rec["prompt_ids"] + rec["response_ids"], len(PROMPT))
    for got, want, m in zip(rec["response_logprobs"], dense, rec["response_mask"], strict=True):
        if m:
            assert abs(got - want) <= 1e-4


def test_grpo_group_prefills_once_and_forks(one_server: tuple[str, ServerState]) -> None:
    url, state = one_server
    engine = engine_of(state)
    with httpx.Client(base_url=url, timeout=60) as c:
        before = c.get("/metrics").text  # warm; stats read below from the engine itself
        del before
        import anyio

        stats0 = anyio.run(engine.stats)
        r = c.post(
            "/v1/rollouts", json={"rollout_id": "g", "prompt_ids": PROMPT, "n": 4, "sampling_params": SAMPLE}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        stats1 = anyio.run(engine.stats)
        assert [t["rollout_id"] for t in body["turns"]] == ["g:0", "g:1", "g:2", "g:3"]
        assert stats1.prefill_tokens - stats0.prefill_tokens <= len(PROMPT)  # one prefill for 4 samples
        assert stats1.forked_samples - stats0.forked_samples == 3
        assert len({tuple(t["token_ids"]) for t in body["turns"]}) > 1  # sampled, not copies
        # each sample continues as its own rollout (program) and reuses the shared prompt's KV
        r = c.post("/v1/rollouts/g:2/turns", json={"env_ids": [1, 2], "sampling_params": SAMPLE})
        assert r.status_code == 200 and r.json()["cached_tokens"] >= 32
        for i in range(4):
            assert c.post(f"/v1/rollouts/g:{i}/finish").status_code == 200


def test_weight_version_across_an_update_kept_rollout(one_server: tuple[str, ServerState]) -> None:
    url, state = one_server
    with httpx.Client(base_url=url, timeout=60) as c:
        c.post("/v1/rollouts", json={"rollout_id": "k", "prompt_ids": PROMPT, "sampling_params": SAMPLE})
        assert c.post("/pause", params={"mode": "keep"}).status_code == 200
        r = upload(c, shifted_weights(state), 5)
        assert r.status_code == 200 and r.json()["weight_version"] == "5", r.text
        assert c.post("/resume").json()["weight_version"] == "5"
        c.post("/v1/rollouts/k/turns", json={"env_ids": [9], "sampling_params": SAMPLE})
        rec = c.get("/v1/rollouts/k").json()
    assert rec["weight_versions"] == ["0"] * 12 + [None] + ["5"] * 12
    # the new turn's logprobs are the new weights' (dense recompute after the update)
    dense = dense_logprobs(state, rec["prompt_ids"] + rec["response_ids"], len(PROMPT))
    for got, want in zip(rec["response_logprobs"][13:], dense[13:], strict=True):
        assert abs(got - want) <= 1e-4


def test_abort_keeps_partial_tokens_and_resume_continues(long_server: tuple[str, ServerState]) -> None:
    url, state = long_server
    engine = engine_of(state)
    max_tokens = LONG_CONTEXT - len(PROMPT) - 4 * SAMPLE["max_tokens"]  # room for the other turns
    long = {**SAMPLE, "max_tokens": max_tokens}
    with httpx.Client(base_url=url, timeout=60) as c:
        c.post("/v1/rollouts", json={"rollout_id": "a", "prompt_ids": PROMPT, "sampling_params": SAMPLE})
        generated_before = anyio.run(engine.stats).generated_tokens
        answers: list[httpx.Response] = []
        worker = threading.Thread(
            target=lambda: answers.append(c.post("/v1/rollouts/a/turns", json={"sampling_params": long}))
        )
        worker.start()
        anyio.run(until_decoding, engine, generated_before)  # the abort lands mid-turn
        assert c.post("/v1/rollouts/a/abort").status_code == 200
        worker.join(60)
        turn = answers[0].json()
        assert turn["finish_reason"] == "abort" and 0 < len(turn["token_ids"]) < max_tokens
        resumed = c.post("/v1/rollouts/a/turns", json={"sampling_params": SAMPLE}).json()
        assert resumed["finish_reason"] == "length"
        rec = c.get("/v1/rollouts/a").json()
        assert rec["finish_reasons"] == ["length", "abort", "length"]
        assert rec["response_mask"] == [1] * len(rec["response_ids"])
        assert c.post("/v1/rollouts/a/finish").status_code == 200
        assert c.get("/v1/rollouts/a").status_code == 404
        assert c.post("/v1/rollouts/a/finish").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt_ids": []}, "prompt_ids"),
        ({"prompt_ids": [1], "n": 0}, "n"),
        ({"prompt_ids": [999999]}, "prompt_ids"),
        ({"prompt_ids": [1], "sampling_params": {"bogus": 1}}, "bogus"),
        ({"prompt_ids": [1], "rollout_id": "a/b"}, "rollout_id"),
    ],
)
def test_bad_rollout_requests_are_400s(one_server: tuple[str, ServerState], body: dict, field: str) -> None:
    url, _ = one_server
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/rollouts", json=body)
    assert r.status_code in (400, 422) and field in r.text  # 422: schema, 400: token range
