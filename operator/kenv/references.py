"""The objects an Environment names besides itself, and a fingerprint that moves when any of them changes.

The ConfigMaps of spec.docker.dockerfileFrom and spec.build.caBundle and the Secrets of
spec.docker.baseImageRegistry and spec.conda.channelCredentials live outside the spec, so editing them is no
Environment event. The operator
re-reads them on a timer (by name, with `get`: it keeps no list/watch on Secrets, so it can never enumerate
them) and reconciles when the fingerprint differs from the one the last reconcile recorded in status.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from kenv import kube
from kenv.models import EnvironmentSpec
from kenv.statusmodels import Phase

ABSENT = "absent"


@dataclass(frozen=True, order=True)
class Reference:
    kind: str  # ConfigMap | Secret
    namespace: str
    name: str
    field: str  # where the spec names it, for messages


def referenced_objects(spec: EnvironmentSpec, namespace: str) -> list[Reference]:
    """What the spec names, in `namespace` (the Environment's, or the build namespace for a ClusterEnvironment)."""
    found = []
    if spec.docker.dockerfile_from:
        found.append(Reference("ConfigMap", namespace, spec.docker.dockerfile_from.name,
                               "spec.docker.dockerfileFrom"))
    if spec.build.ca_bundle:
        found.append(Reference("ConfigMap", namespace, spec.build.ca_bundle.name, "spec.build.caBundle"))
    if spec.docker.base_image_registry:
        found.append(Reference("Secret", namespace, spec.docker.base_image_registry.secret_name,
                               "spec.docker.baseImageRegistry.secretName"))
    for index, credential in enumerate(spec.conda.channel_credentials if spec.conda else []):
        found.append(Reference("Secret", namespace, credential.secret_name,
                               f"spec.conda.channelCredentials[{index}].secretName"))
    return sorted(set(found))


def names_references(body: dict[str, Any]) -> bool:
    """Cheap filter on the raw body (no validation): does the spec name a ConfigMap or Secret?"""
    spec = body.get("spec") or {}
    docker, build, conda = spec.get("docker") or {}, spec.get("build") or {}, spec.get("conda") or {}
    return bool(docker.get("dockerfileFrom") or docker.get("baseImageRegistry") or build.get("caBundle")
                or conda.get("channelCredentials"))


def fingerprint_of(versions: dict[Reference, str]) -> str | None:
    """One short value for the resourceVersions seen (None when nothing is referenced)."""
    if not versions:
        return None
    lines = sorted(f"{r.kind}/{r.namespace}/{r.name}={version}" for r, version in versions.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


async def resource_version(reference: Reference) -> str:
    core = await kube.core()
    read = core.read_namespaced_config_map if reference.kind == "ConfigMap" else core.read_namespaced_secret
    try:
        obj = await read(reference.name, reference.namespace)
    except ApiException as error:
        if kube.not_found(error):
            return ABSENT
        raise
    return str(obj.metadata.resource_version)


async def fingerprint(spec: EnvironmentSpec, namespace: str) -> str | None:
    """The fingerprint of what `spec` names in `namespace` now (one GET per object)."""
    return fingerprint_of({reference: await resource_version(reference)
                           for reference in referenced_objects(spec, namespace)})


def changed_since_failure(current: dict[str, Any], seen: str | None) -> bool:
    """Whether a referenced object changed since the build of this generation failed (a fixed Secret deserves
    another try). A failure recorded before fingerprints existed counts as unchanged."""
    return current.get("failedReferences", seen) != seen


def record(patch: dict[str, Any], current: dict[str, Any], seen: str | None) -> dict[str, Any]:
    """The status patch with the fingerprint this reconcile saw, and the one a failure is judged against."""
    recorded = dict(patch)
    if (recorded or current.get("referencesFingerprint") != seen) and \
            (seen is not None or current.get("referencesFingerprint") is not None):
        recorded["referencesFingerprint"] = seen
    if recorded.get("phase") == Phase.FAILED and recorded.get("failedGeneration") is not None:
        recorded.setdefault("failedReferences", seen)  # a build failure sets the fingerprint it started with
    elif not patch and current.get("phase") == Phase.FAILED and "failedReferences" not in current:
        recorded["failedReferences"] = seen  # failed before fingerprints were recorded: judge from now on
    elif recorded.get("phase") == Phase.READY:
        recorded["failedReferences"] = None
        recorded["buildReferences"] = None
    return recorded
