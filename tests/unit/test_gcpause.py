"""gcpause: collections timed by generation into the metric; long-lived objects frozen out of the collector's walks."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from kenv import gcpause
from kenv.indexfill import NotFull


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """The test process's objects go back into the collector's reach afterwards."""
    yield
    gc.unfreeze()


def samples(timer: gcpause.PauseTimer) -> dict[tuple[str, str, str], float]:
    """{(sample name, generation, le): value} of what the collector exposes."""
    return {(sample.name, sample.labels["generation"], sample.labels.get("le", "")): sample.value
            for family in timer.collect() for sample in family.samples}


def test_each_collection_is_counted_in_its_generations_bucket() -> None:
    ticks = iter([0.0, 0.0001, 20.0, 20.5, 30.0, 30.0004])  # 0.0001 - 0.0 is exactly the first bound
    timer = gcpause.PauseTimer(clock=lambda: next(ticks))
    for generation in (0, 2, 0):
        timer("start", {"generation": generation})
        timer("stop", {"generation": generation, "collected": 3, "uncollectable": 0})
    exposed = samples(timer)
    assert exposed[("kenv_gc_pause_seconds_bucket", "0", "0.0001")] == 1  # a bound holds its own value (le)
    assert exposed[("kenv_gc_pause_seconds_bucket", "0", "0.0005")] == 2  # cumulative, as Prometheus reads them
    assert exposed[("kenv_gc_pause_seconds_count", "0", "")] == 2
    assert exposed[("kenv_gc_pause_seconds_sum", "0", "")] == pytest.approx(0.0005)
    assert exposed[("kenv_gc_pause_seconds_bucket", "2", "0.25")] == 0  # 0.5 s: above every bound but +Inf
    assert exposed[("kenv_gc_pause_seconds_bucket", "2", "+Inf")] == 1
    assert exposed[("kenv_gc_pause_seconds_count", "1", "")] == 0


def test_time_collections_times_real_collections_into_the_default_registry() -> None:
    timer = gcpause.time_collections()
    assert gcpause.time_collections() is timer  # once per process: a second call adds no second timer
    assert sum(isinstance(callback, gcpause.PauseTimer) for callback in gc.callbacks) == 1
    before = REGISTRY.get_sample_value("kenv_gc_pause_seconds_count", {"generation": "2"}) or 0
    gc.collect(2)
    gc.collect(2)
    after = REGISTRY.get_sample_value("kenv_gc_pause_seconds_count", {"generation": "2"})
    assert after is not None and after >= before + 2  # a collection of its own may come between


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
