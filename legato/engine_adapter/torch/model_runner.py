"""Runs one scheduled step through the model over the paged KV cache.

The KV cache is one tensor `[layers, num_blocks * block_size, kv_heads, 2 * head_dim]` (keys and
values side by side per slot), allocated once. A step's tokens are flattened into one batch with
single-token chunks (decodes) first, so attention for all of them is one SDPA call per layer;
multi-token prefill chunks each get their own SDPA call, masked causally against their cached
prefix.

Decode attention reads a dense per-sequence copy of the KV (`decode_workspace.py`) instead of
gathering every context out of the paged cache at every step; on the CPU in float32 the model runs
it, and the other small per-layer ops, as fused C kernels (`cpu_kernels.py`).

With those kernels a speculative verify chunk (the last token plus its draft, `speculator.py`)
counts as a decode: its tokens are decode tokens that share their sequence's workspace row, so a
step verifying every sequence's draft is one packed forward (`packed_decode.py`) like a plain
decode step, not a prefill-style attention call per sequence over a context gathered from the
paged cache. Without the kernels it is a prefill chunk.
"""

from __future__ import annotations

import torch
from torch import Tensor

from legato.engine_adapter.torch.decode_workspace import DecodeWorkspace, WorkspacePlan
from legato.engine_adapter.torch.model import AttentionContext, LlamaForCausalLM, PrefillSlice
from legato.engine_adapter.torch.scheduler import ScheduledChunk

KV_LAYOUT = "layers,block_tokens,kv_heads,k_then_v_head_dim"
WORKSPACE_MAX_BYTES = 512 * 2**20  # above this the decode path gathers from the paged cache per step


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, num_blocks: int, block_size: int, dtype: torch.dtype) -> None:
        cfg = model.config
        self.model = model
        self.block_size = block_size
        self.device = model.lm_head.weight.device
        self.dtype = dtype
        self.kv_cache = torch.zeros(
            cfg.num_hidden_layers,
            num_blocks * block_size,
            cfg.num_key_value_heads,
            2 * cfg.head_dim,
            dtype=dtype,
            device=self.device,
        )
        self._offsets = torch.arange(block_size, device=self.device)
        self.workspace = DecodeWorkspace(self.kv_cache, block_size, WORKSPACE_MAX_BYTES)

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Shape of one exported block (`KV_LAYOUT`)."""
        s = self.kv_cache.shape
        return (s[0], self.block_size, s[2], s[3])

    @torch.inference_mode()
    def run(self, chunks: list[ScheduledChunk]) -> tuple[list[ScheduledChunk], Tensor | None]:
        """Forward the step. Returns the chunks that sample a token and their logits `[n, vocab]`
        in the same order (None when no chunk samples, e.g. mid-prompt prefill chunks only)."""
        bs = self.block_size
        # the C decode-attention kernel reads keys in tiles of 16 positions (decode_workspace.py)
        key_tile = 16 if self.model.kernels_for(self.device, self.dtype) is not None else 0
        decodes = [c for c in chunks if _rides_decode(c, key_tile)]
        prefills = [c for c in chunks if not _rides_decode(c, key_tile)]
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts: list[int] = []
        for c in decodes:
            seq = c.seq
            p0 = seq.num_computed_tokens
            starts.append(p0)
            for p in range(p0, p0 + c.num_tokens):
                ids.append(seq.token_ids[p])
                positions.append(p)
                slots.append(seq.block_table[p // bs] * bs + p % bs)
        decode_slots: Tensor | None = None
        decode_mask: Tensor | None = None
        plan: WorkspacePlan | None = None
        nd = len(positions)
        decode_len = 0
        if nd:
            plan = self.workspace.prepare(decodes, starts, key_tile)
            if plan is None:  # too big for the workspace: gather from the paged cache
                # Keys run up to the longest context; the mask hides shorter ones' padding (and a
                # verify token's later drafts: each token sees the positions up to its own).
                lens = [p + 1 for p in positions]
                decode_len = max(lens)
                if min(lens) != decode_len:
                    ctx_lens = torch.tensor(lens, device=self.device)
                    keys = torch.arange(decode_len, device=self.device)
                    decode_mask = (keys.unsqueeze(0) < ctx_lens.unsqueeze(1)).view(nd, 1, 1, decode_len)
                max_blocks = -(-decode_len // bs)
                table = [
                    c.seq.block_table[:max_blocks] + [0] * (max_blocks - len(c.seq.block_table))
                    for c in decodes
                    for _ in range(c.num_tokens)
                ]
                table_t = torch.tensor(table, dtype=torch.long, device=self.device)
                decode_slots = (
                    (table_t.unsqueeze(2) * bs + self._offsets).view(nd, -1)[:, :decode_len].reshape(-1)
                )
        slices: list[PrefillSlice] = []
        slot_parts: list[Tensor] = [torch.tensor(slots, dtype=torch.long, device=self.device)]
        pos_parts: list[Tensor] = [torch.tensor(positions, dtype=torch.long, device=self.device)]
        start = nd
        for c in prefills:
            seq = c.seq
            p0, n = seq.num_computed_tokens, c.num_tokens
            ids.extend(seq.token_ids[p0 : p0 + n])
            pos = torch.arange(p0, p0 + n, device=self.device)
            table_t = torch.tensor(seq.block_table, dtype=torch.long, device=self.device)
            slot_parts.append(table_t[pos // bs] * bs + pos % bs)
            pos_parts.append(pos)
            ctx_len = p0 + n
            mask = context_slots = None
            if p0 > 0:
                mask = torch.arange(ctx_len, device=self.device).unsqueeze(0) <= pos.unsqueeze(1)
                context_slots = (table_t.unsqueeze(1) * bs + self._offsets).view(-1)[:ctx_len]
            slices.append(PrefillSlice(start, n, ctx_len, context_slots, mask))
            start += n
        ctx = AttentionContext(
            slot_mapping=_cat(slot_parts),
            num_decode=nd,
            decode_slots=decode_slots,
            decode_len=decode_len,
            decode_mask=decode_mask,
            decode_workspace=plan,
            prefills=slices,
        )
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        hidden = self.model(input_ids, _cat(pos_parts), ctx, self.kv_cache)
        rows: list[int] = []
        sampled: list[ScheduledChunk] = []
        offset = 0
        for c in [*decodes, *prefills]:
            offset += c.num_tokens
            if c.samples:  # a chunk ending in a draft (speculator.py) samples at every draft position
                rows.extend(range(offset - 1 - c.seq.num_draft, offset))
                sampled.append(c)
        if not rows:
            return sampled, None
        if len(rows) == offset:  # every token samples (all decodes): no gather
            return sampled, self.model.logits(hidden)
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        return sampled, self.model.logits(hidden.index_select(0, index))

    # --- KV transfer ----------------------------------------------------------------------

    def _block(self, block_id: int) -> Tensor:
        return self.kv_cache[:, block_id * self.block_size : (block_id + 1) * self.block_size]

    def copy_block(self, src: int, dst: int) -> None:
        """Copy one block's KV (copy-on-write of a block shared by forked samples)."""
        self._block(dst).copy_(self._block(src))

    def read_block(self, block_id: int) -> bytes:
        data = self._block(block_id).contiguous().cpu()
        return data.view(torch.uint8).numpy().tobytes()

    def write_block(self, block_id: int, data: bytes | memoryview) -> None:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        block = raw.view(self.dtype).view(self.block_shape)
        self._block(block_id).copy_(block.to(self.device))


def _rides_decode(chunk: ScheduledChunk, key_tile: int) -> bool:
    """Whether a chunk runs as decode tokens: a single token, or (with the C kernels, `key_tile`
    set) a speculative verify chunk, the last token plus the whole draft."""
    n = chunk.num_tokens
    return n == 1 or (key_tile > 0 and chunk.seq.num_draft > 0 and n == 1 + chunk.seq.num_draft)


def _cat(parts: list[Tensor]) -> Tensor:
    """`torch.cat`, without its copy in the common decode-only step (a single part)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)
