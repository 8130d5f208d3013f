"""What a replica's KV tiers hold and did, as one plain snapshot for `/metrics` and `/ui`.

The device tier's numbers come from the engine's own stats (`EngineStats`, awaited by the
caller); the host RAM and Redis tiers' from the torch engine's `TierManager` (`engine.core.tiers`)
and its `HostTier` / `RedisTier` counters, read without awaiting (plain ints, updated under the
tiers' own locks; a torn read costs one sample's accuracy, never correctness). Engines without
tiers (HTTP engines, the simulated one) simply have none, and the snapshot says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class TierSnapshot:
    """One tier of one replica. Counters are totals since the engine started."""

    tier: str  # device, host, redis
    blocks: int | None = None  # blocks resident now (None: the tier cannot say, e.g. Redis)
    bytes_used: int | None = None
    capacity_bytes: int | None = None
    loaded_tokens: int = 0  # prompt tokens served from this tier (device: every cached token)
    offloaded_blocks: int = 0  # blocks written to this tier
    written_bytes: int = 0
    read_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ReplicaTiers:
    """A replica's tiers, fastest first, and the load-vs-recompute choices of its tier manager."""

    tiers: list[TierSnapshot] = field(default_factory=list)
    load_choices: int = 0  # fetches where loading from a tier beat recomputing
    recompute_choices: int = 0  # fetches where a tier held more but recomputing was cheaper

    def get(self, tier: str) -> TierSnapshot | None:
        return next((t for t in self.tiers if t.tier == tier), None)


def _int(obj: Any, name: str) -> int:
    value = getattr(obj, name, 0)
    return value if isinstance(value, int) else 0


def replica_tiers(engine: Any, stats: Any) -> ReplicaTiers:
    """The tiers of one replica; `stats` is its awaited `EngineStats` (or None)."""
    tiers: list[TierSnapshot] = []
    core = getattr(engine, "core", None)
    manager = getattr(core, "tiers", None)
    fmt = getattr(manager, "fmt", None) or getattr(getattr(core, "kv", None), "kv_format", None)
    block_nbytes = getattr(fmt, "block_nbytes", None)
    if stats is not None:
        used = getattr(stats, "used_blocks", None)
        total = getattr(stats, "total_blocks", None)
        per_block = block_nbytes if isinstance(block_nbytes, int) else None
        tiers.append(
            TierSnapshot(
                "device",
                blocks=used if isinstance(used, int) else None,
                bytes_used=used * per_block if isinstance(used, int) and per_block else None,
                capacity_bytes=total * per_block if isinstance(total, int) and per_block else None,
                loaded_tokens=_int(stats, "prefix_hit_tokens"),
            )
        )
    if manager is None:
        return ReplicaTiers(tiers)
    ts = manager.stats
    host = getattr(manager, "host", None)
    if host is not None:
        tiers.append(
            TierSnapshot(
                "host",
                blocks=len(host),
                bytes_used=_int(host.stats, "bytes_used"),
                capacity_bytes=_int(host, "capacity_bytes"),
                loaded_tokens=_int(ts, "host_loaded_tokens"),
                offloaded_blocks=_int(stats, "offloaded_blocks") if stats is not None else host.stats.puts,
                written_bytes=0,
                read_bytes=0,
            )
        )
    redis = getattr(manager, "redis", None)
    if redis is not None:
        rs = redis.stats
        tiers.append(
            TierSnapshot(
                "redis",
                loaded_tokens=_int(ts, "redis_loaded_tokens"),
                offloaded_blocks=_int(rs, "put_chunks") * _int(redis, "chunk_blocks"),
                written_bytes=_int(rs, "bytes_written"),
                read_bytes=_int(rs, "bytes_read"),
            )
        )
    return ReplicaTiers(tiers, _int(ts, "load_decisions"), _int(ts, "recompute_decisions"))


__all__ = ["ReplicaTiers", "TierSnapshot", "replica_tiers"]
