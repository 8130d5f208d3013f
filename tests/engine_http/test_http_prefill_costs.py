"""`VLLMEngine.prefill_costs()` / `SGLangEngine.prefill_costs()`: a server's prefill cost per
token, from its prefill-phase metrics (`legato.engine_adapter.http.prefill_metrics`). The parser
against vLLM's own shapes (with and without `request_prefill_kv_computed_tokens`) and SGLang's
(time to first token less queue time), then the whole path on a real socket: the torch engine's
server exports the same metrics, each client reads them through `capacity()`, and the policy's
view declares the result."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from legato.engine_adapter.base import Capability, GenerateRequest, SamplingParams, collect
from legato.engine_adapter.http import SGLangEngine, VLLMEngine
from legato.engine_adapter.http.common import parse_prometheus
from legato.engine_adapter.http.prefill_metrics import PrefillFromMetrics, sglang_totals
from legato.engine_adapter.server import create_engine_app
from legato.engine_adapter.torch import TorchEngine, load_engine
from tests.engine_http.serving import serve_in_thread
from tests.tiny_model import TINY

LABELS = 'engine="0",model_name="m"'


def _vllm_metrics(seconds: float, requests: int, computed: int | None, prompt: int, hits: int) -> str:
    """The lines of a vLLM v1 `/metrics` the estimator reads (histograms cut to +Inf)."""
    lines = [
        "# TYPE vllm:request_prefill_time_seconds histogram",
        f'vllm:request_prefill_time_seconds_bucket{{{LABELS},le="+Inf"}} {requests}.0',
        f"vllm:request_prefill_time_seconds_sum{{{LABELS}}} {seconds}",
        f"vllm:request_prefill_time_seconds_count{{{LABELS}}} {requests}.0",
        f"vllm:prompt_tokens_total{{{LABELS}}} {prompt}.0",
        f"vllm:prefix_cache_hits_total{{{LABELS}}} {hits}.0",
    ]
    if computed is not None:
        lines.append(f"vllm:request_prefill_kv_computed_tokens_sum{{{LABELS}}} {computed}.0")
    return "\n".join(lines) + "\n"


STEP_S, TOKEN_S = 0.03, 50e-6  # a server whose prefill phase is one 30 ms step plus 50 us a token


def _scrapes(batches: list[tuple[int, int]], computed: bool = True) -> PrefillFromMetrics:
    """Feed an estimator the scrapes of a server that prefilled `(requests, tokens)` between
    consecutive scrapes (after 2 s of warm-up it did before the first one)."""
    est = PrefillFromMetrics()
    seconds, requests, tokens = 2.0, 10, 8_000
    est.observe(parse_prometheus(_vllm_metrics(seconds, requests, tokens if computed else None, tokens, 0)))
    for r, t in batches:
        seconds, requests, tokens = seconds + STEP_S * r + TOKEN_S * t, requests + r, tokens + t
        est.observe(
            parse_prometheus(_vllm_metrics(seconds, requests, tokens if computed else None, tokens, 0))
        )
    return est


def test_the_cost_of_a_prompt_token_apart_from_the_step_each_request_waits_in() -> None:
    # Agent turns append short prompts: seconds over tokens would price each at a whole step.
    batches = [(8, 8 * 64), (2, 2 * 2000), (8, 8 * 64), (4, 4 * 1000), (8, 8 * 256)]
    assert _scrapes(batches).per_token_s == pytest.approx(TOKEN_S, rel=1e-6)
    seconds = sum(STEP_S * r + TOKEN_S * t for r, t in batches)
    assert seconds / sum(t for _, t in batches) > 2.5 * TOKEN_S  # what seconds over tokens says


def test_until_lengths_vary_seconds_over_tokens_since_the_first_scrape() -> None:
    assert _scrapes([]).per_token_s is None  # the first scrape is the baseline (warm-up left out)
    est = _scrapes([(4, 4 * 500), (4, 4 * 500)])  # always alike: the two terms cannot be told apart
    assert est.per_token_s == pytest.approx((STEP_S * 8 + TOKEN_S * 4000) / 4000)


def test_older_servers_count_prompt_tokens_less_prefix_hits() -> None:
    est = PrefillFromMetrics()
    est.observe(parse_prometheus(_vllm_metrics(0.0, 0, None, 0, 0)))
    est.observe(parse_prometheus(_vllm_metrics(2.0, 4, None, 50_000, 10_000)))
    assert est.per_token_s == pytest.approx(2.0 / 40_000)


def test_a_restarted_server_or_no_metrics_teach_nothing_wrong() -> None:
    est = PrefillFromMetrics()
    est.observe(parse_prometheus(_vllm_metrics(9.0, 9, 90_000, 90_000, 0)))
    est.observe(parse_prometheus(_vllm_metrics(1.0, 1, 10_000, 10_000, 0)))  # counters went back
    assert est.per_token_s is None
    est.observe(parse_prometheus(_vllm_metrics(2.0, 2, 30_000, 30_000, 0)))
    assert est.per_token_s == pytest.approx(1.0 / 20_000)
    est.observe(parse_prometheus("vllm:kv_cache_usage_perc 0.5\nvllm:request_prefill_time_seconds_sum nan\n"))
    assert est.per_token_s == pytest.approx(1.0 / 20_000)  # kept


def _sglang_metrics(ttft: float, queued: float, requests: int, prompt: int, cached: int) -> str:
    """The lines of an SGLang `/metrics` the estimator reads (histograms cut to +Inf)."""
    label = 'model_name="m"'
    return (
        "\n".join(
            [
                "# TYPE sglang:time_to_first_token_seconds histogram",
                f'sglang:time_to_first_token_seconds_bucket{{{label},le="+Inf"}} {requests}.0',
                f"sglang:time_to_first_token_seconds_sum{{{label}}} {ttft}",
                f"sglang:time_to_first_token_seconds_count{{{label}}} {requests}.0",
                "# TYPE sglang:queue_time_seconds histogram",
                f"sglang:queue_time_seconds_sum{{{label}}} {queued}",
                f"sglang:queue_time_seconds_count{{{label}}} {requests}.0",
                f"sglang:prompt_tokens_total{{{label}}} {prompt}.0",
                f"sglang:cached_tokens_total{{{label}}} {cached}.0",
            ]
        )
        + "\n"
    )


def test_sglang_prefill_is_first_token_time_less_queue_time() -> None:
    """Requests that waited long in the queue are priced by their prefill alone, and the
    prefix-cache hits are not counted as computed."""
    est = PrefillFromMetrics(sglang_totals)
    ttft = queued = 0.0
    requests = prompt = cached = 0
    est.observe(parse_prometheus(_sglang_metrics(ttft, queued, requests, prompt, cached)))
    for r, t, wait in [(8, 8 * 64, 30.0), (2, 2 * 2000, 0.5), (8, 8 * 64, 12.0), (4, 4 * 1000, 80.0)]:
        hits = 3 * t  # every request also read three times its computed tokens from the cache
        queued += wait
        ttft += wait + STEP_S * r + TOKEN_S * t
        requests, prompt, cached = requests + r, prompt + t + hits, cached + hits
        est.observe(parse_prometheus(_sglang_metrics(ttft, queued, requests, prompt, cached)))
    assert est.per_token_s == pytest.approx(TOKEN_S, rel=1e-6)
    assert est.costs() == (est.per_token_s, 0.0)


def test_sglang_increments_that_do_not_add_up_yet_carry_over() -> None:
    """SGLang counts a request's queue time when it enters a batch and its first token later:
    a scrape in between has queue time without its first token. Nothing is learned from it, and
    the next scrape counts both."""
    est = PrefillFromMetrics(sglang_totals)
    est.observe(parse_prometheus(_sglang_metrics(10.0, 4.0, 5, 5_000, 0)))
    est.observe(parse_prometheus(_sglang_metrics(10.0, 9.0, 5, 5_000, 0)))  # queued, no first token
    assert est.per_token_s is None
    est.observe(parse_prometheus(_sglang_metrics(15.5, 9.0, 6, 6_000, 0)))  # 5 s queued, 0.5 s prefill
    assert est.per_token_s == pytest.approx(0.5 / 1_000)
    assert PrefillFromMetrics(sglang_totals).costs() is None
    no_queue = "sglang:time_to_first_token_seconds_sum 1.0\nsglang:time_to_first_token_seconds_count 1\n"
    assert sglang_totals(parse_prometheus(no_queue)) is None  # TTFT alone would count the wait


def test_sglang_queue_time_counts_once_per_data_parallel_group() -> None:
    """With metrics on every scheduler, each tensor-parallel rank records the same requests'
    queue time: only rank 0 of each data-parallel group counts (the first-token histogram
    comes from the one tokenizer manager)."""
    lines = [
        "sglang:time_to_first_token_seconds_sum 12.0",
        "sglang:time_to_first_token_seconds_count 4",
        "sglang:prompt_tokens_total 4000",
        "sglang:cached_tokens_total 0",
    ]
    for dp in ("0", "1"):
        for tp in ("0", "1"):
            lines.append(f'sglang:queue_time_seconds_sum{{dp_rank="{dp}",tp_rank="{tp}",pp_rank="0"}} 5.0')
    assert sglang_totals(parse_prometheus("\n".join(lines) + "\n")) == (2.0, 4.0, 4000.0)


@pytest.fixture(params=["vllm", "sglang"])
async def replica(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[VLLMEngine | SGLangEngine, TorchEngine]]:
    """A fresh torch engine behind its server on a real socket, and a client of it speaking
    vLLM's or SGLang's API."""
    engine: TorchEngine = load_engine(model_config=TINY, num_blocks=256, max_num_batched_tokens=256)
    with serve_in_thread(create_engine_app(engine, on_shutdown=engine.close)) as url:
        client: VLLMEngine | SGLangEngine = (
            VLLMEngine(url, "legato-default", engine.tokenizer, endpoint="completions", timeout=60)
            if request.param == "vllm"
            else SGLangEngine(url, engine.tokenizer, timeout=60)
        )
        try:
            yield client, engine
        finally:
            await client.close()


async def test_a_replica_declares_the_prefill_cost_its_server_measured(
    replica: tuple[VLLMEngine | SGLangEngine, TorchEngine],
) -> None:
    client, engine = replica
    assert Capability.PREFILL_COSTS in client.capabilities
    await client.capacity()  # the first scrape: the baseline
    assert client.prefill_costs() is None
    for i, length in enumerate((40, 400, 100, 250)):
        prompt = tuple(engine.tokenizer.encode(chr(97 + i) * length))
        await collect(client, GenerateRequest(f"p{i}", prompt, SamplingParams(max_tokens=4)))
        await client.capacity()  # a scrape after each request
    costs = client.prefill_costs()
    stats = await engine.stats()
    assert stats.prefilled_requests == 4 and stats.prefill_computed_tokens == stats.prefill_tokens
    assert costs is not None and costs[1] == 0.0
    # the server's prefill phases against the engine's own fit of its steps, as a cost per token
    # at the depth of these prompts (a few short prefills may put the fit's weight on either of
    # its terms; the server's figure has no context term): the same order
    fit = engine.prefill_costs()
    depth = stats.prefill_computed_tokens / stats.prefilled_requests
    assert fit is not None
    per_token = fit[0] + fit[1] * (depth + 1) / 2
    assert per_token / 10 < costs[0] < per_token * 10


async def test_the_policy_prices_a_recompute_on_an_http_replica_at_its_servers_prefill_cost(
    replica: tuple[VLLMEngine | SGLangEngine, TorchEngine],
) -> None:
    from legato.scheduler.baselines import Continuum
    from legato.scheduler.runtime import PolicyScheduler
    from tests.scheduler.test_runtime import run_agents

    client, _ = replica
    async with PolicyScheduler([client], Continuum()) as sched:
        assert sched.view.replica(0).prefill_s_per_token is None  # nothing prefilled yet
        await run_agents(sched)
        await sched.settle()
        view = sched.view.replica(0)
        costs = client.prefill_costs()
        assert costs is not None and view.prefill_s_per_token == costs[0] > 0.0
        assert view.prefill_s_per_pair == 0.0
