"""VersionStore.record against an in-memory EnvironmentVersion API: numbers come from kopf's index, which may lag
the API by a watch event; the API's deterministic names catch the lag, and only then is the namespace listed."""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from kenv import kube, versionstore
from kenv.config import OperatorSettings
from kenv.refs import EnvironmentRef
from kenv.registry import RegistryError
from kenv.versions import Snapshot
from kenv.versionstore import NewVersion, VersionStore

SETTINGS = OperatorSettings(destination_repo="registry.local:5000/kenv/envs")
REF = EnvironmentRef(kind="Environment", namespace="team", name="train")
UID = "uid-train"
IMAGE_A = "registry.local:5000/kenv/envs@sha256:" + "a" * 64
IMAGE_B = "registry.local:5000/kenv/envs@sha256:" + "b" * 64


class VersionApi:
    """The calls VersionStore makes on CustomObjectsApi, with the API server's name uniqueness (409)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: defaultdict[str, int] = defaultdict(int)

    async def list_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                            label_selector: str) -> dict[str, Any]:
        self.calls["list"] += 1
        key, value = label_selector.split("=", 1)
        return {"items": [copy.deepcopy(o) for (ns, _), o in self.objects.items()
                          if ns == namespace and o["metadata"]["labels"].get(key) == value]}

    async def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                              body: dict[str, Any]) -> dict[str, Any]:
        self.calls["create"] += 1
        key = (namespace, body["metadata"]["name"])
        if key in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        self.objects[key] = copy.deepcopy(body)
        return copy.deepcopy(body)

    async def delete_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                              name: str) -> None:
        self.calls["delete"] += 1
        if self.objects.pop((namespace, name), None) is None:
            raise ApiException(status=404, reason="NotFound")

    async def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                           name: str) -> dict[str, Any]:
        self.calls["get"] += 1
        if (namespace, name) not in self.objects:
            raise ApiException(status=404, reason="NotFound")
        return copy.deepcopy(self.objects[(namespace, name)])


class Registry:
    """Tags and the images they point to; `down` refuses every tag, as a registry that is unreachable."""

    def __init__(self, api: VersionApi | None = None) -> None:
        self.tags: dict[str, str] = {}
        self.down = False
        self.api = api
        self.objects_when_tagged: list[set[str]] = []

    async def tag(self, image: str, tag: str, credentials: Any) -> None:
        if self.down:
            raise RegistryError("RegistryUnavailable", "connection refused")
        if self.api is not None:
            self.objects_when_tagged.append({name for _, name in self.api.objects})
        self.tags[tag] = image


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> VersionApi:
    fake = VersionApi()

    async def custom() -> VersionApi:
        return fake

    monkeypatch.setattr(kube, "custom", custom)
    return fake


def new_version(image: str, runtime: str = "r1") -> NewVersion:
    return NewVersion(ref=REF, uid=UID, definition={"python": {"userManagedDependencies": True}}, image=image,
                      content_hash="h", runtime_hash=runtime, reason="ImageFound", generation=1)


def existing(api: VersionApi, number: int, image: str, runtime: str = "r1", uid: str = UID,
             tag: str | None = None) -> Snapshot:
    """A version object in the API, as an earlier reconcile made it; returns its snapshot (what the index holds)."""
    body = versionstore.version_body(NewVersion(ref=REF, uid=uid, definition=None, image=image, content_hash="h",
                                                runtime_hash=runtime, reason="ImageFound", generation=1),
                                     number, [], tag, "team")
    api.objects[("team", body["metadata"]["name"])] = body
    return Snapshot.from_object(body)


async def test_numbers_come_from_the_index_without_listing_the_namespace(api: VersionApi) -> None:
    index = {("Environment", "team", "train"): [existing(api, 1, IMAGE_A)]}
    store = VersionStore(SETTINGS, Registry(), index)  # type: ignore[arg-type]
    made = await store.record(new_version(IMAGE_B), {"version": 1}, None)
    assert made.number == 2 and made.image == IMAGE_B
    # the number is free: its create is the claim, with no read before it
    assert api.calls["list"] == 0 and api.calls["create"] == 1 and api.calls["get"] == 0


async def test_a_lagging_index_costs_one_list_and_never_a_reused_number(api: VersionApi) -> None:
    existing(api, 1, IMAGE_A)  # in the API, not yet in the index; the status does not name it either
    registry = Registry()
    store = VersionStore(SETTINGS, registry, {})  # type: ignore[arg-type]
    made = await store.record(new_version(IMAGE_B), {}, None)
    assert made.number == 2 and made.image == IMAGE_B
    assert api.calls["list"] == 1
    assert {o["spec"]["version"]: o["spec"]["image"] for o in api.objects.values()} == {1: IMAGE_A, 2: IMAGE_B}
    # version 1's tag was never moved onto the new image: it still keeps version 1's image from garbage collection
    assert registry.tags == {"team.train-v2": IMAGE_B}


async def test_a_current_version_the_index_has_not_seen_yet_is_listed_and_described_against(api: VersionApi) -> None:
    first = existing(api, 1, IMAGE_A)
    existing(api, 2, IMAGE_A, runtime="r2")  # the status names it; the watch has not delivered it
    store = VersionStore(SETTINGS, Registry(), {("Environment", "team", "train"): [first]})  # type: ignore[arg-type]
    made = await store.record(new_version(IMAGE_B), {"version": 2}, None)
    assert made.number == 3 and api.calls["list"] == 1
    # described against version 2, the current one (these stand-ins were recorded without a definition)
    assert made.changes == ["definition recorded from here on; previous version 2 was migrated"]


async def test_a_version_a_crashed_reconcile_made_is_adopted_even_before_the_index_has_it(api: VersionApi) -> None:
    existing(api, 2, IMAGE_B)  # made just before a crash: the status still says version 1
    store = VersionStore(SETTINGS, Registry(), {("Environment", "team", "train"): [existing(api, 1, IMAGE_A)]})  # type: ignore[arg-type]
    made = await store.record(new_version(IMAGE_B), {"version": 1}, None)
    assert made.number == 2 and api.calls["list"] == 0
    assert len(api.objects) == 2


async def test_versions_of_an_earlier_environment_of_the_same_name_are_not_counted(api: VersionApi) -> None:
    index = {("Environment", "team", "train"): [existing(api, 4, IMAGE_A, uid="uid-deleted")]}
    store = VersionStore(SETTINGS, Registry(), index)  # type: ignore[arg-type]
    made = await store.record(new_version(IMAGE_B), {}, None)
    assert made.number == 1
    assert made.name != "train-v4" and api.objects[("team", made.name)]["spec"]["environment"]["uid"] == UID


async def test_without_an_index_the_namespace_is_listed(api: VersionApi) -> None:
    existing(api, 1, IMAGE_A)
    store = VersionStore(SETTINGS, Registry())  # type: ignore[arg-type]
    made = await store.record(new_version(IMAGE_B), {"version": 1}, None)
    assert made.number == 2 and api.calls["list"] == 1


async def test_a_version_object_is_made_before_its_tag_moves(api: VersionApi) -> None:
    registry = Registry(api)
    store = VersionStore(SETTINGS, registry, {})  # type: ignore[arg-type]
    made = await store.record(new_version(IMAGE_A), {}, None)
    assert registry.objects_when_tagged == [{made.name}] and registry.tags == {"team.train-v1": IMAGE_A}


async def test_a_version_whose_tag_the_registry_refused_is_not_left_behind(api: VersionApi) -> None:
    registry = Registry(api)
    registry.down = True
    store = VersionStore(SETTINGS, registry, {})  # type: ignore[arg-type]
    with pytest.raises(RegistryError):
        await store.record(new_version(IMAGE_A), {}, None)
    assert registry.tags == {} and api.objects == {}  # no version whose image no tag keeps
    registry.down = False
    again = await store.record(new_version(IMAGE_A), {}, None)
    assert again.number == 1 and registry.tags == {"team.train-v1": IMAGE_A}


async def test_a_version_a_crash_left_untagged_is_adopted_and_tagged(api: VersionApi) -> None:
    first = existing(api, 1, IMAGE_A)
    orphan = existing(api, 2, IMAGE_B, tag="registry.local:5000/kenv/envs:team.train-v2")  # created, then a crash
    registry = Registry(api)
    store = VersionStore(SETTINGS, registry, {("Environment", "team", "train"): [first, orphan]})  # type: ignore[arg-type]
    made = await store.record(new_version(IMAGE_B), {"version": 1}, None)
    assert made.number == 2 and api.calls["create"] == 0 and registry.tags == {"team.train-v2": IMAGE_B}
