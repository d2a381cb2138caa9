"""Package caches and the uv installer in real Kaniko build pods (the session's release mounts a package cache,
hack/release.py): a later build takes its wheels from the cache an earlier build pod left (pip from an index that
sends PyPI's Cache-Control, hack/pypiindex.py; uv from PyPI itself), nothing of the cache or of uv reaches an
image, and uv installs into the image's python what pip would, in a full build and in an incremental one."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import pypiindex
from condaserver import ChannelServer
from kenvfixtures import (
    BUILD_NAMESPACE,
    added_paths,
    build_pod,
    create_env,
    edit,
    job_pods,
    layer_digests,
    layer_paths,
    registry_digest,
    run_pod,
    wait_phase,
    wait_version,
)
from nodeconfig import NODE_IP

pytestmark = pytest.mark.usefixtures("operator")


def requirements(marker: str, *lines: str) -> str:
    """A comment keeps each run's requirements new, so Kaniko runs the install step instead of reusing it."""
    return "\n".join([f"# kenv cache test {marker}", *lines]) + "\n"


def built(kube, namespace, name, spec) -> tuple[dict, str]:
    create_env(kube, namespace, name, spec)
    env = wait_phase(kube, namespace, name, {"Ready", "Failed"}, timeout=600)
    pod, log = build_pod(kube, env["status"])
    assert env["status"]["phase"] == "Ready", (env["status"], log[-3000:])
    return env, log


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Iterator[ChannelServer]:
    """six and idna from PyPI, served on the node's bridge with PyPI's Cache-Control (the proxy drops it)."""
    root = pypiindex.build(tmp_path_factory.mktemp("pypi-index"), ["six==1.16.0", "idna==3.7"])
    with ChannelServer(root, host=NODE_IP, cache_control=pypiindex.PYPI_FILE_CACHE_CONTROL) as server:
        yield server


def test_a_later_build_takes_its_wheels_from_the_cache_an_earlier_build_pod_left(
        kube, cluster, namespace, base_image, index, operator):
    cache = operator.values()["packageCache"]["hostPath"]
    if not cache:
        pytest.skip("this release has no package cache (its node is not this machine: hack/release.py)")
    marker = uuid.uuid4().hex[:8]
    source = (f"--index-url {index.url}/simple", f"--trusted-host {NODE_IP}:{index.port}")

    def six_downloads() -> int:
        return sum(1 for r in list(index.requests) if r.path.endswith("/six-1.16.0-py2.py3-none-any.whl"))
    first, log = built(kube, namespace, "first", {"docker": {"baseImage": base_image}, "pip": {
        "requirements": requirements(marker, *source, "six==1.16.0")}})
    assert six_downloads() == 1, log[-3000:]
    second, log = built(kube, namespace, "second", {"docker": {"baseImage": base_image}, "pip": {
        "requirements": requirements(marker, *source, "six==1.16.0", "idna==3.7")}})
    # pip's own words, and the index's: the wheel came from pip's HTTP cache on the volume
    assert re.search(r"Using cached \S*/six-1\.16\.0-py2\.py3-none-any\.whl", log), log[-3000:]
    assert "Successfully installed idna-3.7 six-1.16.0" in log
    assert six_downloads() == 1
    assert any(path.is_file() for path in (Path(cache) / "pip").rglob("*")), f"nothing cached in {cache}/pip"
    for env in (first, second):  # the cache lives on the volume only
        added = added_paths(cluster.registry, base_image, env["status"]["digest"])
        leaked = {p for p in added if p.startswith(("kaniko", "root/.cache")) or "/.cache/pip" in p}
        assert not leaked, sorted(leaked)


def test_uv_installs_the_requirements_into_the_images_python_and_leaves_itself_out(
        kube, cluster, namespace, base_image, ca_config_map):
    marker = uuid.uuid4().hex[:8]

    def uv_spec(*packages: str) -> dict:
        pip = {"installer": "uv", "requirements": requirements(marker, *packages)}
        return {"docker": {"baseImage": base_image}, "pip": pip,
                "build": {"caBundle": ca_config_map, "incremental": True}}

    def uv_env(name: str, *packages: str) -> tuple[dict, str]:
        return built(kube, namespace, name, uv_spec(*packages))
    env, log = uv_env("uv", "six==1.16.0", "idna==3.7")
    assert " + six==1.16.0" in log and " + idna==3.7" in log, log[-3000:]  # uv's report of what it installed
    tag = "kenv-" + env["status"]["hash"][:40]
    assert registry_digest(cluster.registry, "kenv/environments", tag) == env["status"]["digest"]
    added = added_paths(cluster.registry, base_image, env["status"]["digest"])
    assert not {p for p in added if p.startswith(("tmp/kenv-uv", "kaniko", "root/.cache"))}
    assert any(p.endswith("/six.py") for p in added) and any("/idna/__pycache__/" in p for p in added), \
        sorted(added)[:80]  # bytecode compiled, as pip does
    pod, out = run_pod(kube, namespace, "train-uv", {"containers": [{
        "name": "train", "image": "placeholder", "command": [
            "python3", "-c", "import idna, six; print(six.__version__, idna.__version__)"]}]},
        labels={"kenv.dev/environment": "uv"})
    assert pod["status"]["phase"] == "Succeeded" and out.strip() == "1.16.0 3.7", out

    # One package more: uv prepares (downloads and unpacks) only that one, the others come from its cache.
    _, log = uv_env("uv-more", "six==1.16.0", "idna==3.7", "packaging==24.2")
    assert "Prepared 1 package in" in log and " + packaging==24.2" in log, log[-3000:]

    # An added line, incrementally: uv (pip-installed beside the image, as in the Dockerfile) installs it into the
    # running version 1 image; the layer on top holds the package, not uv.
    edit(kube, namespace, "uv", uv_spec("six==1.16.0", "idna==3.7", "tomli==2.0.1"))
    second = wait_version(kube, namespace, "uv", 2, timeout=300)["status"]
    assert next(c for c in second["conditions"] if c["type"] == "Ready")["reason"] == "IncrementalBuild", second
    pod = job_pods(kube, BUILD_NAMESPACE, second["buildJob"]["name"])[-1]
    install_log = kube.text(f"/api/v1/namespaces/{BUILD_NAMESPACE}/pods/{pod['metadata']['name']}/log"
                            "?container=install")
    assert " + tomli==2.0.1" in install_log and " + six" not in install_log, install_log[-3000:]
    layers = layer_digests(cluster.registry, "kenv/environments", second["digest"])
    added = layer_paths(cluster.registry, "kenv/environments", layers[-2])
    assert any(p.endswith("-packages/tomli/__init__.py") for p in added) and \
        any("/tomli/__pycache__/" in p for p in added), sorted(added)[:40]
    assert not {p for p in added if "kenv-uv" in p or p.endswith("/bin/uv") or "/uv-" in p}, sorted(added)
    pod, out = run_pod(kube, namespace, "train-uv-2", {"containers": [{
        "name": "train", "image": second["image"], "command": [
            "python3", "-c", "import idna, six, tomli; print(six.__version__, idna.__version__)"]}]})
    assert pod["status"]["phase"] == "Succeeded" and out.strip() == "1.16.0 3.7", out
