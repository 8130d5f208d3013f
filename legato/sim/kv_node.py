"""A node of the simulated KV pool's radix tree: one prompt segment along a path and its block
counts per tier. Its own module so that the pool (`kv_pool.py`) and the tiers below it
(`tiers.py`) both use it without importing each other.
"""

from __future__ import annotations


class Node:
    __slots__ = (
        "cached",
        "cached_children",
        "children",
        "depth",
        "end",
        "h",
        "last_access",
        "nblocks",
        "owner",
        "parent",
        "rd",
        "refs",
        "shared",
        "start",
        "version",
    )

    def __init__(self, parent: Node | None, start: int, end: int, block_size: int) -> None:
        self.parent = parent
        self.children: dict[int, Node] = {}
        self.start = start
        self.end = end
        self.nblocks = end // block_size - start // block_size
        self.cached = 0
        self.h = 0  # blocks after the device ones held by the host tier (see sim/tiers.py)
        self.rd = 0  # blocks after those held by the Redis tier
        self.refs = 0
        self.cached_children = 0
        self.last_access = 0.0
        self.owner = -1  # run index of the last run that used it
        self.shared = False  # used by more than one run
        self.version = 0
        self.depth: int = 0 if parent is None else parent.depth + 1
