"""`kenv packages` and `kenv sbom`: what a version's image holds, from its EnvironmentVersion (the lock) and
from the registry (the SBOM attached to the image)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from kenv import imagecontents, lock, oci, sbom
from kenv.registry import ImageName, RegistryClient, RegistryError, docker_credentials
from kenv.versioncli import load_versions


async def version_spec(name: str, namespace: str | None, cluster: bool, number: int | None) -> dict[str, Any] | None:
    """The spec of version `number`, or of the current one; None (reported) when there is none."""
    loaded = await load_versions(name, namespace, cluster)
    if loaded is None:
        return None
    body, objects = loaded
    wanted = number if number is not None else (body.get("status") or {}).get("version")
    if wanted in objects:
        return dict(objects[wanted]["spec"])
    known = ", ".join(str(n) for n in sorted(objects)) or "none"
    if number is None:
        print(f"kenv: {name} has no version yet (phase {(body.get('status') or {}).get('phase')})", file=sys.stderr)
    else:
        print(f"kenv: {name} has no version {number} (known: {known})", file=sys.stderr)
    return None


async def show_packages(name: str, namespace: str | None, cluster: bool, number: int | None) -> int:
    spec = await version_spec(name, namespace, cluster, number)
    if spec is None:
        return 1
    package_lock = spec.get("lock")
    if not package_lock:
        print(f"kenv: version {spec['version']} of {name} has no package lock: kenv installed nothing into its "
              "image (a base image or Dockerfile alone), or it was migrated from an older release", file=sys.stderr)
        return 1
    sys.stdout.write(lock.table(package_lock))
    python = f", python {package_lock['python']}" if package_lock.get("python") else ""
    print(f"(version {spec['version']}: {len(package_lock.get('packages') or [])} packages{python}; image "
          f"{spec['image']})")
    if package_lock.get("error"):
        print(f"kenv: the lock is incomplete: {package_lock['error']}", file=sys.stderr)
    return 0


async def read_sbom(image: str, recorded: str | None, insecure: bool) -> bytes:
    name = ImageName.parse(image)
    client = RegistryClient([name.registry] if insecure else [])
    try:
        store = oci.ImageStore(client, docker_credentials(name.registry))
        if not recorded:  # an older version: whatever is attached to its image
            attached = sorted(await store.referrers(image, sbom.MEDIA_TYPE),  # kenv's first, then another tool's
                              key=lambda d: not (d.get("annotations") or {}).get(imagecontents.KENV_SBOM))
            if not attached:
                raise LookupError(f"no SBOM is attached to {image}")
            recorded = f"{image.partition('@')[0]}@{attached[0]['digest']}"
        return await store.artifact(recorded)
    finally:
        await client.close()


async def show_sbom(name: str, namespace: str | None, cluster: bool, number: int | None, insecure: bool,
                    output: str | None) -> int:
    spec = await version_spec(name, namespace, cluster, number)
    if spec is None:
        return 1
    try:
        document = await read_sbom(spec["image"], spec.get("sbom"), insecure)
    except (LookupError, RegistryError) as error:
        hint = "" if insecure else " (a registry served over plain HTTP needs --insecure)"
        print(f"kenv: {error}{hint}", file=sys.stderr)
        return 1
    if output:
        Path(output).write_bytes(document)
    else:
        sys.stdout.write(document.decode())
    return 0

