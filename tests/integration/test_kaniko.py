"""The default builder end to end: the operator's Kaniko Job runs the Kaniko executor image (built here from the
Go module proxy, laid out like the upstream image) in a real pod, pulls the base image from the local registry,
pip-installs through the network and pushes; the digest it writes to /dev/termination-log becomes the
Environment's status."""

from __future__ import annotations

import io
import json
import tarfile
import time
import urllib.request
import uuid

import pytest

from kenvfixtures import build_jobs, build_pod, create_env, registry_digest, wait_phase

pytestmark = pytest.mark.usefixtures("operator")


MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


def registry_get(registry: str, path: str, accept: str = "*/*") -> bytes:
    request = urllib.request.Request(f"http://{registry}/v2/{path}", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


def layer_digests(registry: str, repository: str, reference: str) -> list[str]:
    manifest = json.loads(registry_get(registry, f"{repository}/manifests/{reference}", MANIFEST_TYPES))
    return [layer["digest"] for layer in manifest["layers"]]


def layer_paths(registry: str, repository: str, digest: str) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(registry_get(registry, f"{repository}/blobs/{digest}"))) as tar:
        return {member.name.removeprefix("./").rstrip("/") for member in tar.getmembers()}


def test_kaniko_builds_pip_environment_to_ready(kube, cluster, namespace, base_image, ca_config_map):
    spec = {"docker": {"baseImage": base_image}, "pip": {"requirements": "six==1.16.0\n"},
            "build": {"caBundle": ca_config_map}}
    # The same content may already be in the registry (another test builds it): force a build.
    token = f"kaniko-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    create_env(kube, namespace, "kaniko", spec, annotations={"kenv.dev/rebuild": token})
    env = wait_phase(kube, namespace, "kaniko", {"Ready", "Failed"}, timeout=900)
    print(f"kaniko build to Ready in {time.monotonic() - t0:.1f}s")
    status = env["status"]
    job = next(j for j in build_jobs(kube, status.get("hash"))
               if j["metadata"]["annotations"]["kenv.dev/requested-by"].endswith(f"{namespace}/kaniko"))
    pod, log = build_pod(kube, status)
    assert status["phase"] == "Ready", (status, log[-3000:])

    tag = "kenv-" + status["hash"][:40]
    assert registry_digest(cluster.registry, "kenv/environments", tag) == status["digest"]
    assert status["image"] == f"{cluster.registry}/kenv/environments@{status['digest']}"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == status["digest"]

    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "kaniko-executor" in container["image"] and container["image"] == pod["spec"]["containers"][0]["image"]
    for kaniko_says in ("Retrieving image manifest", "Taking snapshot", "Pushing image to"):
        assert kaniko_says in log, log[-3000:]
    assert "Successfully installed six-1.16.0" in log

    # The layers Kaniko added hold the build's files and nothing of the build pod: its volumes, /kaniko, and the
    # kubelet's /etc and /dev mounts are mount points, which Kaniko leaves out.
    base_repository, base_tag = base_image.split("/", 1)[1].rsplit(":", 1)
    base_layers = layer_digests(cluster.registry, base_repository, base_tag)
    layers = layer_digests(cluster.registry, "kenv/environments", status["digest"])
    assert layers[:len(base_layers)] == base_layers and len(layers) > len(base_layers)
    added = set().union(*(layer_paths(cluster.registry, "kenv/environments", d) for d in layers[len(base_layers):]))
    assert {"etc/kenv/ca.crt", "tmp/kenv/requirements.txt"} <= added
    assert any(p.endswith("-packages/six.py") for p in added), sorted(added)[:50]
    leaked = {p for p in added if p.split("/")[0] in ("workspace", "kaniko", "kenv", "dev", "proc")
              or p in ("etc/resolv.conf", "etc/hosts", "etc/hostname")}
    assert not leaked, sorted(leaked)


def test_failing_kaniko_build_reports_its_exit_code_and_log(kube, namespace, base_image, ca_config_map):
    create_env(kube, namespace, "broken", {"docker": {"baseImage": base_image}, "build": {"caBundle": ca_config_map},
                                           "pip": {"requirements": "kenv-package-that-does-not-exist-xyz==0.0.1\n"}})
    env = wait_phase(kube, namespace, "broken", {"Ready", "Failed"}, timeout=900)
    assert env["status"]["phase"] == "Failed", env["status"]
    built = next(c for c in env["status"]["conditions"] if c["type"] == "Built")
    assert built["reason"] == "BuildFailed" and "exited with code 1" in built["message"], built
    assert "kenv-package-that-does-not-exist-xyz" in built["message"]
    assert "error building image" in built["message"]  # Kaniko's own last words, read from the pod's log
