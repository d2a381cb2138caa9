"""Shared fixtures. Everything cluster-related is lazy: unit tests never start a cluster.

Env vars:
  KENV_TEST_KUBECONFIG  use this cluster instead of starting hack/localcluster.py (then KENV_TEST_REGISTRY
                        names a registry both this machine and the cluster's nodes reach, KENV_TEST_KUBECTL its
                        kubectl, default: kubectl on PATH)
  KUBEBUILDER_ASSETS    folder with etcd/kube-apiserver/kubelet/... (else hack/build-binaries.sh builds or finds them)
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import urllib.error
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "hack"))

# kenv's own session fixtures, registered here once: a conftest per directory would start one operator each.
import images  # noqa: E402
from kenvfixtures import base_image, build_namespace, ca_config_map, crds, operator, pause_image  # noqa: E402, F401
from kubeapi import KubeAPI  # noqa: E402
from localcluster import LOCAL_HOSTS, LocalCluster  # noqa: E402
from procs import ensure_no_proxy, proc_start_time  # noqa: E402

CLUSTER_DIRS = ("integration", "reliability")

# Property tests explore the same examples on every CI run (a red CI must be reproducible); set
# HYPOTHESIS_PROFILE=explore locally to search new random examples.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(item.path).relative_to(ROOT / "tests").parts[0] in CLUSTER_DIRS:
            item.add_marker(pytest.mark.integration)
    # One node per machine: a test with its own cluster must run before the shared one starts (stable sort).
    items.sort(key=lambda item: item.get_closest_marker("own_cluster") is None)


@dataclass
class ExternalCluster:
    """A cluster run by someone else (KENV_TEST_KUBECONFIG): LocalCluster's attributes, nothing to stop."""

    kubeconfig: Path
    registry: str
    kubectl: str
    state_dir: Path
    node = None  # no access to its nodes: faults are injected through the API only

    @property
    def server(self) -> str:
        return KubeAPI(self.kubeconfig).server


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    ensure_no_proxy(hosts=LOCAL_HOSTS)  # this process talks to the node address too (apiserver, registry, pods)
    if os.environ.get("KENV_TEST_KUBECONFIG"):
        kubectl = os.environ.get("KENV_TEST_KUBECTL") or shutil.which("kubectl") or "kubectl"
        registry = os.environ.get("KENV_TEST_REGISTRY", "")
        yield ExternalCluster(Path(os.environ["KENV_TEST_KUBECONFIG"]), registry,
                              kubectl, tmp_path_factory.mktemp("external"))
        return
    local = LocalCluster(state_dir=tmp_path_factory.mktemp("cluster"))
    local.start()
    yield local
    procs = list(local.procs)
    images.remove_pushed_copies(local.registry)
    local.stop()  # raises if anything survives SIGKILL
    leftovers = [p["name"] for p in procs if proc_start_time(p["pid"]) == p["start"]]
    assert not leftovers, f"still running after stop(): {leftovers}"
    assert not local.node.leftovers(), "the node left traces on this machine (see tests/integration/test_node.py)"


@pytest.fixture(scope="session")
def kubeconfig(cluster) -> Path:
    return Path(cluster.kubeconfig)


@pytest.fixture(scope="session")
def registry(cluster) -> str:
    return cluster.registry


@pytest.fixture(scope="session")
def kube(cluster) -> KubeAPI:
    """A small synchronous admin client (hack/kubeapi.KubeAPI) for test setup and polling."""
    return KubeAPI(cluster.kubeconfig)


@pytest.fixture
def namespace(kube) -> str:
    """A fresh namespace per test, ready for pods (its `default` ServiceAccount exists), deleted after."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": name, "labels": {"kenv.dev/test": "1"}}})
    # The ServiceAccount admission plugin rejects pods until serviceaccount-controller made `default`;
    # a Job would then back off for seconds, so wait here instead.
    deadline = time.monotonic() + 30
    while True:
        try:
            kube.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")
            break
        except urllib.error.HTTPError as e:
            if e.code != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield name
    # Not waited for: the namespace controller and the kubelet (for pods) finish it in the background.
    kube.request("DELETE", f"/api/v1/namespaces/{name}")
