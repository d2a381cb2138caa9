"""The registry's request slots serve the oldest reconcile first (slots.py), and a manifest looked up to be tagged
is not fetched twice (RegistryClient.digest keep=True, then tag)."""

from __future__ import annotations

import asyncio

from test_oci import HOST, REPOSITORY, Registry, client  # tests/unit is on sys.path (no package)

from kenv import slots
from kenv.slots import OldestFirst


async def request(bound: OldestFirst, served: list[float], began: float) -> None:
    """One request through `bound` from a reconcile that began at `began`."""
    with slots.reconcile_began(began):
        async with bound:
            served.append(began)


async def test_waiters_are_served_by_when_their_reconcile_began_not_by_arrival() -> None:
    bound, served = OldestFirst(1), []

    async with bound:  # the only slot is taken: everyone below waits
        waiting = [asyncio.create_task(request(bound, served, began)) for began in (30.0, 10.0, 20.0)]
        await asyncio.sleep(0)
        assert served == []
    await asyncio.gather(*waiting)
    assert served == [10.0, 20.0, 30.0]


async def test_a_cancelled_waiter_never_keeps_a_slot() -> None:
    bound, served = OldestFirst(1), []

    async with bound:
        gone = asyncio.create_task(request(bound, served, 1.0))
        later = asyncio.create_task(request(bound, served, 2.0))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
    await later
    assert served == [2.0] and gone.cancelled()
    async with bound:  # the slot came back
        pass
    assert bound.free == 1


async def test_a_waiter_cancelled_as_its_turn_comes_passes_the_slot_on() -> None:
    bound, served = OldestFirst(1), []

    async with bound:
        first = asyncio.create_task(request(bound, served, 1.0))
        second = asyncio.create_task(request(bound, served, 2.0))
        await asyncio.sleep(0)
    first.cancel()  # its turn was handed over on leaving the block above; it has not run yet
    await asyncio.gather(first, second, return_exceptions=True)
    assert served == [2.0] and bound.free == 1


async def test_a_manifest_looked_up_to_be_tagged_is_fetched_once() -> None:
    registry = Registry(referrers_api=False)
    image = registry.image(lock=None)
    digest = image.split("@", 1)[1]
    registry.manifests["content-tag"] = registry.manifests[digest]
    made = client(registry)
    found = await made.digest(f"{HOST}/{REPOSITORY}:content-tag", keep=True)
    assert found == digest
    await made.tag(f"{HOST}/{REPOSITORY}@{found}", "team.train-v1")
    assert registry.requests == [f"GET /v2/{REPOSITORY}/manifests/content-tag",
                                 f"PUT /v2/{REPOSITORY}/manifests/team.train-v1"]
    assert registry.manifests["team.train-v1"] == registry.manifests[digest]


async def test_a_manifest_not_kept_is_fetched_before_it_is_tagged() -> None:
    registry = Registry(referrers_api=False)
    image = registry.image(lock=None)
    made = client(registry)
    await made.tag(image, "team.train-v1")
    assert registry.requests == [f"GET /v2/{REPOSITORY}/manifests/{image.split('@', 1)[1]}",
                                 f"PUT /v2/{REPOSITORY}/manifests/team.train-v1"]
