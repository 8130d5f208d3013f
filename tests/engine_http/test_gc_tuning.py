"""`settle_heap`: what is alive at start-up is frozen (no collection walks it again) and the
young generation is enlarged, while garbage in reference cycles is still collected."""

from __future__ import annotations

import gc
import weakref

from legato.engine_adapter.server.gc_tuning import YOUNG_OBJECTS, settle_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_settle_heap_freezes_startup_objects_and_still_collects_cycles() -> None:
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_OBJECTS, *before[1:])
        a, b = _Node(), _Node()
        a.other, b.other = b, a  # a cycle: only the collector frees it
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
