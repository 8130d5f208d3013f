"""The OpenAI-compatible agent proxy, end to end: the official `openai` client drives a multi-turn,
tool-using agent through the whole REST app (real uvicorn socket, embedded torch engine with its
seeded small model, the Continuum policy live, a real subprocess tool between turns), and the
server's /metrics show the program's prefix hits between turns."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import torch

from legato.engine_adapter.torch import load_engine
from tests.server.proxy_harness import Served, legato_server, metric, scrape

MODEL = "legato-default"
SYSTEM = (
    "You are a coding agent. Think step by step, call the python tool when you need to compute "
    "something, and answer briefly once you know the result."
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    engine = load_engine(None, num_blocks=512, seed=0)
    with legato_server(tmp_path_factory.mktemp("proxy"), engine) as s:
        yield s


def _run_tool(code: str) -> str:
    """The agent's tool: a real Python subprocess."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_openai_client_drives_a_tool_using_agent_and_metrics_show_prefix_hits(served: Served) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{served.url}/v1", api_key=served.keys["acme"], timeout=120, max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL]
    tenant = served.tenant_ids["acme"]
    before = scrape(served.url)
    messages: list[dict[str, str]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "What is the sum of the integers below 10?"},
    ]
    cached: list[int] = []
    turns = 3
    for turn in range(turns):
        last = turn == turns - 1
        hints = {"program_id": "agent-1", "is_last_step": last}
        if not last:
            hints |= {"next_tool": "python", "expected_tool_latency_s": 0.5}
        if turn == 1:  # one streamed turn: the agent SDKs stream
            stream = client.chat.completions.create(
                model=MODEL,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=12,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=hints,
            )
            chunks = list(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            usage = chunks[-1].usage
        else:
            reply = client.chat.completions.create(
                model=MODEL,
                messages=messages,
                max_tokens=12,
                temperature=0,
                extra_body=hints,  # type: ignore[arg-type]
            )
            text, usage = reply.choices[0].message.content or "", reply.usage
        assert usage is not None and usage.prompt_tokens_details is not None
        cached.append(usage.prompt_tokens_details.cached_tokens or 0)
        if not last:
            result = _run_tool("print(sum(range(10)))")
            assert result == "45"
            messages += [{"role": "assistant", "content": text}, {"role": "tool", "content": result}]
        if turn == 0:
            # between turns the program is alive, waiting on its tool
            proxy = served.state.extras["proxy"]
            programs = [
                p for (t, pid), p in proxy.tracker.programs.items() if t == tenant and pid == "agent-1"
            ]
            assert len(programs) == 1 and programs[0].tool == "python"

    assert cached[0] == 0
    assert all(c > 0 for c in cached[1:]), cached  # the system + user prefix (and more) hit the cache
    after = scrape(served.url)
    assert metric(after, "legato_tenant_tokens_total", tenant=tenant, kind="cached") - metric(
        before, "legato_tenant_tokens_total", tenant=tenant, kind="cached"
    ) == sum(cached)
    assert metric(after, "legato_cache_hit_tokens_total", tier="device") >= sum(cached)
    assert metric(after, "legato_cache_hit_rate", tier="device") > 0
    # is_last_step ended the program: its TCT was observed, nothing is left live
    assert metric(after, "legato_proxy_programs_finished_total", why="last_step") >= 1
    assert metric(after, "legato_program_tct_seconds_count", source="proxy", status="succeeded") >= 1
    assert ("acme", "agent-1") not in served.state.extras["proxy"].tracker.programs
    assert metric(after, "legato_http_requests_total", route="/v1/chat/completions", status="200") >= turns
    # the policy saw the program: Continuum dispatched each turn (whether it pins through a tool
    # call depends on its TTL rule: on this tiny engine a reload is too cheap to be worth a pin)
    sent = metric(after, "legato_scheduler_decisions_total", kind="dispatches")
    assert sent - metric(before, "legato_scheduler_decisions_total", kind="dispatches") == turns
    assert metric(after, "process_resident_memory_bytes") > 0


def test_program_ids_are_namespaced_per_tenant_and_release_ends_them(served: Served) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "program_id": "p1",
    }
    with httpx.Client(base_url=served.url, timeout=120) as http:
        for name in ("acme", "globex"):
            r = http.post("/v1/chat/completions", json=body, headers=served.headers(name))
            assert r.status_code == 200, r.text
        tracker = served.state.extras["proxy"].tracker
        a = tracker.programs[(served.tenant_ids["acme"], "p1")]
        b = tracker.programs[(served.tenant_ids["globex"], "p1")]
        assert a.run_id != b.run_id and a.calls == b.calls == 1
        r = http.post("/v1/programs/p1/release", headers=served.headers("acme"))
        assert r.status_code == 200 and r.json()["calls"] == 1
        # acme's release did not touch globex's program; releasing twice is a 404 that says why
        assert (served.tenant_ids["globex"], "p1") in tracker.programs
        again = http.post("/v1/programs/p1/release", headers=served.headers("acme"))
        assert again.status_code == 404 and "no live program" in again.json()["error"]["message"]
        # program fields nested in extra_body (raw clients) work like top-level ones
        nested = {"model": MODEL, "max_tokens": 2, "extra_body": {"program_id": "p2", "is_last_step": True}}
        r = http.post(
            "/v1/completions",
            json={**nested, "prompt": "x"},
            headers=served.headers("globex"),
        )
        assert r.status_code == 200, r.text
        assert (served.tenant_ids["globex"], "p2") not in tracker.programs  # last step: ended
        assert http.post("/v1/programs/p1/release", headers=served.headers("globex")).status_code == 200


@pytest.mark.parametrize(
    ("patch", "status", "says"),
    [
        ({"model": "gpt-4"}, 404, "not served here"),
        ({"n": 0}, 400, "n: Input should be greater than or equal to 1"),
        ({"n": 1000}, 400, "n: Input should be less than or equal to 128"),
        ({"max_tokens": 0}, 400, "max_tokens: Input should be greater than or equal to 1"),
        ({"max_tokens": 10_000_000}, 400, "exceed"),
        ({"messages": []}, 400, "messages"),
        ({"program_id": "x" * 300}, 400, "program_id"),
        ({"expected_tool_latency_s": -1}, 400, "expected_tool_latency_s"),
        ({"extra_body": {"program_id": ""}}, 400, "program_id"),
        ({"extra_body": {"program": "p"}}, 400, "extra_body.program"),
        ({"priority": 3}, 400, "priority is decided by Legato"),
        ({"cache_salt": "mine"}, 400, "cache_salt"),
        ({"store": True}, 400, "store"),
        ({"metadata": {"a": "b"}}, 400, "metadata"),
        ({"service_tier": "flex"}, 400, "service_tier"),
        ({"top_logprobs": 2}, 400, "top_logprobs needs logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
        ({"presence_penalty": 2.5}, 400, "presence_penalty"),
        ({"frequency_penalty": -3}, 400, "frequency_penalty"),
        ({"logit_bias": {"99999": 1}}, 400, "logit_bias"),
        ({"logit_bias": {"5": 101}}, 400, "logit_bias"),
        ({"reasoning_effort": "high"}, 400, "reasoning_effort"),
        (
            {"response_format": {"type": "json_object", "strict_mode": True}},
            400,
            "response_format.strict_mode",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f", "x_hint": 1}}]}, 400, "function.x_hint"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400, "type"),
    ],
)
def test_bad_requests_get_a_4xx_that_names_the_fix(
    served: Served, patch: dict[str, object], status: int, says: str
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **patch}
    r = httpx.post(f"{served.url}/v1/chat/completions", json=body, headers=served.headers("acme"), timeout=60)
    assert r.status_code == status, r.text
    assert says in r.json()["error"]["message"]


def test_no_key_or_a_wrong_key_is_401(served: Served) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(
        f"{served.url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"}, timeout=30
    )
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(f"{served.url}/v1/models", timeout=30).status_code == 401


def test_client_cache_salt_is_refused(served: Served, tmp_path: Path) -> None:
    """Prefix-cache isolation comes from the tenant: a `cache_salt` in the body cannot opt a
    request into another tenant's cache entries (it is a 400, and the salt stays the tenant's)."""
    prompt = "shared secret prefix " * 8
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2, "temperature": 0}
    with httpx.Client(base_url=served.url, timeout=120) as http:
        assert http.post("/v1/completions", json=body, headers=served.headers("acme")).status_code == 200
        globex_salt = served.state.inner_scheduler.cache_salt(served.tenant_ids["acme"])
        r = http.post(
            "/v1/completions", json={**body, "cache_salt": globex_salt}, headers=served.headers("globex")
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "cache_salt"
        r = http.post("/v1/completions", json=body, headers=served.headers("globex"))
        assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        again = http.post("/v1/completions", json=body, headers=served.headers("acme")).json()
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


def test_n_samples_are_one_call_prefilled_once(served: Served) -> None:
    """`n=4` through the proxy: 4 choices from one scheduled call (one engine request, one
    prefill, the samples forked), and the program's next prompt continues from choice 0."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{served.url}/v1", api_key=served.keys["acme"], timeout=120, max_retries=0)
    engine = served.state.engine
    scheduler = served.state.inner_scheduler
    before, calls = anyio.run(engine.stats), scheduler.stats["calls"]
    messages = [{"role": "user", "content": "Four samples of one prompt, through the proxy, please."}]
    out = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        n=4,
        max_tokens=8,
        temperature=1.0,
        seed=3,
        extra_body={"program_id": "sampler", "is_last_step": True},
    )
    after = anyio.run(engine.stats)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert scheduler.stats["calls"] - calls == 1
    assert after.prefill_tokens - before.prefill_tokens == out.usage.prompt_tokens
    assert after.forked_samples - before.forked_samples == 3
    # streamed: every choice opens with the role and ends with a finish_reason
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, n=4, max_tokens=8, temperature=1.0, seed=3, stream=True
    )
    texts, roles, reasons = ["", "", "", ""], set(), set()
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            roles |= {c.index} if c.delta.role == "assistant" else set()
            reasons |= {c.index} if c.finish_reason else set()
    assert texts == [c.message.content for c in out.choices]
    assert roles == reasons == {0, 1, 2, 3}


def test_top_logprobs_through_the_proxy(served: Served) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{served.url}/v1", api_key=served.keys["acme"], timeout=120, max_retries=0)
    out = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    engine = served.state.engine
    seq = engine.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    for entry in content:  # the dense forward pass of the same model gives the same alternatives
        ref = torch.log_softmax(engine.core.model.dense_logits(seq)[-1].double(), dim=-1)
        values, ids = torch.topk(ref, 3)
        assert [a.bytes for a in entry.top_logprobs] == [
            list(engine.tokenizer.token_bytes(t)) for t in ids.tolist()
        ]
        assert [a.logprob for a in entry.top_logprobs] == pytest.approx(values.tolist(), abs=1e-4)
        assert entry.logprob == pytest.approx(values.tolist()[0], abs=1e-4)  # greedy: the top one
        seq.append(ids.tolist()[0])
