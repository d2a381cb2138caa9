"""What kenv keeps next to an image in its registry, over the OCI distribution API: the package lock read from
the image's last layer, and artifacts (the SBOM) attached to the image by `subject`.

Attached artifacts are found with the referrers API (OCI distribution 1.1, GET /v2/<repo>/referrers/<digest>);
registries without it get, and are read through, the referrers tag schema: an image index tagged
`sha256-<hex of the image digest>` listing the artifacts (OCI distribution spec, "Referrers Tag Schema").
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from kenv.registry import MANIFEST_TYPES, Body, Credentials, ImageName, RegistryClient, RegistryError
from kenv.render import LOCK_FALLBACK, LOCK_FILE

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
INDEX_TYPES = (OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json")
EMPTY_CONFIG = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
# Where kenv-lock.py writes the lock, as paths inside a layer.
LOCK_MEMBERS = (LOCK_FILE.lstrip("/"), LOCK_FALLBACK.lstrip("/"))
# The lock's layer holds one small file (and what its python step touched); a last layer bigger, inflating to
# more or holding more entries is not one kenv's recipe made: not downloaded, or not read on.
MAX_LOCK_LAYER = 16 * 1024 * 1024
MAX_LOCK_LAYER_INFLATED = 64 * 1024 * 1024
MAX_LOCK_LAYER_ENTRIES = 2000
MAX_LOCK_FILE = 2 * 1024 * 1024
CHUNK = 1024 * 1024  # a streamed upload's read size
MAX_CONFIG = 4 * 1024 * 1024  # an image config (its creation time is read for the SBOM)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)}


def canonical(manifest: dict[str, Any]) -> bytes:
    """The bytes kenv pushes for a manifest it writes (so its digest is known before the push)."""
    return json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()


def fallback_tag(digest: str) -> str:
    """The referrers tag schema's tag for an image digest: `sha256-<hex>`."""
    algorithm, _, hex_digest = digest.partition(":")
    return f"{algorithm}-{hex_digest}"


class _Bounded(io.RawIOBase):
    """A decompressed stream that stops at `limit` bytes: a small layer can inflate to gigabytes."""

    def __init__(self, stream: io.BufferedIOBase, limit: int) -> None:
        self.stream, self.left = stream, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            raise tarfile.ReadError("the layer inflates beyond what a lock layer holds")
        data = self.stream.read(min(len(buffer), self.left))
        self.left -= len(data)
        buffer[:len(data)] = data
        return len(data)


def lock_from_layer(layer: bytes) -> bytes | None:
    """The lock file's bytes from a (gzip-compressed or plain) layer tarball; None when it holds none. Read as a
    stream, never inflating more than MAX_LOCK_LAYER_INFLATED bytes."""
    raw: io.BufferedIOBase = io.BytesIO(layer)
    if layer[:2] == b"\x1f\x8b":
        raw = gzip.GzipFile(fileobj=raw)
    try:
        with tarfile.open(fileobj=_Bounded(raw, MAX_LOCK_LAYER_INFLATED), mode="r|") as archive:
            for count, member in enumerate(archive):
                if count >= MAX_LOCK_LAYER_ENTRIES:
                    return None
                if member.isfile() and member.name.lstrip("./") in LOCK_MEMBERS and member.size <= MAX_LOCK_FILE:
                    extracted = archive.extractfile(member)
                    return extracted.read() if extracted else None
    except (tarfile.TarError, OSError, EOFError):
        return None  # not a tarball kenv's recipe wrote (a zstd layer, a bomb, a truncated blob)
    return None


@dataclass(frozen=True)
class LayerFile:
    """A layer gzipped on disk: its digest and size as the registry stores it, and the uncompressed tar's digest
    (the config's diff_id)."""

    path: Path
    digest: str
    size: int
    diff_id: str

    async def chunks(self) -> AsyncIterator[bytes]:
        with self.path.open("rb") as source:
            while chunk := source.read(CHUNK):
                yield chunk


@dataclass
class ImageStore:
    """One registry conversation about one image repository, with its pull (and push) credentials."""

    registry: RegistryClient
    credentials: Credentials | None = None

    async def _call(self, method: str, name: ImageName, path_or_url: str, headers: dict[str, str] | None = None,
                    actions: str = "pull", content: bytes | Body | None = None) -> Any:
        base = f"{self.registry.base_url(name.registry)}/v2/{name.repository}/"
        url = urljoin(base, path_or_url)
        return await self.registry.authorized(method, url, headers or {}, name, self.credentials, actions, content)

    async def manifest(self, name: ImageName, reference: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the manifest, its descriptor); the digest is checked against the bytes when asked for by digest."""
        reference = reference or name.reference
        got = await self._call("GET", name, f"manifests/{reference}", {"Accept": MANIFEST_TYPES})
        if got.status_code != 200:
            raise RegistryError("RegistryUnavailable", f"{name.registry} answered HTTP {got.status_code} for the "
                                f"manifest {name.repository}@{reference}")
        media_type = got.headers.get("Content-Type", OCI_MANIFEST).split(";")[0]
        found = descriptor(media_type, got.content)
        if reference.startswith("sha256:") and found["digest"] != reference:
            raise RegistryError("RegistryUnavailable", f"{name.registry} served a manifest for {reference} whose "
                                f"digest is {found['digest']}")
        return json.loads(got.content), found

    async def blob(self, name: ImageName, digest: str) -> bytes:
        got = await self._call("GET", name, f"blobs/{digest}")
        if got.status_code != 200:
            raise RegistryError("RegistryUnavailable", f"{name.registry} answered HTTP {got.status_code} for the "
                                f"blob {name.repository}@{digest}")
        if sha256_digest(got.content) != digest:
            raise RegistryError("RegistryUnavailable", f"{name.registry} served blob {digest} with other content")
        return bytes(got.content)

    async def push_blob(self, name: ImageName, media_type: str, data: bytes) -> dict[str, Any]:
        found = descriptor(media_type, data)
        await self._upload(name, found, data)
        return found

    async def push_layer_file(self, name: ImageName, media_type: str, layer: LayerFile) -> dict[str, Any]:
        """Push a compressed layer from disk, streamed (a layer may be bigger than the pod's memory)."""
        found = {"mediaType": media_type, "digest": layer.digest, "size": layer.size}
        await self._upload(name, found, layer.chunks)
        return found

    async def _upload(self, name: ImageName, found: dict[str, Any], content: bytes | Body) -> None:
        """A monolithic upload (POST, then PUT with the digest), skipped when the repository has the blob."""
        head = await self._call("HEAD", name, f"blobs/{found['digest']}", actions="pull,push")
        if head.status_code == 200:
            return
        started = await self._call("POST", name, "blobs/uploads/", actions="pull,push")
        location = started.headers.get("Location")
        if started.status_code != 202 or not location:
            raise RegistryError("RegistryUnavailable", f"{name.registry} refused a blob upload to "
                                f"{name.repository} (HTTP {started.status_code})")
        separator = "&" if "?" in location else "?"
        done = await self._call("PUT", name, f"{location}{separator}digest={found['digest']}",
                                {"Content-Type": "application/octet-stream", "Content-Length": str(found["size"])},
                                "pull,push", content)
        if done.status_code != 201:
            raise RegistryError("RegistryUnavailable", f"{name.registry} refused blob {found['digest']} "
                                f"(HTTP {done.status_code})")

    async def push_manifest(self, name: ImageName, manifest: dict[str, Any],
                            tag: str | None = None) -> tuple[dict[str, Any], bool]:
        """PUT a manifest under `tag`, else by its digest; (its descriptor, whether the registry processed its
        subject for the referrers API)."""
        data = canonical(manifest)
        pushed = descriptor(manifest["mediaType"], data)
        put = await self._call("PUT", name, f"manifests/{tag or pushed['digest']}",
                               {"Content-Type": manifest["mediaType"]}, "pull,push", data)
        if put.status_code not in (200, 201):
            raise RegistryError("RegistryUnavailable", f"{name.registry} refused a manifest for "
                                f"{name.repository} (HTTP {put.status_code}): {put.text[:200]}")
        return pushed, "OCI-Subject" in put.headers

    async def referrers(self, image: str, artifact_type: str) -> list[dict[str, Any]]:
        """Descriptors of the artifacts attached to `repo@digest` with this artifactType."""
        name = ImageName.parse(image)
        got = await self._call("GET", name, f"referrers/{name.reference}", {"Accept": OCI_INDEX})
        if got.status_code == 200 and got.headers.get("Content-Type", "").startswith(OCI_INDEX):
            index = json.loads(got.content)
        elif got.status_code in (200, 404):  # no referrers API: the tag schema
            index = await self._fallback_index(name)
        else:
            raise RegistryError("RegistryUnavailable", f"{name.registry} answered HTTP {got.status_code} for the "
                                f"referrers of {image}")
        return [d for d in index.get("manifests") or [] if d.get("artifactType") == artifact_type]

    async def _fallback_index(self, name: ImageName) -> dict[str, Any]:
        got = await self._call("GET", name, f"manifests/{fallback_tag(name.reference)}", {"Accept": OCI_INDEX})
        if got.status_code == 404:
            return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        if got.status_code != 200:
            raise RegistryError("RegistryUnavailable", f"{name.registry} answered HTTP {got.status_code} for "
                                f"{name.repository}:{fallback_tag(name.reference)}")
        return dict(json.loads(got.content))

    async def attach(self, name: ImageName, subject: dict[str, Any], artifact_type: str, data: bytes,
                     annotations: dict[str, str]) -> str:
        """Push `data` as an artifact whose subject is the manifest `subject` describes (`name`'s reference, a
        digest); returns the artifact's digest."""
        config = await self.push_blob(name, EMPTY_TYPE, EMPTY_CONFIG)
        config["data"] = base64.b64encode(EMPTY_CONFIG).decode()
        layer = await self.push_blob(name, artifact_type, data)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
                    "config": config, "layers": [layer], "subject": subject, "annotations": annotations}
        pushed, processed = await self.push_manifest(name, manifest)
        if not processed:  # a registry without the referrers API: list it in the tag schema's index
            index = await self._fallback_index(name)
            entries = [d for d in index.get("manifests") or [] if d.get("digest") != pushed["digest"]]
            entry = {**pushed, "artifactType": artifact_type, "annotations": annotations}
            await self.push_manifest(name, {"schemaVersion": 2, "mediaType": OCI_INDEX,
                                            "manifests": [*entries, entry]}, fallback_tag(name.reference))
        return str(pushed["digest"])

    async def artifact(self, reference: str) -> bytes:
        """The first layer of an artifact manifest `repo@digest`."""
        name = ImageName.parse(reference)
        manifest, _ = await self.manifest(name)
        layers = manifest.get("layers") or []
        if not layers:
            raise RegistryError("RegistryUnavailable", f"artifact {reference} has no layer")
        return await self.blob(name, layers[0]["digest"])

    async def image_manifest(self, image: str) -> tuple[ImageName, dict[str, Any], dict[str, Any]]:
        """(name, the image manifest of `image`, the descriptor of what `image` names); of an index, the
        manifest of its first linux/amd64 (else first) image."""
        name = ImageName.parse(image)
        manifest, found = await self.manifest(name)
        if found["mediaType"] in INDEX_TYPES:
            entries = manifest.get("manifests") or []
            chosen = next((m for m in entries if (m.get("platform") or {}).get("architecture") == "amd64"),
                          entries[0] if entries else None)
            if chosen is None:
                raise RegistryError("RegistryUnavailable", f"image index {image} lists no image")
            manifest, _ = await self.manifest(name, chosen["digest"])
        return name, manifest, found

    async def read_lock(self, name: ImageName, manifest: dict[str, Any]) -> tuple[str, bytes] | None:
        """(the last layer's digest, the package lock in it); None when the image holds none there."""
        layers = manifest.get("layers") or []
        if not layers or int(layers[-1].get("size", 0)) > MAX_LOCK_LAYER:
            return None
        blob = await self.blob(name, layers[-1]["digest"])
        found = await asyncio.to_thread(lock_from_layer, blob)  # inflating is CPU work: off the event loop
        return None if found is None else (str(layers[-1]["digest"]), found)

    async def append_layers(self, base: str, destination: str, layers: list[LayerFile], created_by: str,
                            created: str) -> str:
        """Push `base` with `layers` on top as `destination` (a tag in the same repository, whose blobs the new
        manifest reuses); returns the new manifest's digest. Each layer is recorded in the config's diff_ids and,
        when the base records its steps, in its history, as a builder's step would be."""
        name, manifest, _ = await self.image_manifest(base)
        target = ImageName.parse(destination)
        if (target.registry, target.repository) != (name.registry, name.repository):
            raise ValueError(f"{destination} is not in the repository of {base}")
        config = json.loads(await self.blob(name, manifest["config"]["digest"]))
        manifest.setdefault("mediaType", OCI_MANIFEST)
        layer_type = DOCKER_LAYER if manifest.get("mediaType") == DOCKER_MANIFEST else OCI_LAYER
        for layer in layers:
            manifest["layers"].append(await self.push_layer_file(target, layer_type, layer))
            config["rootfs"]["diff_ids"].append(layer.diff_id)
            if "history" in config:  # without it, a history of the new layers alone would miscount the old ones
                config["history"].append({"created": created, "created_by": created_by})
        config["created"] = created
        manifest["config"] = await self.push_blob(target, manifest["config"]["mediaType"], canonical(config))
        pushed, _ = await self.push_manifest(target, manifest, target.reference)
        return str(pushed["digest"])

    async def created(self, name: ImageName, manifest: dict[str, Any]) -> str | None:
        """The image config's `created` time, if it records one."""
        config = manifest.get("config") or {}
        if not config.get("digest") or int(config.get("size", 0)) > MAX_CONFIG:
            return None
        try:
            value = json.loads(await self.blob(name, config["digest"])).get("created")
        except (ValueError, RecursionError, AttributeError):
            return None
        return value if isinstance(value, str) else None
