"""The torch engine's KV below the device (`KVTierLink`): offloading evicted blocks to the host
tier, writing computed prompts through to Redis, installing blocks loaded from a tier (held until
their request is admitted), and exporting / importing blocks. `EngineCore` (core.py) owns one and
delegates its tier and block-transfer methods to it, so the step loop stays free of tier I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from legato.cache.block_hash import salt_of
from legato.cache.kv_codec import KVFormat
from legato.cache.tier_manager import TierManager
from legato.engine_adapter.base import EngineError, KVBlock
from legato.engine_adapter.torch.block_manager import Block, BlockManager
from legato.engine_adapter.torch.checkpoint import torch_dtype
from legato.engine_adapter.torch.model_runner import KV_LAYOUT, ModelRunner
from legato.engine_adapter.torch.scheduler import ScheduledChunk
from legato.engine_adapter.torch.sequence import SeqStatus
from legato.engine_adapter.torch.sequence import Sequence as Seq


class KVTierLink:
    """Moves KV blocks between the device pool and the tiers (or another engine)."""

    def __init__(
        self,
        blocks: BlockManager,
        runner: ModelRunner,
        block_size: int,
        dtype_name: str,
        fingerprint: str,
        prefix_caching: bool,
    ) -> None:
        self.blocks = blocks
        self.runner = runner
        self.block_size = block_size
        self.dtype_name = dtype_name
        self.fingerprint = fingerprint
        self.prefix_caching = prefix_caching
        self.tiers: TierManager | None = None
        self.tier_loaded_tokens = 0
        self.offloaded_blocks = 0
        self.held: dict[str, list[int]] = {}  # imported blocks held until their request is admitted
        self._tier_written: set[str] = set()  # requests whose prompt chunks went to Redis

    @property
    def kv_format(self) -> KVFormat:
        """What this engine's KV blocks are, as tiers store and check them."""
        shape = self.runner.block_shape
        nbytes = torch.empty((), dtype=torch_dtype(self.dtype_name)).element_size()
        for d in shape:
            nbytes *= d
        return KVFormat(self.fingerprint, KV_LAYOUT, self.dtype_name, shape, nbytes)

    def attach(self, tiers: TierManager) -> None:
        """Offload evicted blocks and write prefilled prompts through `tiers` from now on."""
        if tiers.fmt != self.kv_format or tiers.block_size != self.block_size:
            raise EngineError("tier manager was built for another KV format or block size")
        self.tiers = tiers
        self.blocks.on_evict = self._on_evict

    def _kv_block(self, block_id: int, block_hash: bytes, token_ids: tuple[int, ...]) -> KVBlock:
        return KVBlock(
            block_hash=block_hash,
            token_ids=token_ids,
            layout=KV_LAYOUT,
            dtype=self.dtype_name,
            shape=self.runner.block_shape,
            data=self.runner.read_block(block_id),
        )

    def _on_evict(self, block: Block) -> None:
        """A cached block is about to be reused: copy it to the host tier if worth keeping.
        The copy is one block read; the tier write itself happens on the tier writer thread."""
        tiers = self.tiers
        if tiers is None or block.block_hash is None or not tiers.wants_host(block.next_use):
            return
        kv = self._kv_block(block.block_id, block.block_hash, block.token_ids)
        if tiers.offload(kv, block.parent_hash, block.depth, block.tenant, block.next_use):
            self.offloaded_blocks += 1

    def write_through(self, chunks: Sequence[ScheduledChunk]) -> None:
        """After a step: hand the prompts it finished computing to Redis (once per request)."""
        if self.tiers is None or self.tiers.redis is None or not self.prefix_caching:
            return
        for chunk in chunks:
            seq = chunk.seq
            if seq.num_computed_tokens >= seq.num_prompt_tokens and seq.request_id not in self._tier_written:
                self._tier_written.add(seq.request_id)
                self._write_through(seq)

    def _write_through(self, seq: Seq) -> None:
        """The prompt of `seq` is computed: hand its whole chunks not yet in Redis to the tier
        writer, so another engine process can load instead of recomputing."""
        assert self.tiers is not None
        bs = self.block_size
        full = min(seq.num_prompt_tokens // bs, len(seq.block_table))
        hashes = seq.full_block_hashes(full * bs, bs)
        todo = self.tiers.chunks_to_write(hashes)
        if not todo:
            return
        c = self.tiers.redis.chunk_blocks if self.tiers.redis is not None else 1
        blocks = [
            self._kv_block(seq.block_table[i], hashes[i], tuple(seq.token_ids[i * bs : (i + 1) * bs]))
            for chunk in todo
            for i in range(chunk * c, (chunk + 1) * c)
        ]
        self.tiers.write_chunks(blocks, todo[0] * c, salt_of(seq.extra_keys), math.inf)

    def release_held(self, live: dict[str, list[Seq]]) -> None:
        """Drop the hold on imported blocks of requests the scheduler has admitted (it took its
        own references) or that are gone (`live`: request id -> its samples)."""
        for rid in list(self.held):
            seqs = live.get(rid)
            if not seqs or seqs[0].status is not SeqStatus.WAITING:
                self.blocks.release(self.held.pop(rid))

    def forget(self, request_id: str) -> None:
        self._tier_written.discard(request_id)
        held = self.held.pop(request_id, None)
        if held:
            self.blocks.release(held)

    def preload(self, seq: Seq, blocks: Sequence[KVBlock]) -> None:
        """Install tier blocks that continue `seq`'s cached prefix. Each must be the request's
        own next block (same chained hash: same tokens, weights, tenant), else it is ignored."""
        hashes = seq.full_block_hashes(seq.num_prompt_tokens, self.block_size)
        first = len(self.blocks.lookup(hashes))
        chain: list[KVBlock] = []
        for i, kv in enumerate(blocks):
            if first + i >= len(hashes) or kv.block_hash != hashes[first + i]:
                break
            chain.append(kv)
        if not chain:
            return
        ids = self._install(chain, hashes[first - 1] if first else None, first, salt_of(seq.extra_keys))
        if ids:
            self.held[seq.request_id] = ids
            self.tier_loaded_tokens += len(ids) * self.block_size

    def export_blocks(self, block_hashes: Sequence[bytes]) -> list[KVBlock]:
        out: list[KVBlock] = []
        for h in block_hashes:
            block_id = self.blocks.cached.get(h)
            if block_id is None:
                continue
            out.append(self._kv_block(block_id, h, self.blocks.blocks[block_id].token_ids))
        return out

    def import_blocks(self, blocks: Sequence[KVBlock]) -> int:
        """Install blocks as cached (unreferenced) prefix-cache entries. Blocks are expected in
        prefix order (as `export_blocks` returns a chain); each one's parent is taken to be the
        previous block of the list when it chains, so eviction stays suffix-first."""
        ids = self._install(blocks, None, 0)
        self.blocks.release(ids)
        return len(ids)

    def _install(
        self, blocks: Sequence[KVBlock], parent: bytes | None, depth: int, tenant: str = ""
    ) -> list[int]:
        """Write blocks into fresh device blocks and register them; returns the new block ids,
        each holding one reference (the caller releases or keeps them). Blocks already cached
        are skipped; stops when the pool is full."""
        for kv in blocks:
            if (
                kv.layout != KV_LAYOUT
                or kv.dtype != self.dtype_name
                or tuple(kv.shape) != self.runner.block_shape
            ):
                raise EngineError(
                    f"KV block layout mismatch: got layout={kv.layout!r} dtype={kv.dtype!r} "
                    f"shape={kv.shape}, "
                    f"this engine uses layout={KV_LAYOUT!r} dtype={self.dtype_name!r} "
                    f"shape={self.runner.block_shape}"
                )
            if len(kv.token_ids) != self.block_size:
                raise EngineError(f"KV block has {len(kv.token_ids)} token ids, expected {self.block_size}")
        ids: list[int] = []
        prev = parent
        for i, kv in enumerate(blocks):
            if kv.block_hash in self.blocks.cached:
                prev = kv.block_hash
                continue
            new = self.blocks.allocate(1)
            if new is None:
                break
            self.runner.write_block(new[0], kv.data)
            self.blocks.register(new[0], kv.block_hash, prev, depth + i, kv.token_ids, tenant)
            ids.append(new[0])
            prev = kv.block_hash
        return ids
