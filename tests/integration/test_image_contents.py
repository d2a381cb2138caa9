"""What a version's image holds (issue 15), on the real cluster: the lock a real build records lists exactly the
distributions the built image imports, with the versions their modules report; `kenv packages` prints it and
`kenv diff` shows how it moved; an image found in the registry gets the same lock; the SBOM is attached to the
image digest (found as the OCI distribution spec says, without kenv's code) and valid CycloneDX."""

from __future__ import annotations

import json
import urllib.error
import uuid
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from kenvfixtures import (
    edit,
    env_versions,
    kenv_cli,
    last_layer,
    registry_get,
    run_pod,
    wait_phase,
    wait_version,
)

pytestmark = pytest.mark.usefixtures("operator")
REPOSITORY = "kenv/environments"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
CYCLONEDX = "application/vnd.cyclonedx+json"
# What the image's python imports, and the versions the modules themselves report.
SHOW = """import importlib.metadata as m, json, six, packaging
dists = {}
for dist in m.distributions():  # the first on sys.path is the one imported
    dists.setdefault(dist.metadata["Name"].lower(), dist.version)
print(json.dumps({"dists": dists, "six": six.__version__, "packaging": packaging.__version__}))"""


def pip_versions(lock: dict[str, Any]) -> dict[str, str]:
    return {p["name"].lower(): p["version"] for p in lock["packages"] if p["manager"] == "pip"}


def version_spec(kube: Any, namespace: str, name: str, number: int) -> dict[str, Any]:
    return next(v["spec"] for v in env_versions(kube, namespace, name) if v["spec"]["version"] == number)


def referrers(registry: str, digest: str) -> dict[str, Any]:
    """The artifacts attached to an image digest, as a client of the OCI distribution spec finds them: the
    referrers API, or where a registry has none (distribution v3 has not), the tag schema's `sha256-<hex>`."""
    try:
        return dict(json.loads(registry_get(registry, f"{REPOSITORY}/referrers/{digest}", OCI_INDEX)))
    except urllib.error.HTTPError as error:
        if error.code != 404:
            raise
    return dict(json.loads(registry_get(registry, f"{REPOSITORY}/manifests/{digest.replace(':', '-')}", OCI_INDEX)))


def attached_sbom(registry: str, digest: str) -> tuple[str, bytes]:
    """The SBOM attached to the image, found from its digest (plain HTTP, none of kenv's code)."""
    index = referrers(registry, digest)
    sboms = [d for d in index["manifests"] if d.get("artifactType") == CYCLONEDX]
    assert len(sboms) == 1, index
    manifest = json.loads(registry_get(registry, f"{REPOSITORY}/manifests/{sboms[0]['digest']}",
                                       "application/vnd.oci.image.manifest.v1+json"))
    assert manifest["subject"]["digest"] == digest
    return sboms[0]["digest"], registry_get(registry, f"{REPOSITORY}/blobs/{manifest['layers'][0]['digest']}")


def test_a_build_records_the_lock_of_what_its_image_imports_and_attaches_a_valid_sbom(
        kube, cluster, namespace, base_image, ca_config_map):
    # A fresh content each run (a comment in the requirements), so this run's build is what is measured.
    requirements = f"# {uuid.uuid4().hex[:8]}\nsix==1.16.0\npackaging==24.1\n"
    spec = {"docker": {"baseImage": base_image}, "pip": {"requirements": requirements},
            "build": {"caBundle": ca_config_map}}
    kube.request("POST", f"/apis/kenv.dev/v1alpha1/namespaces/{namespace}/environments", {
        "apiVersion": "kenv.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "locked"}, "spec": spec})
    env = wait_phase(kube, namespace, "locked", {"Ready", "Failed"}, timeout=900)
    assert env["status"]["phase"] == "Ready", env["status"]
    first = version_spec(kube, namespace, "locked", 1)
    lock = first["lock"]
    assert "error" not in lock, lock
    locked = pip_versions(lock)
    assert locked["six"] == "1.16.0" and locked["packaging"] == "24.1"
    assert next(p for p in lock["packages"] if p["name"].lower() == "six")["installer"] == "pip"

    pod, log = run_pod(kube, namespace, "show", {"containers": [
        {"name": "show", "image": env["status"]["image"], "command": ["python3", "-c", SHOW]}]})
    assert pod["status"]["phase"] == "Succeeded", log
    imported = json.loads(log.strip().splitlines()[-1])
    assert locked == imported["dists"]  # every distribution the image imports, each at its version
    assert (locked["six"], locked["packaging"]) == (imported["six"], imported["packaging"])
    assert lock["python"].count(".") == 2
    layer, paths = last_layer(cluster.registry, env["status"]["digest"])  # alone in the image's last layer
    assert lock["layer"] == layer and "etc/kenv/lock.json" in paths
    assert not [p for p in paths if "-packages/" in p], sorted(paths)

    table = kenv_cli(cluster, "packages", "locked", "-n", namespace)
    rows = {line.split()[0].lower(): line.split()[1:3] for line in table.splitlines()[1:] if line.strip()
            and not line.startswith("(")}
    assert rows["six"] == ["1.16.0", "pip"] and rows["packaging"] == ["24.1", "pip"]

    # The SBOM: attached to this digest, found by the registry's referrers API, valid CycloneDX 1.6.
    sbom_digest, document = attached_sbom(cluster.registry, env["status"]["digest"])
    assert first["sbom"] == f"{cluster.registry}/{REPOSITORY}@{sbom_digest}"
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(document.decode()) is None
    sbom = json.loads(document)
    assert sbom["metadata"]["component"]["version"] == env["status"]["digest"]
    purls = {c["purl"] for c in sbom["components"]}
    assert {"pkg:pypi/six@1.16.0", "pkg:pypi/packaging@24.1"} <= purls
    assert len(sbom["components"]) == len(lock["packages"])
    assert kenv_cli(cluster, "sbom", "locked", "-n", namespace, "--insecure").encode() == document

    # The same content elsewhere: the image is found, not rebuilt, and its version has the same lock and SBOM.
    kube.request("POST", f"/apis/kenv.dev/v1alpha1/namespaces/{namespace}/environments", {
        "apiVersion": "kenv.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "twin"}, "spec": spec})
    twin = wait_phase(kube, namespace, "twin", {"Ready", "Failed"}, timeout=300)
    twin_version = version_spec(kube, namespace, "twin", 1)
    assert twin_version["reason"] == "ImageFound" and twin["status"]["digest"] == env["status"]["digest"]
    assert twin_version["lock"] == lock and twin_version["sbom"] == first["sbom"]
    attached_sbom(cluster.registry, env["status"]["digest"])  # still one SBOM for the image

    # A new version moves one package: `kenv diff` says which, and from what to what.
    edit(kube, namespace, "locked", {"pip": {"requirements": requirements.replace("six==1.16.0", "six==1.15.0")}})
    wait_version(kube, namespace, "locked", 2, timeout=900)
    diff = kenv_cli(cluster, "diff", "locked", "1", "2", "-n", namespace)
    package_lines = diff.split("packages:\n", 1)[1].splitlines()
    assert package_lines == ["  ~ six 1.16.0 -> 1.15.0"], diff
    assert kenv_cli(cluster, "packages", "locked", "-n", namespace, "--version", "1") == table
