"""An image's CycloneDX SBOM (JSON, spec 1.6), made from its package lock with cyclonedx-python-lib.

The SBOM describes the image (metadata.component, a container with its pkg:oci purl) and one component per
locked package: pkg:pypi purls for Python distributions, pkg:conda purls (build, channel) for conda packages,
with the archive's sha256 where the installer recorded it. It depends on the image alone: the serial number
derives from the image digest and the timestamp is the image's creation time, so one image has one SBOM
whichever Environment or version made it.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping
from importlib.metadata import version as installed_version
from typing import Any

from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.dependency import Dependency
from cyclonedx.model.tool import ToolRepository
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

MEDIA_TYPE = "application/vnd.cyclonedx+json"
SERIAL_NAMESPACE = uuid.UUID("6f1f3c3e-8a4b-4c55-9d1e-6b656e760001")  # kenv's: uuid5(namespace, image digest)


def package_url(package: Mapping[str, Any]) -> PackageURL:
    if package["manager"] == "conda":
        qualifiers = {"build": package.get("build") or None, "channel": package.get("channel") or None}
        return PackageURL("conda", None, package["name"], package["version"],
                          {k: v for k, v in qualifiers.items() if v})
    return PackageURL("pypi", None, package["name"].lower().replace("_", "-"), package["version"])


def component(package: Mapping[str, Any]) -> Component:
    purl = package_url(package)
    hashes = [HashType(alg=HashAlgorithm.SHA_256, content=package["sha256"])] if package.get("sha256") else []
    properties = [Property(name=f"kenv:{key}", value=str(package[key]))
                  for key in ("manager", "installer", "url") if package.get(key)]
    return Component(name=package["name"], version=package["version"], type=ComponentType.LIBRARY,
                     purl=purl, bom_ref=purl.to_string(), hashes=hashes, properties=properties)


def image_component(image: str) -> Component:
    repository, _, digest = image.partition("@")
    purl = PackageURL("oci", None, repository.rsplit("/", 1)[-1], digest, {"repository_url": repository})
    return Component(name=repository, version=digest, type=ComponentType.CONTAINER, purl=purl,
                     bom_ref=purl.to_string(), hashes=[HashType(alg=HashAlgorithm.SHA_256,
                                                                content=digest.removeprefix("sha256:"))])


def timestamp(created: str | None) -> datetime.datetime:
    """The image's creation time (RFC 3339, as image configs record it); the epoch when it records none."""
    if created:
        try:
            return datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            pass
    return datetime.datetime.fromtimestamp(0, datetime.UTC)


def cyclonedx(image: str, lock: Mapping[str, Any], created: str | None = None) -> str:
    """The SBOM of `image` (repo@sha256:...) from its lock, as CycloneDX 1.6 JSON; `created` is the image
    config's creation time."""
    tool = Component(name="kenv", version=installed_version("kenv"), type=ComponentType.APPLICATION)
    metadata = BomMetaData(component=image_component(image), tools=ToolRepository(components=[tool]),
                           timestamp=timestamp(created))
    bom = Bom(serial_number=uuid.uuid5(SERIAL_NAMESPACE, image.partition("@")[2]), metadata=metadata)
    seen: set[str] = set()
    for package in lock.get("packages") or []:
        part = component(package)
        if str(part.bom_ref) not in seen:  # one component per purl (a bom-ref must be unique)
            seen.add(str(part.bom_ref))
            bom.components.add(part)
    # The image depends on every package; written out directly, since the library's register_dependency scans
    # every entry per call. Its own check before output still does (a few seconds for thousands of packages),
    # which is why the operator makes SBOMs in a thread of their own.
    bom.dependencies.add(Dependency(ref=metadata.component.bom_ref,  # type: ignore[union-attr]
                                    dependencies=[Dependency(ref=part.bom_ref) for part in bom.components]))
    return str(JsonV1Dot6(bom).output_as_string(indent=1))
