"""Incremental builds (spec.build.incremental) in real pods: an edit that adds a pip requirement is installed into
the current version's image by a pod running that image, and the changed files are pushed as layers on top of it;
the new image runs, its lock lists the added package; a changed pin is installed the same way; a failed
incremental build is followed by a full one; any other edit still gets a full Kaniko build."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

import pypiindex
from condaserver import ChannelServer
from kenvfixtures import (
    BUILD_NAMESPACE,
    build_pod,
    create_env,
    edit,
    env_versions,
    events_for,
    get_env,
    job_pods,
    layer_digests,
    layer_paths,
    registry_get,
    run_pod,
    wait_for,
    wait_phase,
    wait_version,
)
from nodeconfig import NODE_IP

pytestmark = pytest.mark.usefixtures("operator")
REPOSITORY = "kenv/environments"
MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
IMPORTS = "import json, importlib.metadata as m; print(json.dumps({d.metadata['Name'].lower(): d.version " \
          "for d in m.distributions()}))"


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Iterator[ChannelServer]:
    root = pypiindex.build(tmp_path_factory.mktemp("pypi-index"),
                           ["six==1.16.0", "six==1.17.0", "idna==3.7", "tomli==2.0.1"])
    with ChannelServer(root, host=NODE_IP, cache_control=pypiindex.PYPI_FILE_CACHE_CONTROL) as server:
        yield server


def installed(kube, namespace: str, image: str) -> dict[str, str]:
    """The distributions the image's python imports, by running it."""
    name = f"show-{uuid.uuid4().hex[:6]}"
    pod, log = run_pod(kube, namespace, name, {"containers": [
        {"name": "c", "image": image, "command": ["python3", "-c", IMPORTS]}]})
    assert pod["status"]["phase"] == "Succeeded", log[-2000:]
    return dict(json.loads(log.strip().splitlines()[-1]))


def test_an_added_requirement_is_installed_into_the_current_image_as_layers_on_top(
        kube, cluster, namespace, base_image, index):
    marker = uuid.uuid4().hex[:8]
    source = [f"# incremental {marker}", f"--index-url {index.url}/simple", f"--trusted-host {NODE_IP}:{index.port}"]

    def spec(*packages: str) -> dict:
        return {"docker": {"baseImage": base_image}, "build": {"incremental": True},
                "pip": {"requirements": "\n".join([*source, *packages]) + "\n"}}
    create_env(kube, namespace, "inc", spec("six==1.16.0"))
    first = wait_version(kube, namespace, "inc", 1, timeout=600)["status"]
    full_pod, _ = build_pod(kube, first)
    assert [c["name"] for c in full_pod["spec"]["containers"]] == ["build"]  # the first build is Kaniko's
    assert "initContainers" not in full_pod["spec"]

    edit(kube, namespace, "inc", spec("six==1.16.0", "idna==3.7"))
    second = wait_version(kube, namespace, "inc", 2, timeout=300)["status"]
    pod = job_pods(kube, BUILD_NAMESPACE, second["buildJob"]["name"])[-1]
    assert [c["image"] for c in pod["spec"]["initContainers"]] == [first["image"]]  # installed in the old image
    install_log = kube.text(f"/api/v1/namespaces/{BUILD_NAMESPACE}/pods/{pod['metadata']['name']}/log"
                            "?container=install")
    assert "Successfully installed idna-3.7\n" in install_log, install_log[-3000:]  # six was there already
    assert second["image"].endswith("@" + second["digest"])
    ready = next(c for c in second["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "IncrementalBuild", ready

    # The new image is the old one with two layers on top: idna's files, then the lock alone.
    old_layers = layer_digests(cluster.registry, REPOSITORY, first["digest"])
    new_layers = layer_digests(cluster.registry, REPOSITORY, second["digest"])
    assert new_layers[:-2] == old_layers and len(new_layers) == len(old_layers) + 2
    added = layer_paths(cluster.registry, REPOSITORY, new_layers[-2])
    assert any(path.endswith("-packages/idna/__init__.py") for path in added), sorted(added)[:20]
    assert not any("/six" in path for path in added)
    assert "tmp/kenv/requirements.txt" in added  # the image's copy of its requirements is the new file
    assert layer_paths(cluster.registry, REPOSITORY, new_layers[-1]) == {"etc/kenv/lock.json"}
    manifest = json.loads(registry_get(cluster.registry, f"{REPOSITORY}/manifests/{second['digest']}",
                                       MANIFEST_TYPES))
    config = json.loads(registry_get(cluster.registry, f"{REPOSITORY}/blobs/{manifest['config']['digest']}"))
    assert len(config["rootfs"]["diff_ids"]) == len(new_layers)
    assert "pip install idna==3.7" in config["history"][-1]["created_by"]

    # It runs, with both packages; its version's lock lists both.
    assert {"six": "1.16.0", "idna": "3.7"}.items() <= installed(kube, namespace, second["image"]).items()
    version = next(v["spec"] for v in env_versions(kube, namespace, "inc") if v["spec"]["version"] == 2)
    assert version["reason"] == "IncrementalBuild"
    locked = {p["name"].lower(): p["version"] for p in version["lock"]["packages"] if p["manager"] == "pip"}
    assert locked["idna"] == "3.7" and locked["six"] == "1.16.0"

    # A changed pin (six 1.16.0 to 1.17.0) is installed into version 2's image too: pip replaces six, and the old
    # version's metadata becomes a whiteout in the new layer.
    edit(kube, namespace, "inc", spec("six==1.17.0", "idna==3.7"))
    third = wait_version(kube, namespace, "inc", 3, timeout=300)["status"]
    assert next(c for c in third["conditions"] if c["type"] == "Ready")["reason"] == "IncrementalBuild"
    pod = job_pods(kube, BUILD_NAMESPACE, third["buildJob"]["name"])[-1]
    assert [c["image"] for c in pod["spec"]["initContainers"]] == [second["image"]]
    changed = layer_paths(cluster.registry, REPOSITORY,
                          layer_digests(cluster.registry, REPOSITORY, third["digest"])[-2])
    assert any(path.endswith("-packages/.wh.six-1.16.0.dist-info") for path in changed), sorted(changed)
    assert any(path.endswith("-packages/six-1.17.0.dist-info/METADATA") for path in changed), sorted(changed)
    assert not any("idna" in path for path in changed)
    assert {"six": "1.17.0", "idna": "3.7"}.items() <= installed(kube, namespace, third["image"]).items()

    # A package the index does not have: the install fails, and a full build follows at once and decides (it
    # fails too, pip's message in its log); version 3 stays current, and the content is not tried incrementally
    # again.
    edit(kube, namespace, "inc", spec("six==1.17.0", "idna==3.7", "kenv-no-such-package==1.0"))
    failed = wait_phase(kube, namespace, "inc", {"Failed"}, timeout=600)["status"]
    assert "kenv-no-such-package" in failed["failedBuildLog"]
    assert (failed["version"], failed["image"]) == (3, third["image"])
    assert failed["incrementalFailed"] == failed["desiredHash"]
    full_pod, _ = build_pod(kube, failed)
    assert "initContainers" not in full_pod["spec"] and [c["name"] for c in full_pod["spec"]["containers"]] == ["build"]
    warned = [e["message"] for e in events_for(kube, namespace, "inc") if e["reason"] == "IncrementalBuildFailed"]
    assert warned and all(m.endswith(" failed: pip install failed; a full build follows") for m in warned), warned
    assert "exited with code 1" in next(c for c in failed["conditions"] if c["type"] == "Built")["message"]

    # A removed line (idna swapped for tomli: another package, not another version) needs a full Kaniko build.
    generation = edit(kube, namespace, "inc", spec("six==1.17.0", "tomli==2.0.1"))
    wait_for(lambda: get_env(kube, namespace, "inc")["status"].get("observedGeneration") == generation, 60,
             "the operator to see the edit")
    fourth = wait_version(kube, namespace, "inc", 4, timeout=600)["status"]
    pod, _ = build_pod(kube, fourth)
    assert "initContainers" not in pod["spec"] and [c["name"] for c in pod["spec"]["containers"]] == ["build"]
    shown = installed(kube, namespace, fourth["image"])
    assert "tomli" in shown and "idna" not in shown
