"""`kenv versions` and `kenv diff`: an environment's EnvironmentVersion snapshots, read from the cluster."""

from __future__ import annotations

import sys
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from kenv import kube, lock, versions
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


def table(snapshots: list[Snapshot], current: int | None) -> str:
    rows = [("VERSION", "CREATED", "HASH", "DIGEST", "REASON", "CHANGES")]
    for s in snapshots:
        digest = s.image.split("@", 1)[-1].removeprefix("sha256:")[:12]
        changes = s.changes or [""]
        mark = "*" if s.number == current else " "
        rows.append((f"{s.number}{mark}", s.created or "", s.content_hash[:12], digest, s.reason, changes[0]))
        rows += [("", "", "", "", "", line) for line in changes[1:]]
    return aligned(rows)


async def load_versions(name: str, namespace: str | None,
                        cluster: bool) -> tuple[dict[str, Any], dict[int, dict[str, Any]]] | None:
    """The environment and its EnvironmentVersion objects by number (None when reported as not found)."""
    try:
        body, objects = await load_objects(name, namespace, cluster)
    except ApiException as error:
        print(f"kenv: {error.status} {error.reason}: check the name and namespace", file=sys.stderr)
        return None
    finally:
        await kube.close()
    return body, {int(o["spec"]["version"]): o for o in objects}


async def show_versions(name: str, namespace: str | None, cluster: bool) -> int:
    loaded = await load_versions(name, namespace, cluster)
    if loaded is None:
        return 1
    body, objects = loaded
    snapshots = sorted((Snapshot.from_object(o) for o in objects.values()), key=lambda s: s.number)
    if not snapshots:
        phase = (body.get("status") or {}).get("phase")
        print(f"kenv: {name} has no versions yet (phase {phase})", file=sys.stderr)
        return 1
    sys.stdout.write(table(snapshots, (body.get("status") or {}).get("version")))
    print("(* current version; pin another with the pod annotation kenv.dev/version: \"N\")")
    return 0


async def show_diff(name: str, namespace: str | None, cluster: bool, first: int, second: int) -> int:
    loaded = await load_versions(name, namespace, cluster)
    if loaded is None:
        return 1
    objects = loaded[1]
    missing = [n for n in (first, second) if n not in objects]
    if missing:
        known = ", ".join(str(n) for n in sorted(objects)) or "none"
        print(f"kenv: {name} has no version {missing[0]} (known: {known})", file=sys.stderr)
        return 1
    text = versions.diff(Snapshot.from_object(objects[first]), Snapshot.from_object(objects[second]))
    sys.stdout.write(text or f"versions {first} and {second} have the same image and definition\n")
    sys.stdout.write(package_section(objects[first]["spec"].get("lock"), objects[second]["spec"].get("lock")))
    return 0


def package_section(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    """The packages that changed between two versions' locks, or why they cannot be compared."""
    if not before or not after:
        return "packages: not compared (a version without a package lock)\n"
    changed = lock.changes(before, after)
    return "packages:\n" + "".join(f"  {line}\n" for line in changed) if changed else "packages: the same\n"
