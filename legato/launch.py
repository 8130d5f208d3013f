"""What the command line names, built and checked before anything serves: the engines of
`--engine` (one replica per flag), their KV tiers, and the scheduler of `--policy`.

One implementation for `legato serve` and `legato run` (`legato engine serve` shares the tier
flags through `legato.engine_adapter.commands.tier_overrides`). Engine specs:

- `torch` or `torch:device=cuda:1,num_blocks=4096`: the embedded engine (`--checkpoint DIR`, or
  the seeded default model), with `--kv-host-gb` / `--kv-redis-url` tiers; speculative decoding
  with `speculative_drafter=NAME`, `num_speculative_tokens=K` and `draft_model=DIR` (the
  `EngineConfig` fields);
- `vllm=URL`, `sglang=URL`: a server speaking that API (`legato engine serve` speaks both); the
  served model is read from its `/v1/models`, the tokenizer comes from `--checkpoint DIR` (the
  seeded model's byte tokenizer without it);
- `sim-realtime[:gpu=h100,model=llama-3.1-8b,time_scale=1]`: a simulated GPU in real time;
- `package.module:factory`: a zero-argument callable returning an `Engine` (tests use it).

The scheduler of `--policy` is `legato.scheduler.by_name.make_scheduler`.

Startup checks (`LaunchError`, one line, no traceback): a URL that is not `http(s)://HOST[:PORT]`,
a server that does not answer, and replicas serving different models. This sits at the command
line's level (it imports the simulator, the HTTP engines and the policy registry), so only the
`commands` modules import it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from legato.engine_adapter.base import Engine, EngineError, Tokenizer

Kind = Literal["torch", "vllm", "sglang", "sim-realtime", "factory"]
HTTP_KINDS = ("vllm", "sglang")
TORCH_KEYS = {
    "device": str,
    "num_blocks": int,
    "speculative_drafter": str,
    "num_speculative_tokens": int,
    "draft_model": str,
}
PROBE_TIMEOUT_S = 10.0  # an engine that does not answer /v1/models within this is unreachable


class LaunchError(ValueError):
    """A command-line engine or policy that cannot be used; the message says what to change."""


@dataclass(frozen=True)
class EngineSpec:
    text: str  # as given, for messages
    kind: Kind
    url: str | None = None  # vllm / sglang
    options: dict[str, Any] = field(default_factory=dict)  # torch: `TORCH_KEYS`


@dataclass(frozen=True)
class TorchOptions:
    """What the torch engines of one command share (each spec may override the device)."""

    checkpoint: Path | None = None
    device: str = "cpu"
    tiers: dict[str, Any] = field(default_factory=dict)  # EngineConfig overrides (tier_overrides)


def _check_url(text: str, url: str) -> str:
    import httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise LaunchError(f"--engine {text}: {url!r} is not a URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise LaunchError(f"--engine {text}: {url!r} is not an http(s)://HOST[:PORT] URL")
    return str(parsed).rstrip("/")


def parse_engine_spec(text: str) -> EngineSpec:
    """One `--engine` value -> a spec (LaunchError with the accepted forms otherwise)."""
    text = text.strip()
    head, eq, url = text.partition("=")
    if eq and head in HTTP_KINDS:
        return EngineSpec(text, head, url=_check_url(text, url.strip()))  # type: ignore[arg-type]
    name, colon, params = text.partition(":")
    if name == "sim-realtime":
        return EngineSpec(text, "sim-realtime")
    if name == "torch":
        options: dict[str, Any] = {}
        for item in filter(None, params.split(",")):
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in TORCH_KEYS:
                raise LaunchError(
                    f"--engine {text}: use torch[:key=value,...] with keys {', '.join(TORCH_KEYS)}"
                )
            try:
                options[key] = TORCH_KEYS[key](value.strip())
            except ValueError:
                raise LaunchError(f"--engine {text}: {key} must be a number, got {value!r}") from None
        return EngineSpec(text, "torch", options=options)
    if colon and name and params and "=" not in text:
        return EngineSpec(text, "factory")
    raise LaunchError(
        f"--engine {text!r}: use torch[:device=...], vllm=URL, sglang=URL, "
        "sim-realtime[:gpu=...,model=...] or package.module:factory"
    )


def probe_model(spec: EngineSpec) -> str:
    """The model an HTTP engine serves (its `/v1/models`); LaunchError when it does not answer."""
    import httpx

    assert spec.url is not None
    try:
        response = httpx.get(f"{spec.url}/v1/models", timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        reason = "connection refused" if isinstance(exc, httpx.ConnectError) else type(exc).__name__
        raise LaunchError(
            f"--engine {spec.text}: cannot reach {spec.url} ({reason}); is the server running?"
        ) from None
    if response.status_code != 200:
        raise LaunchError(
            f"--engine {spec.text}: {spec.url}/v1/models answered {response.status_code}; "
            f"is it a {spec.kind} server?"
        )
    try:
        models = [str(m["id"]) for m in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        models = []
    if not models:
        raise LaunchError(f"--engine {spec.text}: {spec.url}/v1/models lists no model")
    return models[0]


def _tokenizer(checkpoint: Path | None) -> Tokenizer:
    """The tokenizer HTTP engines use locally: `--checkpoint`'s, else the seeded model's."""
    from legato.engine_adapter.torch import ByteTokenizer
    from legato.engine_adapter.torch.checkpoint import load_tokenizer, read_config

    if checkpoint is None:
        return ByteTokenizer()
    return load_tokenizer(checkpoint, read_config(checkpoint))


def _factory(spec: EngineSpec) -> Engine:
    module_name, _, attr = spec.text.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LaunchError(f"--engine {spec.text}: cannot import {module_name!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise LaunchError(f"--engine {spec.text}: {module_name} has no callable {attr!r}")
    engine = factory()
    if not isinstance(engine, Engine):
        raise LaunchError(
            f"--engine {spec.text}: the factory returned a {type(engine).__name__}, not an Engine"
        )
    return engine


def build_engine(spec: EngineSpec, torch: TorchOptions) -> Engine:
    """One replica (not started). HTTP servers are asked for their model here."""
    if spec.kind == "torch":
        from legato.engine_adapter.torch import load_engine

        options = {"device": torch.device, **spec.options}
        return load_engine(torch.checkpoint, options.pop("device"), **options, **torch.tiers)
    if spec.kind == "sim-realtime":
        from legato.sim.realtime import from_spec

        try:
            return from_spec(spec.text)
        except ValueError as exc:
            raise LaunchError(f"--engine {spec.text}: {exc}") from None
    if spec.kind == "factory":
        return _factory(spec)
    assert spec.url is not None
    model = probe_model(spec)
    tokenizer = _tokenizer(torch.checkpoint)
    if spec.kind == "vllm":
        from legato.engine_adapter.http import VLLMEngine

        return VLLMEngine(spec.url, model, tokenizer)
    from legato.engine_adapter.http import SGLangEngine

    return SGLangEngine(spec.url, tokenizer, model_name=model)


def build_engines(texts: Sequence[str], torch: TorchOptions) -> list[Engine]:
    """Every `--engine` (one replica each), checked: parseable, reachable, one model for all."""
    specs = [parse_engine_spec(t) for t in texts] or [parse_engine_spec("torch")]
    if torch.tiers and not any(s.kind == "torch" for s in specs):
        raise LaunchError("--kv-host-gb / --kv-redis-url are KV tiers of torch engines; no --engine is torch")
    engines: list[Engine] = []
    for spec in specs:
        try:
            engines.append(build_engine(spec, torch))
        except EngineError as exc:
            raise LaunchError(f"--engine {spec.text}: {exc}") from None
    names = [(spec.text, getattr(e, "model_name", "?")) for spec, e in zip(specs, engines, strict=True)]
    if len({model for _, model in names}) > 1:
        shown = ", ".join(f"{text} serves {model!r}" for text, model in names)
        raise LaunchError(f"the replicas must serve one model: {shown}")
    return engines
