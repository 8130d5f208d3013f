"""CLI commands of this component (registered on the `legato` app by legato.cli).

`legato engine serve` puts the embedded torch engine behind OpenAI-, SGLang- and vLLM-compatible
HTTP APIs (see `legato.engine_adapter.server`). The torch engine's KV-tier flags (`--kv-host-gb`,
`--kv-redis-url`) are defined here once and shared with `legato serve` and `legato run`. Heavy
imports (torch, fastapi, uvicorn) stay inside the command body so `legato --help` stays fast.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from legato.spec.adaptive import MAX_DRAFT_LEN

engine_app = typer.Typer(
    name="engine",
    help="The embedded inference engine: serve it over HTTP.",
    no_args_is_help=True,
)


def device_option(value: str) -> str:
    """A typer callback for `--device`: the engine's own check (`check_device`: cpu, cuda or
    cuda:N, and a GPU torch can use) as a usage error when the command line is parsed."""
    if value == "cpu":
        return value
    from legato.engine_adapter.torch.config import ConfigError, check_device

    try:
        check_device(value)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


DeviceOpt = Annotated[
    str, typer.Option(callback=device_option, help="Where the torch engine runs: cpu, cuda or cuda:N.")
]
KvHostGbOpt = Annotated[
    float,
    typer.Option(
        "--kv-host-gb",
        min=0,
        help="Host-RAM KV tier of each torch engine, in GiB (evicted blocks worth keeping); 0 = none.",
    ),
]
KvRedisOpt = Annotated[
    str | None,
    typer.Option(
        "--kv-redis-url",
        help="Redis KV tier shared by torch engines (and processes), e.g. redis://127.0.0.1:6379/0.",
    ),
]
REDIS_PING_TIMEOUT_S = 3.0
# HTTP hardening flags, shared by `legato serve` (see `engine_adapter/server/http_server.py`).
TrustedProxiesOpt = Annotated[
    str | None,
    typer.Option(
        "--trusted-proxies",
        help="Believe X-Forwarded-For/-Proto only from these comma-separated addresses or networks "
        "(your reverse proxy; '*' for any). Default: forwarded headers are ignored.",
    ),
]
ReadTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--read-timeout",
        min=0.1,
        max=3600,
        help="Seconds a client has to send a whole request (headers and body); then 408.",
    ),
]


def tier_overrides(kv_host_gb: float, kv_redis_url: str | None) -> dict[str, Any]:
    """The `EngineConfig` fields the tier flags set; a Redis that does not answer a PING is an
    `EngineError` now (at run time a dead Redis only costs misses, so it would go unnoticed)."""
    from legato.engine_adapter.base import EngineError

    out: dict[str, Any] = {}
    if kv_host_gb > 0:
        out["host_tier_bytes"] = int(kv_host_gb * 2**30)
    if kv_redis_url:
        import redis

        try:
            client = redis.Redis.from_url(
                kv_redis_url, socket_connect_timeout=REDIS_PING_TIMEOUT_S, socket_timeout=REDIS_PING_TIMEOUT_S
            )
            try:
                client.ping()
            finally:
                client.close()
        except (ValueError, redis.RedisError) as exc:
            raise EngineError(f"--kv-redis-url {kv_redis_url}: no Redis answers there ({exc})") from None
        out["redis_url"] = kv_redis_url
    return out


def register(app: typer.Typer) -> None:
    """Add this component's commands to `app`."""
    app.add_typer(engine_app, name="engine")


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before starting the server so `--port 0` works and the printed URL is exact."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise typer.BadParameter(
            f"cannot listen on {host}:{port}: {exc.strerror}", param_hint="--port"
        ) from exc
    sock.set_inheritable(True)
    return sock


def _directory_option(help_text: str) -> Any:
    """A typer option naming an existing, readable directory."""
    return typer.Option(exists=True, file_okay=False, dir_okay=True, readable=True, help=help_text)


@engine_app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0 = any free port).")] = 8000,
    checkpoint: Annotated[
        Path | None,
        _directory_option(
            "Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json). "
            "Default: the small seeded model with a byte-level tokenizer."
        ),
    ] = None,
    device: DeviceOpt = "cpu",
    num_blocks: Annotated[
        int | None, typer.Option(min=1, help="KV-cache blocks (default: sized by the engine).")
    ] = None,
    max_batched_tokens: Annotated[
        int | None, typer.Option(min=1, help="Token budget of one engine step (chunked prefill).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the default model's weights and of unseeded sampling.")
    ] = None,
    model_name: Annotated[
        str | None,
        typer.Option(help="Served model name (default: the checkpoint directory's name or legato-tiny)."),
    ] = None,
    kv_host_gb: KvHostGbOpt = 0.0,
    kv_redis_url: KvRedisOpt = None,
    speculative_drafter: Annotated[
        str | None,
        typer.Option(
            help="Speculate on every request that can (greedy or sampled, no logprobs): suffix, "
            "suffix-local, suffix-agent, ngram or draft-model. Default: only requests that ask."
        ),
    ] = None,
    num_speculative_tokens: Annotated[
        int, typer.Option(min=0, max=MAX_DRAFT_LEN, help="Longest draft one verify step checks.")
    ] = 4,
    draft_model: Annotated[
        Path | None,
        _directory_option(
            "Checkpoint directory of a smaller model with the same vocabulary, for the draft-model drafter."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    trusted_proxies: TrustedProxiesOpt = None,
    read_timeout: ReadTimeoutOpt = 60.0,
) -> None:
    """Serve the torch engine over HTTP: /v1/completions, /v1/chat/completions, /v1/models,
    /generate (SGLang), /inference/v1/generate (vLLM tokens), /tokenize, /detokenize, /health."""
    import anyio
    import uvicorn

    from legato.engine_adapter.base import EngineError
    from legato.engine_adapter.server import create_engine_app
    from legato.engine_adapter.server.http_server import http_config
    from legato.engine_adapter.torch import load_engine

    overrides: dict[str, Any] = {}
    if num_blocks is not None:
        overrides["num_blocks"] = num_blocks
    if max_batched_tokens is not None:
        overrides["max_num_batched_tokens"] = max_batched_tokens
    if seed is not None:
        overrides["seed"] = seed
    overrides["speculative_drafter"] = speculative_drafter
    overrides["num_speculative_tokens"] = num_speculative_tokens
    overrides["draft_model"] = str(draft_model) if draft_model is not None else None
    try:
        overrides.update(tier_overrides(kv_host_gb, kv_redis_url))
        engine = load_engine(checkpoint, device=device, **overrides)
    except EngineError as exc:  # bad checkpoint or config: say what is wrong, no traceback
        typer.echo(f"legato engine serve: {exc}", err=True)
        raise typer.Exit(2) from exc
    # The served name: what clients put in `model` (the torch engine's own default differs).
    engine.core.model_name = model_name or (
        checkpoint.resolve().name if checkpoint is not None else "legato-tiny"
    )

    sock = bind_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    app = create_engine_app(engine, max_model_len=engine.core.max_model_len, on_shutdown=engine.close)
    config = http_config(
        app,
        read_timeout_s=read_timeout,
        trusted_proxies=trusted_proxies,
        log_level=log_level,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    typer.echo(
        f"Legato engine serving {engine.model_name!r} at http://{shown}:{bound_port} "
        f"(OpenAI API under /v1, docs at /docs)",
        err=False,
    )
    # Flush now: tests and supervisors wait for this line before connecting.
    import sys

    sys.stdout.flush()
    anyio.run(server.serve, [sock])
