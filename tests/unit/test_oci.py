"""kenv's OCI conversation (oci.py, imagecontents.py) with an in-memory registry speaking the distribution API
through httpx's MockTransport: both ways of finding referrers (the API, the tag schema), upload Locations,
attaching once, other tools' SBOMs, and a registry that refuses reads. The real registry (distribution v3, tag
schema only) is in tests/integration/test_image_contents.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from typing import Any

import httpx
import pytest
from test_image_contents import layer  # tests/unit is on sys.path (no package)

from kenv import imagecontents, oci, sbom
from kenv.registry import RegistryClient

HOST = "registry.test:5000"
REPOSITORY = "kenv/environments"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    """Blobs, manifests and tags in memory; `referrers_api` toggles OCI 1.1's referrers endpoint."""

    def __init__(self, referrers_api: bool, absolute_location: bool = False, refuse_blobs: bool = False,
                 failing_blobs: int = 0) -> None:
        self.referrers_api, self.absolute_location, self.refuse_blobs = referrers_api, absolute_location, refuse_blobs
        self.failing_blobs = failing_blobs  # GETs of blobs answered 503 before the registry recovers
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[str, bytes]] = {}  # digest or tag -> (media type, bytes)
        self.requests: list[str] = []

    def image(self, lock: bytes | None, last_layer_size: int | None = None) -> str:
        config = json.dumps({"created": "2026-11-28T09:30:00.123456789Z"}).encode()
        layers = [layer({"usr/lib/python3/six.py": b"x"})] + ([layer({"etc/kenv/lock.json": lock})] if lock else [])
        for blob in (config, *layers):
            self.blobs[sha(blob)] = blob
        manifest = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json", "digest": sha(config), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": sha(blob),
                        "size": last_layer_size or len(blob)} for blob in layers]}).encode()
        self.manifests[sha(manifest)] = (DOCKER_MANIFEST, manifest)
        return f"{HOST}/{REPOSITORY}@{sha(manifest)}"

    def referrers_of(self, digest: str) -> list[dict[str, Any]]:
        found = []
        for key, (media_type, data) in self.manifests.items():
            body = json.loads(data)
            if key.startswith("sha256:") and (body.get("subject") or {}).get("digest") == digest:
                found.append({"mediaType": media_type, "digest": key, "size": len(data),
                              "artifactType": body.get("artifactType"), "annotations": body.get("annotations", {})})
        return found

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append(f"{request.method} {path}")
        if path.endswith("/blobs/uploads/") and request.method == "POST":
            location = f"/v2/{REPOSITORY}/blobs/uploads/u1?_state=s"
            return httpx.Response(202, headers={"Location": f"http://{HOST}{location}" if self.absolute_location
                                                else location})
        if "/blobs/uploads/" in path:
            assert request.url.params["_state"] == "s" and sha(request.content) == request.url.params["digest"]
            self.blobs[request.url.params["digest"]] = request.content
            return httpx.Response(201)
        match = re.fullmatch(rf"/v2/{REPOSITORY}/(manifests|blobs|referrers)/(.+)", path)
        assert match, path
        kind, reference = match.groups()
        if kind == "blobs":
            if self.refuse_blobs and request.method == "GET":
                return httpx.Response(403)
            if self.failing_blobs and request.method == "GET":
                self.failing_blobs -= 1
                return httpx.Response(503)
            found = self.blobs.get(reference)
            return httpx.Response(200, content=found) if found is not None else httpx.Response(404)
        if kind == "referrers":
            if not self.referrers_api:
                return httpx.Response(404)
            index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": self.referrers_of(reference)}
            return httpx.Response(200, headers={"Content-Type": oci.OCI_INDEX}, content=json.dumps(index).encode())
        if request.method == "PUT":
            media_type = request.headers["Content-Type"]
            self.manifests[sha(request.content)] = (media_type, request.content)
            if not reference.startswith("sha256:"):
                self.manifests[reference] = (media_type, request.content)
            subject = json.loads(request.content).get("subject")
            headers = {"OCI-Subject": subject["digest"]} if self.referrers_api and subject else {}
            return httpx.Response(201, headers=headers)
        if reference in self.manifests:
            media_type, data = self.manifests[reference]
            return httpx.Response(200, headers={"Content-Type": media_type}, content=data)
        return httpx.Response(404)


def client(registry: Registry) -> RegistryClient:
    made = RegistryClient([HOST])
    made.http = httpx.AsyncClient(transport=httpx.MockTransport(registry.handle), follow_redirects=True)
    return made


def describe(registry: Registry, image: str) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        made = client(registry)
        try:
            return await imagecontents.describe(made, image, None)
        finally:
            await made.close()
    return asyncio.run(run())


LOCK = json.dumps({"python": "3.11.9", "packages": [{"name": "six", "version": "1.16.0", "manager": "pip"}]}).encode()


@pytest.mark.parametrize(("referrers_api", "absolute_location"), [(True, False), (False, True)])
def test_the_sbom_is_attached_once_and_found_again_either_way(referrers_api, absolute_location):
    registry = Registry(referrers_api, absolute_location)
    image = registry.image(LOCK)
    first = describe(registry, image)
    assert first["lock"]["packages"] == [{"name": "six", "version": "1.16.0", "manager": "pip"}]
    artifact = first["sbom"].partition("@")[2]
    manifest = json.loads(registry.manifests[artifact][1])
    assert manifest["subject"]["digest"] == image.partition("@")[2]
    assert manifest["artifactType"] == sbom.MEDIA_TYPE and manifest["config"]["mediaType"] == oci.EMPTY_TYPE
    assert manifest["annotations"]["org.opencontainers.image.created"] == "2026-11-28T09:30:00.123456789Z"
    document = json.loads(registry.blobs[manifest["layers"][0]["digest"]])
    assert {c["purl"] for c in document["components"]} == {"pkg:pypi/six@1.16.0"}
    fallback = oci.fallback_tag(image.partition("@")[2])
    assert (fallback in registry.manifests) is not referrers_api  # the tag schema only where the API is missing

    pushes = sum(r.startswith("PUT") for r in registry.requests)
    assert describe(registry, image) == first  # found, not pushed again
    assert sum(r.startswith("PUT") for r in registry.requests) == pushes
    assert len(registry.referrers_of(image.partition("@")[2])) == 1


def test_another_tools_sbom_is_not_taken_for_kenvs():
    registry = Registry(referrers_api=False)
    image = registry.image(LOCK)

    async def attach_foreign() -> None:
        made = client(registry)
        store = oci.ImageStore(made)
        name, _, subject = await store.image_manifest(image)
        await store.attach(name, subject, sbom.MEDIA_TYPE, b'{"bomFormat": "CycloneDX"}', {"by": "trivy"})
        await made.close()
    asyncio.run(attach_foreign())
    ours = describe(registry, image)["sbom"].partition("@")[2]
    assert json.loads(registry.manifests[ours][1])["annotations"][imagecontents.KENV_SBOM] == "cyclonedx"
    index = json.loads(registry.manifests[oci.fallback_tag(image.partition("@")[2])][1])
    assert len(index["manifests"]) == 2  # both listed: kenv's added beside the other tool's


def test_images_without_a_readable_lock_get_none_and_never_block_the_version():
    registry = Registry(referrers_api=True)
    assert describe(registry, registry.image(None)) == {}  # no lock layer: the image's last is not one
    assert describe(registry, registry.image(LOCK, last_layer_size=oci.MAX_LOCK_LAYER + 1)) == {}
    refusing = Registry(referrers_api=True, refuse_blobs=True)
    assert describe(refusing, refusing.image(LOCK)) == {}  # a credential that may tag but not read blobs
    assert sum(r.startswith("GET") and "/blobs/" in r for r in refusing.requests) == 1  # refused: not retried


def test_a_registry_failing_for_a_moment_is_asked_again_and_one_failing_for_good_is_given_up():
    recovering = Registry(referrers_api=True, failing_blobs=2)
    assert describe(recovering, recovering.image(LOCK))["lock"]["packages"][0]["name"] == "six"  # third try
    failing = Registry(referrers_api=True, failing_blobs=100)
    assert describe(failing, failing.image(LOCK)) == {}
    assert sum(r.startswith("GET") and "/blobs/" in r for r in failing.requests) == imagecontents.READ_ATTEMPTS
