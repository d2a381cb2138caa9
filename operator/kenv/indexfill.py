"""Readiness of an admission replica: kopf's indexes hold every object the API server lists.

A replica that answered before its watches had delivered every Environment would refuse valid pods ("does not
exist"), and with failurePolicy Fail those pods are lost to the user. So its readiness probe (kopf's /healthz,
the `index` probe in main.py) fails until every Environment, ClusterEnvironment and EnvironmentVersion of one
listing is in the indexes. Objects deleted after that listing never arrive: a listing older than RELIST_SECONDS
with objects still missing is replaced by a fresh one. Once full, the replica stays Ready: the watch keeps the
indexes current from then on, as it does for every replica.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from kenv import kube
from kenv.admission import Indexes
from kenv.models import GROUP, VERSION
from kenv.versionmodels import PLURAL as VERSIONS_PLURAL

RELIST_SECONDS = 5.0
# ("Environment", namespace, name) | ("ClusterEnvironment", None, name)
# | ("EnvironmentVersion", kind, namespace, name, number): what one listed object must appear as.
Key = tuple[Any, ...]


def expected_keys(environments: Iterable[dict[str, Any]], cluster_environments: Iterable[dict[str, Any]],
                  versions: Iterable[dict[str, Any]]) -> set[Key]:
    keys: set[Key] = {("Environment", e["metadata"]["namespace"], e["metadata"]["name"]) for e in environments}
    keys |= {("ClusterEnvironment", None, e["metadata"]["name"]) for e in cluster_environments}
    for version in versions:
        spec = version.get("spec") or {}
        owner = spec.get("environment") or {}
        if "version" in spec:
            keys.add(("EnvironmentVersion", owner.get("kind"), owner.get("namespace"), owner.get("name"),
                      int(spec["version"])))
    return keys


def missing(expected: set[Key], indexes: Indexes) -> list[Key]:
    """The expected objects the indexes do not hold yet."""
    absent = []
    for key in expected:
        if key[0] == "Environment":
            held = (key[1], key[2]) in indexes.environments
        elif key[0] == "ClusterEnvironment":
            held = key[2] in indexes.cluster_environments
        else:
            held = any(s.number == key[4] for s in indexes.versions.get(key[1:4], []))
        if not held:
            absent.append(key)
    return sorted(absent, key=repr)


async def listed(namespaces: list[str]) -> set[Key]:
    """Every object the operator's watches cover (all namespaces, or `namespaces`)."""
    api = await kube.custom()

    async def items(plural: str, cluster_scoped: bool = False) -> list[dict[str, Any]]:
        if cluster_scoped or not namespaces:
            found = await api.list_cluster_custom_object(GROUP, VERSION, plural)
            return list(found.get("items") or [])
        out: list[dict[str, Any]] = []
        for namespace in namespaces:
            out += (await api.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)).get("items") or []
        return out
    return expected_keys(await items("environments"), await items("clusterenvironments", cluster_scoped=True),
                         await items(VERSIONS_PLURAL))


class IndexFill:
    def __init__(self, namespaces: list[str], clock: Any = time.monotonic) -> None:
        self.namespaces, self.clock = namespaces, clock
        self.expected: set[Key] | None = None
        self.listed_at = 0.0
        self.full = False

    async def check(self, indexes: Indexes) -> str:
        """"full", or raises NotFull naming what is missing."""
        if self.full:
            return "full"
        if self.expected is None or self.clock() - self.listed_at >= RELIST_SECONDS:
            self.expected, self.listed_at = await listed(self.namespaces), self.clock()
        absent = missing(self.expected, indexes)
        if absent:
            raise NotFull(f"{len(absent)} of {len(self.expected)} listed objects not indexed yet, e.g. {absent[0]}")
        self.full = True
        return "full"


class NotFull(Exception):
    pass
