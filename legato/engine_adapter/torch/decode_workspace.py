"""Dense per-sequence KV rows for decode attention.

Gathering every decoding sequence's whole context out of the paged cache at every step copies the
entire KV once per step (and Hugging Face's growing cache does the same with `torch.cat`). The
workspace avoids it: each decoding sequence owns a row of a dense
`[layers, 2 (k, v), rows, kv_heads, capacity, head_dim]` tensor, filled once from the paged cache
when the sequence starts decoding and then extended by one position per step (the attention layer
writes the new keys/values into both). Within a row the keys are stored transposed, so the scores
of consecutive positions are contiguous vector lanes: `[kv_heads, head_dim, capacity]` for the
torch ops (`key_tile` 0), or in tiles of `key_tile` positions, `[kv_heads, capacity / key_tile,
head_dim, key_tile]`, for the decode-attention kernel (`cpu_kernels.py`), which then reads each
head's keys as one sequential stream. The `keys` / `values` views give the interpretations.
Rows are recycled lowest-first as sequences come and go, so membership changes cost one row
fill, not a rebuild. The paged cache stays the source of
truth (prefix caching, export); the workspace is a cache of it for the current decode batch.

A speculative verify chunk (the last token plus `g` drafted ones, `speculator.py`) rides here
too, with the C kernels: its `g + 1` tokens share the sequence's row at consecutive positions,
each attending to the positions up to its own (the kernel writes a token's key and value before
it attends, in order, so that is exactly the causal mask). Rejected drafts roll back for free: a
row is valid up to the sequence's computed tokens, which count verified positions only, so the
next step starts writing at the first rejected position. A row belongs to one admission of a
sequence (its arrival and preemption count): after a preemption the sequence gets a fresh row.

Past `max_bytes` (very long contexts or batches) the runner falls back to per-step gathering.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from legato.engine_adapter.torch.scheduler import ScheduledChunk


@dataclass(slots=True)
class WorkspacePlan:
    """How this step's decodes map onto workspace rows."""

    tensor: Tensor  # [layers, 2, rows, kv_heads, capacity, head_dim] (one allocation)
    # keys, transposed: [layers, rows, kv_heads, head_dim, capacity] view when key_tile is 0, else
    # [layers, rows, kv_heads, capacity / key_tile, head_dim, key_tile]
    keys: Tensor
    key_tile: int
    values: Tensor  # [layers, rows, kv_heads, capacity, head_dim] view
    rows: Tensor  # [num_decode] long: row of each decode token (a verify chunk's tokens share one)
    positions: Tensor  # [num_decode] long: position of each decode token (its new KV goes there)
    lens: Tensor  # [num_decode] long: positions + 1, the keys each decode token attends to
    num_rows: int  # attention runs over rows [0, num_rows); rows not in `rows` are idle
    identity: bool  # rows == 0..num_decode-1 and num_rows == num_decode (no scatter needed)
    # [num_rows, 1, 1, length] bool for the torch ops; None when every row has `length` keys, or
    # with a key_tile (the C kernel, which reads `lens`)
    mask: Tensor | None
    length: int


class DecodeWorkspace:
    def __init__(self, kv_cache: Tensor, block_size: int, max_bytes: int) -> None:
        self.kv_cache = kv_cache  # [layers, slots, kv_heads, 2 * head_dim]
        self.block_size = block_size
        self.max_bytes = max_bytes
        self.tensor: Tensor | None = None
        self.key_tile = 0
        self._row_of: dict[tuple[int, int], int] = {}  # (arrival, preemptions) -> row
        self._row_len: list[int] = []  # valid positions per row
        self._free: list[int] = []  # heap of free rows
        self.row_fills = 0
        self.grows = 0

    def _reset(self, key_tile: int = 0) -> None:
        self.key_tile = key_tile
        self.tensor = None
        self._row_of.clear()
        self._row_len = []
        self._free = []

    def _nbytes(self, rows: int, capacity: int) -> int:
        layers, _, kvh, width = self.kv_cache.shape
        return layers * 2 * rows * kvh * capacity * (width // 2) * self.kv_cache.element_size()

    def _ensure(self, rows: int, capacity: int, final_capacity: int = 0) -> bool:
        """Make room for `rows` rows of `capacity` positions. `final_capacity` is the longest the
        current sequences can get (prompt + max_tokens): when it fits (and is not far beyond
        `capacity`), the rows are sized for it at once, so the tensor is not reallocated (and its
        fresh pages touched again, which costs far more than the copy) as the batch decodes."""
        layers, _, kvh, width = self.kv_cache.shape
        old = self.tensor
        old_rows = 0 if old is None else old.shape[2]
        old_cap = 0 if old is None else old.shape[4]
        if rows <= old_rows and capacity <= old_cap:
            return True
        new_rows = max(old_rows, rows, 8)
        if rows > old_rows:
            new_rows = max(new_rows, 2 * old_rows)
        new_cap = max(old_cap, capacity)
        unit = math.lcm(self.block_size, self.key_tile or 1)  # capacity is whole blocks and tiles
        if capacity > old_cap:  # headroom so growth is rare
            new_cap = -(-(capacity + capacity // 2 + self.block_size) // unit) * unit
            final = min(final_capacity, 4 * capacity + 4 * self.block_size)
            final = -(-final // unit) * unit
            if final > new_cap and self._nbytes(new_rows, final) <= self.max_bytes:
                new_cap = final
            if self._nbytes(new_rows, new_cap) > self.max_bytes:  # as much headroom as fits
                fits = self.max_bytes // self._nbytes(new_rows, unit) * unit
                new_cap = max(old_cap, -(-capacity // unit) * unit, fits)
        if self._nbytes(new_rows, new_cap) > self.max_bytes:
            self._reset(self.key_tile)
            return False
        self.grows += 1
        t = torch.zeros(
            layers,
            2,
            new_rows,
            kvh,
            new_cap,
            width // 2,
            dtype=self.kv_cache.dtype,
            device=self.kv_cache.device,
        )
        if old is not None:
            if self.key_tile:
                _keys(t, self.key_tile)[:, :old_rows, :, : old_cap // self.key_tile] = _keys(
                    old, self.key_tile
                )
            else:
                _keys(t, 0)[:, :old_rows, :, :, :old_cap] = _keys(old, 0)
            t[:, 1, :old_rows, :, :old_cap] = old[:, 1]
        self.tensor = t
        self._row_len.extend([0] * (new_rows - old_rows))
        for r in range(old_rows, new_rows):
            heapq.heappush(self._free, r)
        return True

    def _fill(self, row: int, chunk: ScheduledChunk, past: int, held: int = 0) -> None:
        """Copy a sequence's positions `[held, past)` from the paged cache into its row (the row
        already holds `[0, held)`: a sequence back from steps on the multi-token path, such as
        verifying a speculative draft, only needs what those steps added)."""
        assert self.tensor is not None
        self.row_fills += 1
        bs = self.block_size
        tile = self.key_tile
        start = (held // tile) * tile if tile else held  # the key layout is written whole tiles
        table = torch.tensor(
            chunk.seq.block_table[: -(-past // bs)], dtype=torch.long, device=self.kv_cache.device
        )
        offsets = torch.arange(bs, device=self.kv_cache.device)
        slots = (table.unsqueeze(1) * bs + offsets).view(-1)[start:past]
        n = past - start
        layers, _, kvh, width = self.kv_cache.shape
        got = self.kv_cache.index_select(1, slots).view(layers, n, kvh, 2, width // 2)
        keys = got[:, :, :, 0]  # [layers, n, kvh, dim]
        if tile:
            tiles = -(-n // tile)  # the last tile is padded; positions past `past` are never read
            padded = F.pad(keys, (0, 0, 0, 0, 0, tiles * tile - n))
            tiled = padded.view(layers, tiles, tile, kvh, width // 2).permute(0, 3, 1, 4, 2)
            first = start // tile
            _keys(self.tensor, tile)[:, row, :, first : first + tiles] = tiled
        else:
            _keys(self.tensor, 0)[:, row, :, :, start:past] = keys.permute(0, 2, 3, 1)
        self.tensor[:, 1, row, :, start:past] = got[:, :, :, 1].permute(0, 2, 1, 3)

    def prepare(
        self, decodes: list[ScheduledChunk], starts: list[int], key_tile: int = 0
    ) -> WorkspacePlan | None:
        """Rows for this step's decode chunks (`starts`: each chunk's first position, the tokens
        already cached for that sequence; a chunk has `num_tokens` consecutive positions from
        there), keys laid out for `key_tile` (0: the torch ops' layout, single-token chunks only;
        see the module docstring). The plan has one entry per token."""
        if key_tile != self.key_tile:  # the other attention path ran last: rebuild its rows
            self._reset(key_tile)
        counts = [c.num_tokens for c in decodes]
        assert key_tile or all(n == 1 for n in counts), "multi-token rows need the C kernel"
        keys = [(c.seq.arrival, c.seq.num_preemptions) for c in decodes]
        live = set(keys)
        for key in [k for k in self._row_of if k not in live]:
            row = self._row_of.pop(key)
            self._row_len[row] = 0
            heapq.heappush(self._free, row)
        needed_rows = len(self._row_of) + sum(1 for k in keys if k not in self._row_of)
        ends = [p + n for p, n in zip(starts, counts, strict=True)]
        if not self._ensure(needed_rows, max(ends), _final_capacity(decodes)):
            return None
        rows: list[int] = []  # per token
        positions: list[int] = []
        chunk_rows: list[int] = []
        for key, chunk, p, end in zip(keys, decodes, starts, ends, strict=True):
            if key in self._row_of:
                row = self._row_of[key]
            else:
                row = heapq.heappop(self._free)
                self._row_of[key] = row
            # past p the row holds a rejected draft's keys (if anything): overwritten from p on
            held = min(self._row_len[row], p)
            if held < p:
                self._fill(row, chunk, p, held)
            self._row_len[row] = end  # after this step the chunk's KV is in the row
            rows.extend([row] * (end - p))
            positions.extend(range(p, end))
            chunk_rows.append(row)
        num_rows = max(rows) + 1
        device = self.kv_cache.device
        identity = num_rows == len(rows) and rows == list(range(num_rows))
        length = max(ends)
        mask = None  # the C kernel (key_tile) takes `lens` and needs no mask
        if not self.key_tile:
            lens = [1] * num_rows  # idle rows attend to one (finite, ignored) position
            for row, end in zip(chunk_rows, ends, strict=True):
                lens[row] = end
            if not identity or min(lens) != length:
                ar = torch.arange(length, device=device)
                mask = (ar.unsqueeze(0) < torch.tensor(lens, device=device).unsqueeze(1)).view(
                    num_rows, 1, 1, length
                )
        assert self.tensor is not None
        pos_t = torch.tensor(positions, dtype=torch.long, device=device)
        return WorkspacePlan(
            tensor=self.tensor,
            keys=_keys(self.tensor, self.key_tile),
            key_tile=self.key_tile,
            values=self.tensor[:, 1],
            rows=torch.tensor(rows, dtype=torch.long, device=device),
            positions=pos_t,
            lens=pos_t + 1,
            num_rows=num_rows,
            identity=identity,
            mask=mask,
            length=length,
        )


def _keys(tensor: Tensor, key_tile: int) -> Tensor:
    """The key half of a workspace tensor: `[layers, rows, kv_heads, head_dim, capacity]`, or with
    a `key_tile`, `[layers, rows, kv_heads, capacity / key_tile, head_dim, key_tile]`."""
    layers, _, rows, kvh, capacity, dim = tensor.shape
    if key_tile:
        return tensor[:, 0].view(layers, rows, kvh, capacity // key_tile, dim, key_tile)
    return tensor[:, 0].view(layers, rows, kvh, dim, capacity)


def _final_capacity(chunks: list[ScheduledChunk]) -> int:
    """Longest any of these sequences can become: prompt + max_tokens."""
    return max((c.seq.num_prompt_tokens + c.seq.sampling.max_tokens for c in chunks), default=0)
