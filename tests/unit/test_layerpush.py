"""`kenv append-layers` (layerpush.py, oci.ImageStore.append_layers) against the in-memory registry of test_oci:
the new image is the old one's layers plus the new ones, recorded in the config; layer files the install
container left are read as untrusted; a token registry is asked for a token once and gets each upload once.
tests/integration/test_incremental.py pushes to the real registry from a real pod."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_image_contents import layer  # tests/unit is on sys.path (no package)
from test_oci import HOST, REPOSITORY, Registry, client, sha

from kenv import layerpush, oci
from kenv.oci import ImageStore

CREATED = "2026-11-29T01:00:00Z"


def image(registry: Registry, kind: str = "docker", history: bool = True) -> str:
    """An image of one layer with docker's or OCI's media types; its config records its steps when `history`."""
    types = {"docker": (oci.DOCKER_MANIFEST, "application/vnd.docker.container.image.v1+json", oci.DOCKER_LAYER),
             "oci": (oci.OCI_MANIFEST, "application/vnd.oci.image.config.v1+json", oci.OCI_LAYER)}
    manifest_type, config_type, layer_type = types[kind]
    base = layer({"usr/lib/python3/six.py": b"x"})
    config: dict[str, Any] = {"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [sha(gzip.decompress(base))]}}
    if history:
        config["history"] = [{"created_by": "COPY six.py"}, {"created_by": "ENV X=1", "empty_layer": True}]
    config_bytes = json.dumps(config).encode()
    for blob in (config_bytes, base):
        registry.blobs[sha(blob)] = blob
    manifest = json.dumps({"schemaVersion": 2, "mediaType": manifest_type, "config": {
        "mediaType": config_type, "digest": sha(config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": layer_type, "digest": sha(base), "size": len(base)}]}).encode()
    registry.manifests[sha(manifest)] = (manifest_type, manifest)
    return f"{HOST}/{REPOSITORY}@{sha(manifest)}"


def layer_files(folder: Path) -> list[str]:
    paths = []
    for name, files in (("layer.tar", {"usr/lib/python3/idna/__init__.py": b"idna" * 1000}),
                        ("lock.tar", {"etc/kenv/lock.json": b'{"packages": []}'})):
        path = folder / name
        path.write_bytes(layer(files, compress=False))
        paths.append(str(path))
    return paths


def append(registry: Registry, base: str, paths: list[str], scratch: Path) -> str:
    async def run() -> str:
        made = client(registry)
        try:
            layers = [layerpush.gzip_layer(path, scratch) for path in paths]
            return await ImageStore(made).append_layers(base, f"{HOST}/{REPOSITORY}:kenv-x-on-y", layers,
                                                        "kenv incremental: pip install idna", CREATED)
        finally:
            await made.close()
    return asyncio.run(run())


@pytest.mark.parametrize(("kind", "history"), [("docker", True), ("oci", True), ("oci", False)])
def test_the_new_image_is_the_old_one_plus_the_layers_recorded_in_its_config(tmp_path, kind, history):
    registry = Registry(referrers_api=False)
    base = image(registry, kind, history)
    base_type, base_bytes = registry.manifests[base.rpartition("@")[2]]
    base_manifest = json.loads(base_bytes)
    base_config = json.loads(registry.blobs[base_manifest["config"]["digest"]])
    paths = layer_files(tmp_path)
    digest = append(registry, base, paths, tmp_path)

    media_type, data = registry.manifests["kenv-x-on-y"]
    assert sha(data) == digest and media_type == base_type
    manifest = json.loads(data)
    assert manifest["layers"][:-2] == base_manifest["layers"]
    layer_type = oci.DOCKER_LAYER if kind == "docker" else oci.OCI_LAYER
    for descriptor, path in zip(manifest["layers"][-2:], paths, strict=True):
        blob = registry.blobs[descriptor["digest"]]
        assert descriptor == {"mediaType": layer_type, "digest": sha(blob), "size": len(blob)}
        assert gzip.decompress(blob) == Path(path).read_bytes()
    config = json.loads(registry.blobs[manifest["config"]["digest"]])
    assert manifest["config"]["mediaType"] == base_manifest["config"]["mediaType"]
    diff_ids = [sha(Path(path).read_bytes()) for path in paths]
    assert config["rootfs"]["diff_ids"] == base_config["rootfs"].get("diff_ids", []) + diff_ids
    assert config["created"] == CREATED
    if history:
        added = {"created": CREATED, "created_by": "kenv incremental: pip install idna"}
        assert config["history"] == base_config.get("history", []) + [added, added]
    else:  # a history of the new layers alone would be read as the old layers' steps
        assert "history" not in config


def test_a_layer_that_is_a_link_a_fifo_or_no_tar_is_refused_and_nothing_is_pushed(tmp_path, monkeypatch, capsys):
    registry = Registry(referrers_api=False)
    base = image(registry)
    secret = tmp_path / "config.json"
    secret.write_text('{"auths": {"registry.test:5000": {"auth": "dTpw"}}}')
    os.symlink(secret, tmp_path / "link.tar")
    os.mkfifo(tmp_path / "fifo.tar")
    (tmp_path / "text.tar").write_text("not a tar")
    monkeypatch.setattr(layerpush, "RegistryClient", lambda *args, **kwargs: client(registry))
    before = dict(registry.blobs)
    for name, why in (("link.tar", "Too many levels of symbolic links"), ("fifo.tar", "is not a regular file"),
                      ("text.tar", "is not a tar")):
        code = asyncio.run(layerpush.append_layers(base, f"{HOST}/{REPOSITORY}:kenv-x-on-y",
                                                   [str(tmp_path / name)], "x", [HOST], str(tmp_path / "digest")))
        assert code == 1 and why in capsys.readouterr().err
    assert registry.blobs == before and "kenv-x-on-y" not in registry.manifests
    assert not (tmp_path / "digest").exists()


class TokenRegistry(Registry):
    """Answers 401 with a Bearer challenge to requests without a live token of those its realm hands out (or
    `refusal` to a token it no longer takes); `expire_at_upload`: the token in use expires as the first blob upload
    arrives; `storage`: blob uploads are redirected (307) to that host, which takes no Authorization."""

    def __init__(self, expire_at_upload: bool = False, refusal: int = 401, storage: str | None = None) -> None:
        super().__init__(referrers_api=False)
        self.tokens_issued: list[str] = []
        self.expired: set[str] = set()
        self.expire_at_upload, self.refusal, self.storage = expire_at_upload, refusal, storage
        self.uploads_sent = 0  # PUTs of a blob's bytes, accepted or not
        self.storage_authorizations: list[str | None] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            self.tokens_issued.append(request.url.params["scope"])
            return httpx.Response(200, json={"token": f"t-{len(self.tokens_issued)}", "expires_in": 300})
        uploading = request.method == "PUT" and "/blobs/uploads/" in request.url.path
        self.uploads_sent += uploading
        if self.storage and request.url.host == self.storage.split(":")[0]:
            self.storage_authorizations.append(request.headers.get("Authorization"))
            return super().handle(request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if uploading and self.expire_at_upload:
            self.expire_at_upload = False
            self.expired.add(token)
        if token in self.expired:
            return httpx.Response(self.refusal, headers={"WWW-Authenticate": self.challenge()}
                                  if self.refusal == 401 else {})
        if not token.startswith("t-"):
            return httpx.Response(401, headers={"WWW-Authenticate": self.challenge()})
        if uploading and self.storage:
            return httpx.Response(307, headers={"Location": f"http://{self.storage}{request.url.raw_path.decode()}"})
        return super().handle(request)

    @staticmethod
    def challenge() -> str:
        return f'Bearer realm="http://{HOST}/token",service="{HOST}"'


SCOPE = f"repository:{REPOSITORY}:"


def test_a_token_registry_is_asked_once_per_scope_and_gets_each_upload_once(tmp_path):
    registry = TokenRegistry()
    append(registry, image(registry), layer_files(tmp_path), tmp_path)
    assert registry.tokens_issued == [SCOPE + "pull", SCOPE + "pull,push"]
    assert registry.uploads_sent == 3  # two layers and the config, each sent once


@pytest.mark.parametrize("refusal", [401, 403])
def test_a_token_refused_mid_upload_is_replaced_and_the_file_streamed_again_from_its_start(tmp_path, refusal):
    registry = TokenRegistry(expire_at_upload=True, refusal=refusal)
    append(registry, image(registry), layer_files(tmp_path), tmp_path)
    assert registry.tokens_issued == [SCOPE + "pull", SCOPE + "pull,push", SCOPE + "pull,push"]
    manifest = json.loads(registry.manifests["kenv-x-on-y"][1])
    for descriptor in manifest["layers"]:  # the in-memory registry checks each upload against its digest
        assert sha(registry.blobs[descriptor["digest"]]) == descriptor["digest"]
    # the refused send, its resend; with a 403, one without a token to learn the challenge; then the other two
    assert registry.uploads_sent == (4 if refusal == 401 else 5)


def test_an_upload_redirected_to_storage_is_sent_there_whole_without_the_registrys_token(tmp_path):
    registry = TokenRegistry(storage="storage.test:9000")
    paths = layer_files(tmp_path)
    append(registry, image(registry), paths, tmp_path)
    manifest = json.loads(registry.manifests["kenv-x-on-y"][1])
    for descriptor, path in zip(manifest["layers"][-2:], paths, strict=True):
        assert gzip.decompress(registry.blobs[descriptor["digest"]]) == Path(path).read_bytes()
    assert registry.storage_authorizations == [None, None, None]
