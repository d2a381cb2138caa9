"""Fixtures for tests that run kenv itself against the cluster: CRDs, images, the Helm-installed operator."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import images
from kenv.logs import kaniko_steps
from release import BUILD_NAMESPACE, KenvRelease

ROOT = Path(__file__).resolve().parent.parent
CA_BUNDLE = Path(os.environ.get("KENV_TEST_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
GROUP_PATH = "/apis/kenv.dev/v1alpha1"


def kubectl(cluster: Any, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """kubectl against the test cluster; with check, a failure raises with kubectl's own message in it."""
    result = subprocess.run([cluster.kubectl, "--kubeconfig", str(cluster.kubeconfig), *args], input=stdin,
                            capture_output=True, text=True)
    if check and result.returncode:
        raise RuntimeError(f"kubectl {' '.join(args)} exited {result.returncode}: "
                           f"{result.stderr.strip() or result.stdout.strip()}")
    return result


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


def env_versions(kube: Any, namespace: str | None, name: str) -> list[dict[str, Any]]:
    """An Environment's (namespace None: a ClusterEnvironment's) EnvironmentVersion objects, oldest first."""
    path = f"{GROUP_PATH}/namespaces/{namespace}/environments/{name}" if namespace else \
        f"{GROUP_PATH}/clusterenvironments/{name}"
    uid = kube.request("GET", path)["metadata"]["uid"]
    found = kube.request("GET", f"{GROUP_PATH}/environmentversions?labelSelector=kenv.dev/environment-uid%3D{uid}")
    return sorted(found["items"], key=lambda v: v["spec"]["version"])


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


def edit(kube: Any, namespace: str, name: str, spec: dict[str, Any]) -> int:
    """Merge-patch the spec; returns the new generation."""
    body = kube.request("PATCH", f"{GROUP_PATH}/namespaces/{namespace}/environments/{name}", {"spec": spec},
                        content_type="application/merge-patch+json")
    return int(body["metadata"]["generation"])


def wait_version(kube: Any, namespace: str, name: str, version: int, timeout: float = 300) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        env = get_env(kube, namespace, name)
        status = env.get("status") or {}
        assert status.get("phase") != "Failed", status
        current = status.get("version") == version and status.get("phase") == "Ready"
        return env if current and status.get("observedGeneration") == env["metadata"]["generation"] else None
    return dict(wait_for(reached, timeout, f"{namespace}/{name} version {version} Ready"))


def build_jobs(kube: Any, content_hash: str | None = None) -> list[dict[str, Any]]:
    selector = "kenv.dev/role%3Dbuild" + (f",kenv.dev/hash%3D{content_hash[:40]}" if content_hash else "")
    return list(kube.request("GET", f"/apis/batch/v1/namespaces/{BUILD_NAMESPACE}/jobs?labelSelector={selector}")
                ["items"])


MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


def registry_digest(registry: str, repository: str, tag: str) -> str | None:
    request = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{tag}", method="HEAD", headers={"Accept": MANIFEST_TYPES})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.headers.get("Docker-Content-Digest")
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


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


def last_layer(registry: str, digest: str) -> tuple[str, set[str]]:
    """(digest, paths) of an Environment image's last layer."""
    layer = layer_digests(registry, "kenv/environments", digest)[-1]
    return layer, layer_paths(registry, "kenv/environments", layer)


def added_paths(registry: str, base_image: str, digest: str) -> set[str]:
    """Every path in the layers an Environment's image adds over its base image (base_image: registry/repo:tag)."""
    base_repository, base_tag = base_image.split("/", 1)[1].rsplit(":", 1)
    base_layers = layer_digests(registry, base_repository, base_tag)
    layers = layer_digests(registry, "kenv/environments", digest)
    assert layers[:len(base_layers)] == base_layers and len(layers) > len(base_layers)
    return set().union(*(layer_paths(registry, "kenv/environments", d) for d in layers[len(base_layers):]))


@pytest.fixture(scope="session")
def crds(cluster: Any) -> None:
    kubectl(cluster, "apply", "-f", str(ROOT / "crds"))
    for plural in ("environments", "clusterenvironments", "environmentversions"):
        kubectl(cluster, "wait", "--for=condition=Established", f"crd/{plural}.kenv.dev", "--timeout=60s")


@pytest.fixture(scope="session")
def base_image(cluster: Any) -> str:
    """A real Debian+python3 image in the test registry (hack/images.py; rootfs and image cached across runs)."""
    return images.build(["base"], cluster.registry)["base"]


@pytest.fixture(scope="session")
def pause_image(cluster: Any) -> str:
    """The smallest image there is (hack/images/pause.c): for pods whose container only has to exist."""
    return images.build(["pause"], cluster.registry)["pause"]


@pytest.fixture(scope="session")
def build_namespace(kube: Any) -> str:
    try:
        kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": BUILD_NAMESPACE}})
    except urllib.error.HTTPError as error:
        if error.code != 409:
            raise
    return BUILD_NAMESPACE


# The session operator's settings: quick polling so tests do not wait on production intervals.
OPERATOR_SETTINGS = {"poll_seconds": "1", "base_image_check_seconds": "2", "reference_check_seconds": "2"}


@pytest.fixture(scope="session")
def operator(cluster: Any, crds: None, build_namespace: str) -> Iterator[KenvRelease]:
    """kenv installed by Helm into the build namespace, as users install it: the operator is a real pod."""
    release = KenvRelease(cluster, settings=OPERATOR_SETTINGS, values={"maxParallelBuilds": 2, "historyLimit": 3})
    release.install()
    yield release
    release.uninstall()


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


def run_pod(kube: Any, namespace: str, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None,
            timeout: float = 180) -> tuple[dict[str, Any], str]:
    """Create a pod (restartPolicy Never), wait until it ends, return (pod, its log)."""
    body = {"metadata": {"name": name, "labels": labels or {}}, "spec": {"restartPolicy": "Never", **spec}}
    kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body)

    def finished() -> dict[str, Any] | None:
        pod = kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        return pod if pod.get("status", {}).get("phase") in ("Succeeded", "Failed") else None
    pod = wait_for(finished, timeout, f"pod {namespace}/{name} to finish")
    return pod, pod_log(kube, namespace, name)


def pod_log(kube: Any, namespace: str, pod: str) -> str:
    return str(kube.text(f"/api/v1/namespaces/{namespace}/pods/{pod}/log"))


def job_pods(kube: Any, namespace: str, job: str) -> list[dict[str, Any]]:
    return list(kube.request("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector=job-name%3D{job}")["items"])


def job_outcome(kube: Any, namespace: str, job: str) -> str | None:
    """Complete or Failed once the Job has finished, else None."""
    status = kube.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/{job}").get("status", {})
    finished = [c["type"] for c in status.get("conditions") or []
                if c["type"] in ("Complete", "Failed") and c["status"] == "True"]
    return finished[0] if finished else None


def build_pod(kube: Any, status: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The (last) pod of an Environment's status.buildJob and its log."""
    job = status["buildJob"]
    pod = job_pods(kube, job["namespace"], job["name"])[-1]
    return pod, pod_log(kube, job["namespace"], pod["metadata"]["name"])


def step_reused(log: str, command_part: str) -> bool:
    """Whether Kaniko reused (True) or built (False) the one cacheable step whose instruction has command_part."""
    [reused] = [reused for instruction, reused in kaniko_steps(log) if command_part in instruction]
    return reused


def exit_code(pod: dict[str, Any], container: str | None = None) -> int:
    statuses = pod["status"]["containerStatuses"]
    status = next(s for s in statuses if container in (None, s["name"]))
    return int(status["state"]["terminated"]["exitCode"])


def pod(name: str, labels: dict[str, str], annotations: dict[str, str] | None = None, **container: object) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels, "annotations": annotations or {}},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "train", "image": "placeholder", **container}]}}


def create_pod(kube, namespace: str, body: dict) -> dict:
    return dict(kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body))


def refused(kube, namespace: str, body: dict) -> str:
    with pytest.raises(urllib.error.HTTPError) as error:
        create_pod(kube, namespace, body)
    return error.value.read().decode()


def env_vars(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@contextlib.contextmanager
def session_operator_paused(cluster: Any) -> Iterator[None]:
    """Scale the session's operator (if it was started) to 0 while another release acts on Environments."""
    session = KenvRelease(cluster)
    try:
        running = session.replicas("controller") + session.replicas("admission") > 0
    except urllib.error.HTTPError as error:
        if error.code != 404:
            raise
        running = False
    if running:
        session.stop()
    try:
        yield
    finally:
        if running:
            session.start()


def run_kenv(cluster: Any, *args: str) -> subprocess.CompletedProcess:
    """The `kenv` command line against the test cluster."""
    env = {"KUBECONFIG": str(cluster.kubeconfig), "PATH": "/usr/bin:/bin", "NO_PROXY": "*"}
    return subprocess.run([sys.executable, "-m", "kenv.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def kenv_cli(cluster: Any, *args: str) -> str:
    done = run_kenv(cluster, *args)
    assert done.returncode == 0, done.stderr
    return str(done.stdout)
