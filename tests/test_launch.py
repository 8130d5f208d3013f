"""`legato.launch`: the `--engine` forms `legato serve` and `legato run` accept, and the one-line
refusals of the ones they do not (no engine is started here: see tests/server/test_serve_*)."""

from __future__ import annotations

import pytest

from legato.launch import LaunchError, TorchOptions, build_engines, parse_engine_spec
from legato.scheduler.by_name import make_scheduler


def test_engine_spec_forms() -> None:
    assert parse_engine_spec("torch").kind == "torch"
    spec = parse_engine_spec("torch:device=cuda:1,num_blocks=4096")
    assert spec.kind == "torch" and spec.options == {"device": "cuda:1", "num_blocks": 4096}
    spec = parse_engine_spec(
        "torch:speculative_drafter=draft-model,draft_model=/m/d,num_speculative_tokens=6"
    )
    assert spec.options == {
        "speculative_drafter": "draft-model",
        "draft_model": "/m/d",
        "num_speculative_tokens": 6,
    }
    vllm = parse_engine_spec("vllm=http://gpu-a:8000/")
    assert (vllm.kind, vllm.url) == ("vllm", "http://gpu-a:8000")
    assert parse_engine_spec("sglang=https://10.0.0.2:30000").url == "https://10.0.0.2:30000"
    assert parse_engine_spec("sim-realtime:gpu=a10,model=qwen2.5-32b").kind == "sim-realtime"
    assert parse_engine_spec("tests.doubles.engines:make_engine").kind == "factory"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("vllm=ftp://host", "http(s)://HOST[:PORT]"),
        ("vllm=", "http(s)://HOST[:PORT]"),
        ("sglang=http://", "http(s)://HOST[:PORT]"),
        ("torch:devise=cuda", "keys device, num_blocks"),
        ("torch:num_blocks=many", "num_blocks must be a number"),
        ("torch:num_speculative_tokens=x", "num_speculative_tokens must be a number"),
        ("tgi=http://x", "use torch[:device=...], vllm=URL"),
        ("nonsense", "package.module:factory"),
    ],
)
def test_bad_engine_specs_say_what_to_use(text: str, says: str) -> None:
    with pytest.raises(LaunchError) as err:
        parse_engine_spec(text)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_replicas_of_one_model_and_tier_flags_need_a_torch_engine() -> None:
    fake = "tests.doubles.engines:make_engine"
    assert len(build_engines([fake, fake], TorchOptions())) == 2
    with pytest.raises(LaunchError, match="KV tiers of torch engines"):
        build_engines([fake], TorchOptions(tiers={"host_tier_bytes": 1 << 20}))
    with pytest.raises(LaunchError, match="the replicas must serve one model"):
        build_engines([fake, "sim-realtime"], TorchOptions())
    with pytest.raises(LaunchError, match="sim-realtime:gpu=nope"):
        build_engines(["sim-realtime:gpu=nope"], TorchOptions())


def test_policy_names() -> None:
    engines = build_engines(["tests.doubles.engines:make_engine"] * 2, TorchOptions())
    assert type(make_scheduler(engines, "legato")).__name__ == "PolicyScheduler"
    assert type(make_scheduler(engines[:1], None)).__name__ == "PassthroughScheduler"
    for policy, says in [
        ("passthrough", "drives one engine"),
        ("nope", "unknown policy"),
        ("oracle-evict", "future"),
    ]:
        with pytest.raises(ValueError, match=says):
            make_scheduler(engines, policy)
