"""`kenv append-layers`: the push step of an incremental build (incremental.py), run in the build pod by the
operator's image. Imports only the registry client, so the step starts quickly."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from kenv.oci import ImageStore
from kenv.registry import ImageName, RegistryClient, RegistryError, docker_credentials


async def append_layers(base: str, destination: str, layer_files: list[str], created_by: str,
                        insecure_registries: list[str], digest_file: str) -> int:
    name = ImageName.parse(destination)
    client = RegistryClient(insecure_registries, timeout=60.0)
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        layers = [Path(path).read_bytes() for path in layer_files]
        store = ImageStore(client, docker_credentials(name.registry))
        digest = await store.append_layers(base, destination, layers, created_by, created)
    except (OSError, RegistryError, ValueError) as error:
        print(f"kenv: could not push {destination}: {error}", file=sys.stderr)
        return 1
    finally:
        await client.close()
    print(f"kenv: pushed {destination}@{digest}: {base} and {len(layers)} layers "
          f"({', '.join(f'{len(layer)} bytes' for layer in layers)} before compression)")
    Path(digest_file).write_text(digest)
    return 0
