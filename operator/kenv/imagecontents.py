"""What a version's image holds, recorded with the version: its package lock (read from the image's last layer)
and its SBOM (made from the lock, attached to the image in the registry once per image digest)."""

from __future__ import annotations

import logging
from typing import Any

from kenv import lock, oci, sbom
from kenv.registry import Credentials, ImageName, RegistryClient, RegistryError

log = logging.getLogger(__name__)


async def describe(registry: RegistryClient, image: str, credentials: Credentials | None) -> dict[str, Any]:
    """spec.lock and spec.sbom for a version of `image` (repo@sha256:...); empty when the image has no lock.
    A registry that cannot be read raises RegistryError (the reconcile retries, as for the version's tag); one
    that refuses the SBOM artifact leaves the version without it, logged."""
    store = oci.ImageStore(registry, credentials)
    name, manifest = await store.image_manifest(image)
    found = await store.read_lock(name, manifest)
    if found is None:
        return {}
    layer, data = found
    contents: dict[str, Any] = {"lock": lock.parse(data, layer)}
    try:
        contents["sbom"] = await attached_sbom(store, image, name, manifest, contents["lock"])
    except RegistryError as error:
        log.warning("the SBOM of %s was not attached: %s", image, error)
    return contents


async def attached_sbom(store: oci.ImageStore, image: str, name: ImageName, manifest: dict[str, Any],
                        package_lock: dict[str, Any]) -> str:
    """The SBOM artifact of `image` as repo@digest: the one already attached, else one pushed now. The SBOM and
    its manifest depend on the image alone (its digest, lock and creation time), so versions of one image that
    race to attach it push the same bytes under the same digest."""
    repository = image.partition("@")[0]
    existing = await store.referrers(image, sbom.MEDIA_TYPE)
    if existing:
        return f"{repository}@{existing[0]['digest']}"
    created = await store.created(name, manifest)
    document = sbom.cyclonedx(image, package_lock, created)
    annotations = {"org.opencontainers.image.created": created} if created else {}
    return await store.attach(image, sbom.MEDIA_TYPE, document.encode(), annotations)
