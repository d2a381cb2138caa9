"""`kenv versions` and `kenv diff`: an environment's EnvironmentVersion snapshots, read from the cluster."""

from __future__ import annotations

import sys
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from kenv import kube, versions
from kenv.models import GROUP, VERSION
from kenv.tables import aligned
from kenv.versionmodels import PLURAL
from kenv.versions import Snapshot
from kenv.versionstore import UID_LABEL


async def load_objects(name: str, namespace: str | None,
                       cluster: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The environment and its EnvironmentVersion objects (a ClusterEnvironment's are in the operator's build
    namespace, found by the environment's UID label)."""
    body = await kube.read_environment(name, namespace, cluster)
    api = await kube.custom()
    selector = f"{UID_LABEL}={body['metadata']['uid']}"
    if cluster:
        found = await api.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector=selector)
    else:
        found = await api.list_namespaced_custom_object(GROUP, VERSION, body["metadata"]["namespace"], PLURAL,
                                                        label_selector=selector)
    return body, list(found.get("items") or [])


async def load(name: str, namespace: str | None, cluster: bool) -> tuple[dict[str, Any], list[Snapshot]]:
    """The environment and its versions, oldest first."""
    body, objects = await load_objects(name, namespace, cluster)
    return body, sorted((Snapshot.from_object(o) for o in objects), key=lambda s: s.number)


def table(snapshots: list[Snapshot], current: int | None) -> str:
    rows = [("VERSION", "CREATED", "HASH", "DIGEST", "REASON", "CHANGES")]
    for s in snapshots:
        digest = s.image.split("@", 1)[-1].removeprefix("sha256:")[:12]
        changes = s.changes or [""]
        mark = "*" if s.number == current else " "
        rows.append((f"{s.number}{mark}", s.created or "", s.content_hash[:12], digest, s.reason, changes[0]))
        rows += [("", "", "", "", "", line) for line in changes[1:]]
    return aligned(rows)


async def load_or_report(name: str, namespace: str | None,
                         cluster: bool) -> tuple[dict[str, Any], list[Snapshot]] | None:
    try:
        return await load(name, namespace, cluster)
    except ApiException as error:
        print(f"kenv: {error.status} {error.reason}: check the name and namespace", file=sys.stderr)
        return None
    finally:
        await kube.close()


async def show_versions(name: str, namespace: str | None, cluster: bool) -> int:
    loaded = await load_or_report(name, namespace, cluster)
    if loaded is None:
        return 1
    body, snapshots = loaded
    if not snapshots:
        phase = (body.get("status") or {}).get("phase")
        print(f"kenv: {name} has no versions yet (phase {phase})", file=sys.stderr)
        return 1
    sys.stdout.write(table(snapshots, (body.get("status") or {}).get("version")))
    print("(* current version; pin another with the pod annotation kenv.dev/version: \"N\")")
    return 0


async def show_diff(name: str, namespace: str | None, cluster: bool, first: int, second: int) -> int:
    loaded = await load_or_report(name, namespace, cluster)
    if loaded is None:
        return 1
    by_number = {s.number: s for s in loaded[1]}
    missing = [n for n in (first, second) if n not in by_number]
    if missing:
        known = ", ".join(str(n) for n in sorted(by_number)) or "none"
        print(f"kenv: {name} has no version {missing[0]} (known: {known})", file=sys.stderr)
        return 1
    text = versions.diff(by_number[first], by_number[second])
    sys.stdout.write(text or f"versions {first} and {second} have the same image and definition\n")
    return 0
