"""What a version's image holds, recorded with the version: its package lock (read from the image's last layer)
and its SBOM (made from the lock, attached to the image in the registry once per image digest).

Neither ever keeps a version from being recorded (it is immutable: a version recorded without them stays so):
a lock that cannot be read after a few tries (a credential that may tag but not read blobs, a blob gone) leaves
the version without one, logged; an SBOM the registry refuses, or that cannot be made, likewise.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kenv import lock, oci
from kenv.registry import Credentials, ImageName, RegistryClient, RegistryError

log = logging.getLogger(__name__)
KENV_SBOM = "dev.kenv.sbom"  # annotation of kenv's SBOM artifacts: another tool's CycloneDX referrer is not ours
READ_ATTEMPTS = 3


async def describe(registry: RegistryClient, image: str, credentials: Credentials | None) -> dict[str, Any]:
    """spec.lock and spec.sbom for a version of `image` (repo@sha256:...); empty when it has no lock."""
    store = oci.ImageStore(registry, credentials)
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            name, manifest, subject = await store.image_manifest(image)
            found = await store.read_lock(name, manifest)
            break
        except RegistryError as error:
            if error.reason == "RegistryAuthFailed" or attempt == READ_ATTEMPTS:
                log.warning("version of %s recorded without its package lock: %s", image, error)
                return {}
            await asyncio.sleep(0.5 * attempt)
        except Exception:  # noqa: BLE001 - a manifest not as the spec says: no lock, never a stuck version
            log.warning("version of %s recorded without its package lock", image, exc_info=True)
            return {}
    if found is None:
        return {}
    layer, data = found
    try:
        contents: dict[str, Any] = {"lock": await asyncio.to_thread(lock.parse, data, layer)}
    except Exception:  # noqa: BLE001 - parse validates what it keeps; this is the backstop for what it missed
        log.warning("the package lock of %s could not be read", image, exc_info=True)
        return {}
    try:
        contents["sbom"] = await attached_sbom(store, image, (name, manifest, subject), contents["lock"])
    except Exception:  # noqa: BLE001 - the SBOM is extra: the version and its lock are recorded regardless
        log.warning("the SBOM of %s was not attached", image, exc_info=True)
    return contents


async def attached_sbom(store: oci.ImageStore, image: str,
                        read: tuple[ImageName, dict[str, Any], dict[str, Any]], package_lock: dict[str, Any]) -> str:
    """kenv's SBOM artifact of `image` as repo@digest: the one already attached, else one pushed now. The SBOM
    and its manifest depend on the image alone (its digest, lock and creation time), so versions of one image
    that race to attach it push the same bytes under the same digest."""
    # Imported here: cyclonedx takes ~70 ms and a few MiB to import, which admission replicas never need.
    from kenv import sbom

    name, manifest, subject = read  # what describe read: the image's name, manifest and own descriptor
    repository = image.partition("@")[0]
    ours = [d for d in await store.referrers(image, sbom.MEDIA_TYPE) if (d.get("annotations") or {}).get(KENV_SBOM)]
    if ours:
        return f"{repository}@{ours[0]['digest']}"
    created = await store.created(name, manifest)
    document = await asyncio.to_thread(sbom.cyclonedx, image, package_lock, created)
    annotations = {KENV_SBOM: "cyclonedx"} | ({"org.opencontainers.image.created": created} if created else {})
    return f"{repository}@{await store.attach(name, subject, sbom.MEDIA_TYPE, document.encode(), annotations)}"
