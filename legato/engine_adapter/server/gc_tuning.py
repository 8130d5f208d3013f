"""Garbage-collector settings for a long-lived serving process (`legato serve`, the load client).

After start-up the heap holds a few hundred thousand objects that live for the whole process
(imported modules, pydantic schemas, the app's routes; torch alone brings ~200k). CPython's
full collection walks all of them, and it runs whenever the objects promoted since the last one
reach a quarter of the heap; serving promotes request-scoped objects steadily (a run lives for
seconds, thousands of young collections). Measured under `legato bench load`, a full pass took
~0.2 s of CPU with the event loop stopped, and GC as a whole a fifth of the server's CPU.

`settle_heap` is called once the process is ready to serve: `gc.freeze()` moves every object
alive then into the permanent generation, which no collection walks again, so a full pass only
walks what serving allocated. And the young generation is made larger (`YOUNG_OBJECTS`), so
objects that live for one request or one token event mostly die by reference counting before a
collection sees them, instead of being walked and promoted.
"""

from __future__ import annotations

import gc

YOUNG_OBJECTS = 10_000
"""Container objects allocated between young-generation collections (CPython's default: 700).
Its cost is memory, not time: at most this many young objects of garbage in reference cycles
wait for their collection, a few MB at CPython's 100-500 bytes per container object, under 1% of
a serving process's resident size (~300 MB for `legato serve`). A young collection walks only the
young objects, so its CPU per allocated object does not grow with this bound."""


def settle_heap() -> None:
    """Collect the start-up garbage, freeze what is left, and enlarge the young generation."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_OBJECTS, older, oldest)
