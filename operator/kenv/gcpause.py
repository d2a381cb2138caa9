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

import bisect
import gc
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import HistogramMetricFamily

log = logging.getLogger(__name__)
BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
BOUNDS = (*(repr(bound) for bound in BUCKETS), "+Inf")  # the `le` labels, as prometheus_client writes them
GENERATIONS = 3


class PauseTimer:
    """A gc.callbacks entry timing each collection, and the Prometheus collector of kenv_gc_pause_seconds.

    It counts into plain lists, not into a prometheus_client Histogram: those take a lock, and a collection can
    start in a thread that holds it (a scrape, which allocates), where the callback would wait for itself."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.started = 0.0
        self.counts = [[0] * (len(BUCKETS) + 1) for _ in range(GENERATIONS)]  # per bucket, the last one +Inf's
        self.seconds = [0.0] * GENERATIONS

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = self.clock()
        elif phase == "stop":
            took, generation = self.clock() - self.started, info["generation"]
            self.counts[generation][bisect.bisect_left(BUCKETS, took)] += 1  # the first bound ≥ took
            self.seconds[generation] += took

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "kenv_gc_pause_seconds", "Python's cyclic garbage collections: how long each held the process, by "
            "generation", labels=["generation"])
        for generation in range(GENERATIONS):
            cumulative = list(itertools.accumulate(self.counts[generation]))
            family.add_metric([str(generation)], list(zip(BOUNDS, cumulative, strict=True)),
                              self.seconds[generation])
        yield family


_timer: PauseTimer | None = None


def time_collections() -> PauseTimer:
    """Time every collection from now on, into the default registry (once per process)."""
    global _timer
    if _timer is None:
        _timer = PauseTimer()
        gc.callbacks.append(_timer)
        REGISTRY.register(_timer)
    return _timer


def freeze_long_lived() -> int:
    """Collect what is garbage now, then move every object left out of the collector's reach (see the module's
    docstring). Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("froze %d long-lived objects out of the garbage collector's walks", frozen)
    return frozen
