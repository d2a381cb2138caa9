"""Fixtures for tests that run kenv itself against the cluster: CRDs, base image, the operator process."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from operatorproc import BUILD_NAMESPACE, OperatorProcess

ROOT = Path(__file__).resolve().parent.parent
CA_BUNDLE = Path(os.environ.get("KENV_TEST_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
GROUP_PATH = "/apis/kenv.dev/v1alpha1"


def kubectl(cluster: Any, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([cluster.kubectl, "--kubeconfig", str(cluster.kubeconfig), *args], input=stdin,
                          capture_output=True, text=True, check=check)


def wait_for(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition", interval: float = 0.5) -> Any:
    """Poll predicate() until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def get_env(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    return dict(kube.request("GET", f"{GROUP_PATH}/namespaces/{namespace}/environments/{name}"))


def environment(name: str, spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    return {"apiVersion": "kenv.dev/v1alpha1", "kind": "Environment",
            "metadata": {"name": name, **metadata}, "spec": spec}


def create_env(kube: Any, namespace: str, name: str, spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    body = environment(name, spec, **metadata)
    return dict(kube.request("POST", f"{GROUP_PATH}/namespaces/{namespace}/environments", body))


def wait_phase(kube: Any, namespace: str, name: str, phases: set[str], timeout: float = 300) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body = get_env(kube, namespace, name)
        return body if (body.get("status") or {}).get("phase") in phases else None
    return dict(wait_for(reached, timeout, f"env {namespace}/{name} in {phases}"))


def build_jobs(kube: Any, content_hash: str | None = None) -> list[dict[str, Any]]:
    selector = "kenv.dev/role%3Dbuild" + (f",kenv.dev/hash%3D{content_hash[:40]}" if content_hash else "")
    return list(kube.request("GET", f"/apis/batch/v1/namespaces/{BUILD_NAMESPACE}/jobs?labelSelector={selector}")
                ["items"])


def registry_digest(registry: str, repository: str, tag: str) -> str | None:
    import urllib.request

    request = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{tag}", method="HEAD",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                           "application/vnd.docker.distribution.manifest.v2+json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.headers.get("Docker-Content-Digest")
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


@pytest.fixture(scope="session")
def crds(cluster: Any) -> None:
    kubectl(cluster, "apply", "-f", str(ROOT / "crds"))
    for plural in ("environments", "clusterenvironments"):
        kubectl(cluster, "wait", "--for=condition=Established", f"crd/{plural}.kenv.dev", "--timeout=60s")


@pytest.fixture(scope="session")
def base_image(cluster: Any) -> Iterator[str]:
    """A real Debian+python3 image in the test registry (hack/base-image.sh; rootfs cached across runs)."""
    result = subprocess.run([str(ROOT / "hack/base-image.sh")], env={**os.environ, "KENV_REGISTRY": cluster.registry},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    yield result.stdout.strip().splitlines()[-1]
    remove_local_images(cluster.registry)


def remove_local_images(registry: str) -> None:
    """buildah's vfs store keeps a full copy of every image built or pulled; drop this session's."""
    listing = subprocess.run(["buildah", "--storage-driver", "vfs", "images", "--format", "{{.ID}} {{.Name}}"],
                             capture_output=True, text=True).stdout.split("\n")
    ids = sorted({line.split()[0] for line in listing if f" {registry}/" in f" {line.partition(' ')[2]}"})
    if ids:
        subprocess.run(["buildah", "--storage-driver", "vfs", "rmi", "--force", *ids], capture_output=True)


@pytest.fixture(scope="session")
def build_namespace(kube: Any) -> str:
    try:
        kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": BUILD_NAMESPACE}})
    except urllib.error.HTTPError as error:
        if error.code != 409:
            raise
    return BUILD_NAMESPACE


@pytest.fixture(scope="session")
def operator(cluster: Any, crds: None, build_namespace: str, fakelet: Any,
             tmp_path_factory: pytest.TempPathFactory) -> Any:
    process = OperatorProcess(cluster.kubeconfig, cluster.registry,
                              tmp_path_factory.mktemp("operator") / "operator.log",
                              max_parallel_builds="2", webhook_url_host="127.0.0.1",
                              base_image_check_seconds="2")
    process.start()
    wait_for(lambda: kubectl(cluster, "get", "mutatingwebhookconfiguration", "kenv.dev", check=False).returncode == 0,
             30, "kopf to register the webhook configuration")
    yield process
    process.stop()


@pytest.fixture
def ca_config_map(kube: Any, namespace: str) -> dict[str, str]:
    """The machine's CA bundle (it includes the TLS proxy's CA) as the ConfigMap spec.build.caBundle names."""
    kube.request("POST", f"/api/v1/namespaces/{namespace}/configmaps",
                 {"metadata": {"name": "kenv-ca"}, "data": {"ca.crt": CA_BUNDLE.read_text()}})
    return {"name": "kenv-ca", "key": "ca.crt"}


def events_for(kube: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    items = kube.request("GET", f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name%3D{name}")
    return list(items["items"])


def dump(obj: Any) -> str:
    return yaml.safe_dump(json.loads(json.dumps(obj)), sort_keys=False)
