"""Python's cyclic garbage collector, timed and kept off the admission path's tail.

Why: a full (generation 2) collection walks every container object the process holds; with kopf, aiohttp,
pydantic and the kubernetes client loaded that is over 100,000 objects and ~50 ms of one core, during which the
event loop answers nothing. It comes every few tens of thousands of surviving allocations, so admissions meet it
now and then: a tail at p99, not a cost at p50. What is loaded at start-up and in the filled indexes lives as long
as the process, so an admission replica freezes it (gc.freeze) once its indexes are full: the collector no longer
walks it, and a full collection then costs what the objects made since cost. Refcounting still frees frozen
objects that stop being used; only a reference cycle among them would now be kept until the process ends.

`time_collections()` times every collection into kenv_gc_pause_seconds{generation}, so a tail can be laid at the
collector's door, or not, from the metrics (bench/webhook.py reads them across its run).
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from kenv.metrics import GC_PAUSE

log = logging.getLogger(__name__)


class PauseTimer:
    """A gc.callbacks entry: observes each collection's duration, by generation, into `observe`."""

    def __init__(self, observe: Any = None, clock: Any = time.perf_counter) -> None:
        self.observe = observe or (lambda generation, seconds: GC_PAUSE.labels(str(generation)).observe(seconds))
        self.clock = clock
        self.started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = self.clock()
        elif phase == "stop":
            self.observe(info["generation"], self.clock() - self.started)


_timer: PauseTimer | None = None


def time_collections() -> None:
    """Time every collection from now on (once per process)."""
    global _timer
    if _timer is None:
        _timer = PauseTimer()
        gc.callbacks.append(_timer)


def freeze_long_lived() -> int:
    """Collect what is garbage now, then move every object left out of the collector's reach (see the module's
    docstring). Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("froze %d long-lived objects out of the garbage collector's walks", frozen)
    return frozen
