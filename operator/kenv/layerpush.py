"""`kenv append-layers`: the push step of an incremental build (incremental.py), run in the build pod by the
operator's image. Imports only the registry client, so the step starts quickly.

The layer files come from the install container, which ran the previous image and so code its author chose:
they are read as untrusted. A layer is opened without following a link (a link to the mounted push credentials
would push them as a blob), must be a regular file holding a tar, and is streamed through gzip to a scratch file
and from there to the registry, never held in memory (a layer of CUDA wheels can outgrow the pod's memory).
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import os
import stat
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO

from kenv.oci import CHUNK, ImageStore, LayerFile
from kenv.registry import ImageName, RegistryClient, RegistryError, docker_credentials


def open_layer(path: str) -> BinaryIO:
    """The layer file at `path` if it is a regular file holding a tar (not a link, a fifo or a device)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    source = os.fdopen(descriptor, "rb")
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise ValueError(f"{path} is not a regular file")
        try:
            with tarfile.open(fileobj=source, mode="r:") as layer:
                layer.next()
        except tarfile.TarError as error:
            raise ValueError(f"{path} is not a tar: {error}") from None
        source.seek(0)
    except BaseException:
        source.close()
        raise
    return source


class HashingWriter:
    """A file written through, hashing what is written: the gzip's digest without reading the file again."""

    def __init__(self, target: BinaryIO) -> None:
        self.target, self.digest = target, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


def gzip_layer(path: str, scratch: Path) -> LayerFile:
    """The layer gzipped into `scratch`, with the digests of both forms."""
    target = scratch / f"{Path(path).name}.gz"
    uncompressed = hashlib.sha256()
    with open_layer(path) as source, target.open("wb") as raw:
        compressed = HashingWriter(raw)
        with gzip.GzipFile(filename="", fileobj=compressed, mode="wb", compresslevel=6, mtime=0) as zipped:
            while chunk := source.read(CHUNK):
                uncompressed.update(chunk)
                zipped.write(chunk)
    return LayerFile(path=target, digest=f"sha256:{compressed.digest.hexdigest()}", size=target.stat().st_size,
                     diff_id=f"sha256:{uncompressed.hexdigest()}")


async def append_layers(base: str, destination: str, layer_files: list[str], created_by: str,
                        insecure_registries: list[str], digest_file: str) -> int:
    name = ImageName.parse(destination)
    client = RegistryClient(insecure_registries, timeout=60.0)
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        with tempfile.TemporaryDirectory(prefix="kenv-layers-") as scratch:
            layers = [gzip_layer(path, Path(scratch)) for path in layer_files]
            store = ImageStore(client, docker_credentials(name.registry))
            digest = await store.append_layers(base, destination, layers, created_by, created)
    except (OSError, RegistryError, ValueError) as error:
        print(f"kenv: could not push {destination}: {error}", file=sys.stderr)
        return 1
    finally:
        await client.close()
    print(f"kenv: pushed {destination}@{digest}: {base} and {len(layers)} layers "
          f"({', '.join(f'{layer.size} bytes' for layer in layers)} compressed)")
    Path(digest_file).write_text(digest)
    return 0
