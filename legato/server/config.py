"""Server configuration: where it listens, where runs are stored, and every explicit limit.

Limits are data (not constants scattered in handlers) so `GET /v1/limits` can show clients what
they are and every refusal can quote the one that was hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

SingleTenantMode = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_000_000  # any request body
    max_weights_bytes: int = 4 * 2**30  # an RL weight upload (POST /update_weights, msgpack tensors)
    max_program_bytes: int = 512_000  # a program spec's JSON
    max_inputs_bytes: int = 256_000  # a run's inputs + metadata JSON
    max_prompt_chars: int = 100_000  # any single string input (it ends up in a prompt)
    max_metadata_keys: int = 64
    max_runs_per_page: int = 200
    max_event_buffer: int = 4096  # SSE: events buffered per subscriber before dropping
    run_timeout_s: float = 3600.0  # a run still going after this fails


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    db_path: Path | None = Path("legato.db")  # SQLite file (used when redis_url is None)
    redis_url: str | None = None
    redis_prefix: str = "legato:"  # key prefix, so several deployments (or tests) share one Redis
    lease_s: float = 10.0  # Redis: a run's owner renews its lease every lease_s/3; others take over after
    single_tenant: SingleTenantMode = "auto"  # auto: keyless loopback requests allowed while no tenants exist
    default_max_concurrent_runs: int = 64
    policy: str | None = None  # a `legato bench` policy name; None = passthrough (engine batches)
    # program-level speculation of runs: off, on, or a '+' list of prefill, early, predicted
    program_spec: str = "off"
    limits: Limits = field(default_factory=Limits)
    admin_key: str | None = field(default=None, repr=False)  # sees every tenant on /ui
    sse_keepalive_s: float = 15.0
    shutdown_timeout_s: float = 10.0
