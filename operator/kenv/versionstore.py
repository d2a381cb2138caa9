"""EnvironmentVersion objects and the registry tags that keep their images: record, migrate, prune.

Order matters for a crash at any point: the object first (a deterministic name, so its create is what claims the
number; AlreadyExists is read back), then its registry tag (idempotent), then the caller patches the status. A
tag therefore only ever moves onto a number this environment holds, even when the index the numbers come from
lags the API; an object whose tag the registry refused is deleted again. A version object left without a status
pointing to it (a crash before the status patch, its tag perhaps not yet made) is adopted and tagged by the next
reconcile if it holds the same image and runtime definition, so a restart neither loses nor duplicates a version.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from kenv import imagecontents, kube, lock, versions
from kenv.config import OperatorSettings
from kenv.models import API_VERSION, GROUP, VERSION
from kenv.refs import EnvironmentRef
from kenv.registry import Credentials, RegistryClient, RegistryError
from kenv.versionmodels import KIND, PLURAL
from kenv.versions import Snapshot

UID_LABEL = "kenv.dev/environment-uid"
# An EnvironmentVersion's size: the API server refuses objects over ~1.5 MiB (etcd's request limit); the package
# lock gets what the rest leaves, at most MAX_LOCK_BYTES (a few hundred packages take ~100 KiB).
MAX_OBJECT_BYTES = 1024 * 1024
MAX_LOCK_BYTES = 512 * 1024
LOCK_OVERHEAD = 2048  # the lock's fields besides its packages (layer, python, an error of at most 1 KiB), keys
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewVersion:
    """What the reconciler knows when an image is Ready for a definition."""

    ref: EnvironmentRef
    uid: str
    definition: dict[str, Any] | None  # the Environment's spec as the API holds it (None: not recorded)
    image: str  # repo@sha256:...
    content_hash: str
    runtime_hash: str | None
    reason: str
    generation: int | None
    build_log: str | None = None  # the tail of the build's log, when this version's image was built now
    locked: bool = False  # the image's recipe writes a package lock in its last layer (render.LOCK_SCRIPT)


class VersionTaken(Exception):
    """The version's name is taken by another object of the same environment with a different content."""


class VersionStore:
    def __init__(self, settings: OperatorSettings, registry: RegistryClient,
                 index: Mapping[Any, Any] | None = None) -> None:
        self.settings = settings
        self.registry = registry
        # kopf's EnvironmentVersion index (main.environment_versions), when the operator runs: recording a version
        # reads it instead of listing the namespace's versions, a LIST per new version that grows with the
        # namespace. It may lag the API by a watch event: the create of the number's object is the claim.
        self.index = index
        # kopf may run an Environment's change handler and its timer at once: one recording at a time per
        # environment, so the second sees the first's object and adopts it instead of racing for the number.
        self._locks: dict[str, asyncio.Lock] = {}

    def namespace(self, ref: EnvironmentRef) -> str:
        return ref.namespace or self.settings.build_namespace

    async def snapshots(self, ref: EnvironmentRef, uid: str, listed: bool = False) -> list[Snapshot]:
        """This environment's versions, oldest first: from the index unless `listed` (or there is none)."""
        if self.index is not None and not listed:
            held = self.index.get((ref.kind, ref.namespace, ref.name), [])
            return sorted((s for s in held if s.uid == uid), key=lambda s: s.number)
        api = await kube.custom()
        found = await api.list_namespaced_custom_object(GROUP, VERSION, self.namespace(ref), PLURAL,
                                                        label_selector=f"{UID_LABEL}={uid}")
        return sorted((Snapshot.from_object(o) for o in found.get("items") or []), key=lambda s: s.number)

    async def record(self, new: NewVersion, status: dict[str, Any], credentials: Credentials | None) -> Snapshot:
        """Make the next version (or adopt one a crashed or concurrent reconcile made), tag its image, prune."""
        async with self._locks.setdefault(new.uid, asyncio.Lock()):
            current = status.get("version")
            contents: dict[str, Any] | None = None
            for attempt in range(3):
                # The index first; once a number turned out taken, the API's own list (the index may lag).
                from_index = self.index is not None and attempt == 0
                existing = await self.snapshots(new.ref, new.uid, listed=not from_index)
                if from_index and current and current not in {s.number for s in existing}:
                    # The index has not seen the current version yet (made moments ago, or by a migration).
                    existing = await self.snapshots(new.ref, new.uid, listed=True)
                orphan = next((s for s in reversed(existing) if current is None or s.number > current), None)
                if orphan and orphan.image == new.image and orphan.runtime_hash == new.runtime_hash:
                    await self._tag(orphan, credentials)  # made just before a crash: perhaps not tagged yet
                    return orphan
                previous = next((s for s in existing if s.number == current), existing[-1] if existing else None)
                number = versions.next_number([s.number for s in existing] + [current]
                                              + [h.get("version") for h in status.get("history") or []])
                changes = versions.describe_changes(previous, new.definition or {}, new.image, new.reason)
                if contents is None:  # once, whatever number the version ends up with
                    contents = await self.contents(new, credentials)
                body = version_body(new, number, changes, version_tag_of(new, number), self.namespace(new.ref),
                                    contents)
                try:
                    snapshot = Snapshot.from_object(await create_unique(body, new.uid))
                except VersionTaken:
                    continue  # the number is taken (made meanwhile, or the index lagged): count again from a list
                try:
                    await self._tag(snapshot, credentials)
                except RegistryError:
                    # Not left behind: the spec may change before the next try, and an object nobody adopts would
                    # be a version whose image no tag keeps. A crash right here leaves it; the next record adopts it.
                    await self._delete(new.ref, snapshot)
                    raise
                keep = {current} if current else set()
                await self.prune(new.ref, [*existing, snapshot], snapshot.number, credentials, keep)
                return snapshot
            raise RuntimeError(f"could not record a new version of {new.ref.display}: its numbers kept being taken")

    async def migrate(self, ref: EnvironmentRef, uid: str, status: dict[str, Any], definition: dict[str, Any],
                      runtime: str, content_hash: str, credentials: Credentials | None) -> dict[str, Any]:
        """Turn a previous release's status.history into version objects with the same numbers and images.
        Only the current version's definition is known (when its content still matches the spec); older ones
        are recorded without one. An image the registry no longer has (or refuses to tag) is recorded without a
        tag rather than blocking the Environment. Returns the status patch that finishes the migration."""
        entries = {int(h["version"]): h for h in status.get("history") or [] if h.get("version") and h.get("image")}
        current = status.get("version")
        if current and status.get("image"):
            entries.setdefault(int(current), {"version": current, "image": status["image"],
                                              "hash": status.get("hash", "")})
        known = {s.number for s in await self.snapshots(ref, uid, listed=True)}
        matches = status.get("hash") == content_hash
        for number, entry in sorted(entries.items()):
            if number in known:
                continue
            is_current = number == current and matches
            migrated = NewVersion(ref=ref, uid=uid, definition=definition if is_current else None,
                                  image=entry["image"], content_hash=entry.get("hash", ""),
                                  runtime_hash=runtime if is_current else None, reason="Migrated", generation=None)
            await self._migrated(migrated, number, ["migrated from status.history"], credentials)
        patch: dict[str, Any] = {"history": None}
        if matches and current:
            patch["runtimeHash"] = runtime
        return patch

    async def contents(self, new: NewVersion, credentials: Credentials | None) -> dict[str, Any]:
        """spec.lock and spec.sbom of a new version whose image's recipe writes a lock."""
        return await imagecontents.describe(self.registry, new.image, credentials) if new.locked else {}

    async def _tag(self, snapshot: Snapshot, credentials: Credentials | None) -> None:
        """Point the version's registry tag at its image (idempotent)."""
        if snapshot.tag:
            await self.registry.tag(snapshot.image, snapshot.tag.rsplit(":", 1)[1], credentials)

    async def _migrated(self, new: NewVersion, number: int, changes: list[str],
                        credentials: Credentials | None) -> Snapshot:
        """A version from a previous release's status.history: its numbers were listed, not taken from the index,
        so the tag may go first; an image the registry no longer has (or refuses to tag) is recorded untagged."""
        tag: str | None = version_tag_of(new, number)
        try:
            await self.registry.tag(new.image, versions.version_tag(new.ref, number), credentials)
        except RegistryError as error:
            log.warning("version %d of %s recorded without a registry tag: %s", number, new.ref.display, error)
            tag = None
        body = version_body(new, number, changes, tag, self.namespace(new.ref))
        return Snapshot.from_object(await create_unique(body, new.uid))

    async def prune(self, ref: EnvironmentRef, snapshots: list[Snapshot], current: int,
                    credentials: Credentials | None, keep: set[int] | None = None) -> None:
        """Delete what retention lets go: the tag first, then the object, so a crash in between leaves an
        object that the next pruning finishes, never a tag nothing points to."""
        numbers, kept = [s.number for s in snapshots], keep or set()
        if not versions.prunable(numbers, current, self.settings.history_limit, kept):
            return  # within the limit: no need to ask which versions pods use (a LIST of pods per new version)
        doomed = versions.prunable(numbers, current, self.settings.history_limit, await self.used(ref) | kept)
        for snapshot in (s for s in snapshots if s.number in doomed):
            if snapshot.tag and not await self.registry.untag(snapshot.tag, credentials):
                log.warning("registry cannot delete tags; %s stays (its image is kept from garbage collection)",
                            snapshot.tag)
            await self._delete(ref, snapshot)
            log.info("pruned version %d of %s", snapshot.number, ref.display)

    async def _delete(self, ref: EnvironmentRef, snapshot: Snapshot) -> None:
        api = await kube.custom()
        try:
            await api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace(ref), PLURAL, snapshot.name)
        except ApiException as error:
            if not kube.not_found(error):
                raise

    async def used(self, ref: EnvironmentRef) -> set[int]:
        """Versions that live pods run; a ClusterEnvironment's pods may be in any watched namespace."""
        return versions.in_use(await kube.environment_pods(ref, self.settings.namespace_list), ref)


def version_body(new: NewVersion, number: int, changes: list[str], tag: str | None, namespace: str,
                 contents: dict[str, Any] | None = None) -> dict[str, Any]:
    ref, uid, image = new.ref, new.uid, new.image
    labels = {UID_LABEL: uid, "app.kubernetes.io/managed-by": "kenv"}
    if len(ref.name) <= 63:
        labels[ref.pod_label] = ref.name
    owner = {"apiVersion": API_VERSION, "kind": ref.kind, "name": ref.name, "uid": uid, "controller": True}
    environment = {"kind": ref.kind, "name": ref.name, "uid": uid} | ({"namespace": ref.namespace}
                                                                       if ref.namespace else {})
    spec = {"environment": environment, "version": number, "image": image, "digest": image.split("@", 1)[1],
            "hash": new.content_hash, "reason": new.reason, "changes": changes}
    optional = {"runtimeHash": new.runtime_hash, "definition": new.definition,
                "sourceGeneration": new.generation, "tag": tag, "buildLog": new.build_log}
    spec |= {k: v for k, v in optional.items() if v is not None}
    body = {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": versions.object_name(ref, number), "namespace": namespace, "labels": labels,
                         "ownerReferences": [owner]},
            "spec": spec}
    if contents:
        rest = len(json.dumps(body)) + len(json.dumps(contents.get("sbom"))) + LOCK_OVERHEAD
        room = min(MAX_LOCK_BYTES, MAX_OBJECT_BYTES - rest)
        spec |= contents | ({"lock": lock.fit(contents["lock"], room)} if "lock" in contents else {})
    return body


def version_tag_of(new: NewVersion, number: int) -> str:
    """The registry tag that keeps a version's image: `repository:<version tag>` beside the image."""
    return f"{new.image.split('@', 1)[0]}:{versions.version_tag(new.ref, number)}"


def suffixed(name: str, uid: str) -> str:
    """A version's object name when its plain name is another environment's version (see create_unique)."""
    return f"{name}-{uid[:8]}"


def is_this_version(found: dict[str, Any], uid: str, image: str, runtime_hash: str | None) -> bool:
    """Whether an existing version object is the one being recorded (an earlier attempt made it): True when it is
    this environment's with the same image and runtime definition, False when it is another environment's;
    VersionTaken when it is this environment's with other contents."""
    spec = found.get("spec") or {}
    if (spec.get("environment") or {}).get("uid") != uid:
        return False
    if spec.get("image") == image and spec.get("runtimeHash") == runtime_hash:
        return True
    raise VersionTaken(found["metadata"]["name"])


async def create_unique(body: dict[str, Any], uid: str) -> dict[str, Any]:
    """Create the version object; if the name is taken by another environment's version (a name clash between
    an Environment and a ClusterEnvironment in the build namespace, or an Environment deleted and made again
    before the garbage collector removed its versions), use a suffixed name. An object of the same environment
    with that name and the same image and runtime definition is this version, made by an earlier attempt:
    returned as it is; with other contents, VersionTaken."""
    api = await kube.custom()
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    for _ in range(2):
        try:
            return dict(await api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body))
        except ApiException as error:
            if not kube.conflict(error):
                raise
        found = dict(await api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
        if is_this_version(found, uid, body["spec"]["image"], body["spec"].get("runtimeHash")):
            return found
        name = suffixed(name, uid)
        body = {**body, "metadata": {**body["metadata"], "name": name}}
    raise RuntimeError(f"EnvironmentVersion names {body['metadata']['name']} and the one before are taken by "
                       "other environments' versions")
