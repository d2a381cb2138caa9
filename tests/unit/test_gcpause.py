"""gcpause: collections timed by generation into the metric; long-lived objects frozen out of the collector's walks."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from kenv import gcpause
from kenv.indexfill import NotFull
from kenv.metrics import GC_PAUSE


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """The test process's objects go back into the collector's reach afterwards."""
    yield
    gc.unfreeze()


def test_timer_observes_each_collection_by_generation() -> None:
    seen: list[tuple[int, float]] = []
    ticks = iter([10.0, 10.25, 20.0, 20.5])
    timer = gcpause.PauseTimer(lambda generation, seconds: seen.append((generation, seconds)),
                               clock=lambda: next(ticks))
    timer("start", {"generation": 0})
    timer("stop", {"generation": 0, "collected": 3, "uncollectable": 0})
    timer("start", {"generation": 2})
    timer("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
    assert seen == [(0, 0.25), (2, 0.5)]


def test_time_collections_times_real_collections_into_the_metric() -> None:
    gcpause.time_collections()
    gcpause.time_collections()  # once per process: a second call adds no second timer
    assert sum(isinstance(callback, gcpause.PauseTimer) for callback in gc.callbacks) == 1
    before = sum(bucket.get() for bucket in GC_PAUSE.labels("2")._buckets)
    gc.collect(2)
    gc.collect(2)
    assert sum(bucket.get() for bucket in GC_PAUSE.labels("2")._buckets) == before + 2


def test_freeze_takes_live_objects_out_of_the_collectors_walks(unfrozen: None) -> None:
    kept = [[index] for index in range(1000)]
    frozen = gcpause.freeze_long_lived()
    assert frozen == gc.get_freeze_count() >= len(kept)
    walked = gc.get_objects()
    assert not any(item is kept[0] or item is kept for item in walked)
    made_after = [[0]]
    assert any(item is made_after for item in gc.get_objects())


def test_freeze_collects_cycles_first_rather_than_keeping_them(unfrozen: None) -> None:
    class Node:
        pass

    gc.disable()  # only freeze_long_lived may collect the cycle
    try:
        cycle = Node()
        cycle.self = cycle  # type: ignore[attr-defined]
        gone = weakref.ref(cycle)
        del cycle
        assert gone() is not None  # garbage, not yet collected
        gcpause.freeze_long_lived()
    finally:
        gc.enable()
    assert gone() is None


class FillingUp:
    """An IndexFill whose listing is indexed at the second check."""

    def __init__(self) -> None:
        self.full, self.checks = False, 0

    async def check(self, indexes: object) -> str:
        self.checks += 1
        if self.checks < 2:
            raise NotFull("1 of 1 listed objects not indexed yet")
        self.full = True
        return "full"


async def test_an_admission_replica_freezes_once_when_its_indexes_are_full(
        operator_settings: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import kopf

    from kenv import runtime
    from kenv.admission import Indexes

    frozen: list[bool] = []
    monkeypatch.setattr(runtime, "_index_fill", FillingUp())
    monkeypatch.setattr(runtime, "_indexes", Indexes({}, {}, {}))
    monkeypatch.setattr(runtime, "freeze_long_lived", lambda: frozen.append(True))
    with pytest.raises(kopf.PermanentError, match="not indexed yet"):
        await runtime.index_probe()
    assert frozen == []  # not before: what the indexes will hold is not loaded yet
    assert await runtime.index_probe() == "full" and frozen == [True]
    assert await runtime.index_probe() == "full" and frozen == [True]  # once
