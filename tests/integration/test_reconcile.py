"""The reconciler end to end: real API server, real registry, real Kaniko builds in real pods."""

from __future__ import annotations

import json
import uuid

import pytest

from kenvfixtures import (
    build_jobs,
    create_env,
    env_versions,
    events_for,
    exit_code,
    get_env,
    kubectl,
    registry_digest,
    run_pod,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.usefixtures("operator")


def pip_spec(base_image: str, ca: dict[str, str], requirements: str, unique: str) -> dict:
    """A pip build on the base image; `unique` (a label) keeps other tests' images from being cache hits."""
    return {"docker": {"dockerfile": f"FROM {base_image}\nLABEL kenv.test={unique}"},
            "pip": {"requirements": requirements},
            "build": {"caBundle": ca}, "environmentVariables": {"OMP_NUM_THREADS": "1"}}


def metric(operator, name: str) -> float:
    lines = [line for line in operator.metrics().splitlines() if line.startswith(name + " ")]
    return float(lines[0].split()[1]) if lines else 0.0


def test_pip_environment_builds_to_ready_with_digest(kube, cluster, namespace, base_image, ca_config_map, operator):
    succeeded_before = metric(operator, "kenv_builds_succeeded_total")
    create_env(kube, namespace, "sklearn", pip_spec(base_image, ca_config_map, "six==1.16.0\n", namespace))
    env = wait_phase(kube, namespace, "sklearn", {"Ready", "Failed"}, timeout=600)
    status = env["status"]
    assert status["phase"] == "Ready", status
    repo, digest = status["image"].split("@")
    assert repo == f"{cluster.registry}/kenv/environments"
    tag = "kenv-" + status["hash"][:40]
    assert registry_digest(cluster.registry, "kenv/environments", tag) == digest == status["digest"]
    assert status["version"] == 1 and "history" not in status
    [first] = env_versions(kube, namespace, "sklearn")
    assert first["spec"]["version"] == 1 and first["spec"]["image"] == status["image"]
    # the spec as the API server keeps it: the CRD's defaults applied (pip.installer)
    assert first["spec"]["definition"]["pip"] == {"requirements": "six==1.16.0\n", "installer": "pip"}
    assert first["metadata"]["ownerReferences"][0]["uid"] == env["metadata"]["uid"]
    assert registry_digest(cluster.registry, "kenv/environments", f"{namespace}.sklearn-v1") == digest
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "BuildSucceeded"
    assert ready["observedGeneration"] == env["metadata"]["generation"] == status["observedGeneration"]
    jobs = build_jobs(kube, status["hash"])
    assert len(jobs) == 1
    job_name = jobs[0]["metadata"]["name"]
    context = kube.request("GET", f"/api/v1/namespaces/kenv-system/configmaps/{job_name}-context")
    assert context["metadata"]["ownerReferences"][0]["name"] == job_name  # garbage-collected with the Job
    assert "six==1.16.0" in context["data"]["requirements.txt"]
    assert metric(operator, "kenv_builds_succeeded_total") == succeeded_before + 1  # /metrics moves
    pod, log = run_pod(kube, namespace, "check", {"containers": [
        {"name": "c", "image": status["image"], "command": ["python3", "-c", "import six; print(six.__version__)"]}]})
    assert exit_code(pod) == 0 and log.strip() == "1.16.0"  # the package really is in the image
    reasons = {e["reason"] for e in events_for(kube, namespace, "sklearn")}
    assert {"BuildStarted", "Ready"} <= reasons
    header, row = kubectl(cluster, "get", "env", "sklearn", "-n", namespace).stdout.splitlines()
    columns = dict(zip(header.split(), row.split(), strict=True))  # whole columns, never substrings of the table
    assert columns["PHASE"] == "Ready" and columns["IMAGE"] == digest and columns["VERSION"] == "1"

    # Only injection-time fields change: no build, same digest, a new version (pods get a new definition).
    kube.request("PATCH", f"/apis/kenv.dev/v1alpha1/namespaces/{namespace}/environments/sklearn",
                 {"spec": {"environmentVariables": {"OMP_NUM_THREADS": "4"}, "docker": {"shmSize": "1Gi"}}},
                 content_type="application/merge-patch+json")
    generation = get_env(kube, namespace, "sklearn")["metadata"]["generation"]
    settled = wait_for(lambda: (e := get_env(kube, namespace, "sklearn"))["status"].get("observedGeneration")
                       == generation and e, 30, "observedGeneration to follow the edit")
    assert settled["status"]["digest"] == digest and settled["status"]["version"] == 2
    assert len(build_jobs(kube, status["hash"])) == 1
    second = env_versions(kube, namespace, "sklearn")[-1]["spec"]
    assert second["reason"] == "DefinitionChanged" and second["image"] == status["image"]
    assert "changed environmentVariables.OMP_NUM_THREADS: 1 -> 4" in second["changes"]

    # Same content in another namespace: one build serves both, cache hit.
    other = f"t-{uuid.uuid4().hex[:8]}"
    kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": other}})
    try:
        kube.request("POST", f"/api/v1/namespaces/{other}/configmaps",
                     {"metadata": {"name": "kenv-ca"}, "data": context_ca(kube, namespace)})
        create_env(kube, other, "copy", pip_spec(base_image, ca_config_map, "six==1.16.0\n", namespace))
        copy = wait_phase(kube, other, "copy", {"Ready", "Failed"}, timeout=60)["status"]
        assert copy["digest"] == digest
        assert next(c for c in copy["conditions"] if c["type"] == "Ready")["reason"] == "ImageFound"
        assert len(build_jobs(kube, status["hash"])) == 1
        assert metric(operator, "kenv_cache_hits_total") >= 1
    finally:
        kube.request("DELETE", f"/api/v1/namespaces/{other}")

    # A rebuild token forces a new build, which is version 3 (even if the image came out identical); the
    # earlier versions stay, each image kept by its own tag.
    kube.request("PATCH", f"/apis/kenv.dev/v1alpha1/namespaces/{namespace}/environments/sklearn",
                 {"metadata": {"annotations": {"kenv.dev/rebuild": "please"}}},
                 content_type="application/merge-patch+json")
    rebuilt = wait_for(lambda: (e := get_env(kube, namespace, "sklearn"))["status"].get("rebuildToken") == "please"
                       and e["status"]["phase"] in ("Ready", "Failed") and e, 600, "the forced rebuild")
    assert rebuilt["status"]["phase"] == "Ready", rebuilt["status"]
    assert len(build_jobs(kube, status["hash"])) == 2
    versions = {v["spec"]["version"]: v["spec"] for v in env_versions(kube, namespace, "sklearn")}
    assert rebuilt["status"]["version"] == 3 and versions[3]["reason"] == "Rebuilt"
    assert versions[3]["image"] == rebuilt["status"]["image"] and versions[1]["image"] == status["image"]
    assert registry_digest(cluster.registry, "kenv/environments", f"{namespace}.sklearn-v1") == digest


def context_ca(kube, namespace: str) -> dict[str, str]:
    return dict(kube.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/kenv-ca")["data"])


def test_failing_build_reports_exit_code_and_log(kube, namespace, base_image, ca_config_map):
    create_env(kube, namespace, "broken",
               pip_spec(base_image, ca_config_map, "kenv-package-that-does-not-exist-xyz==0.0.1\n", namespace))
    env = wait_phase(kube, namespace, "broken", {"Ready", "Failed"}, timeout=600)
    assert env["status"]["phase"] == "Failed"
    built = next(c for c in env["status"]["conditions"] if c["type"] == "Built")
    assert built["status"] == "False" and built["reason"] == "BuildFailed"
    assert "exited with code" in built["message"]
    assert "kenv-package-that-does-not-exist-xyz" in built["message"]  # the last log lines say what broke
    assert env["status"]["failedGeneration"] == env["metadata"]["generation"]
    assert any(e["reason"] == "BuildFailed" for e in events_for(kube, namespace, "broken"))


def test_invalid_spec_is_refused_by_the_api_server_naming_the_field(cluster, namespace):
    manifest = """
apiVersion: kenv.dev/v1alpha1
kind: Environment
metadata: {name: both}
spec:
  docker: {baseImage: "python:3.11", dockerfile: "FROM scratch"}
"""
    result = kubectl(cluster, "apply", "-n", namespace, "-f", "-", stdin=manifest, check=False)
    assert result.returncode != 0
    assert "mutually exclusive" in result.stderr and "baseImage" in result.stderr
    result = kubectl(cluster, "apply", "-n", namespace, "-f", "-", check=False, stdin="""
apiVersion: kenv.dev/v1alpha1
kind: Environment
metadata: {name: managed}
spec:
  python: {userManagedDependencies: true}
  pip: {packages: [numpy]}
""")
    assert result.returncode != 0 and "userManagedDependencies forbids pip and conda" in result.stderr
    # Azure ML's private registry pattern: the image is relative to the registry address, never another's.
    for docker, message in (
            ({"baseImage": "/team/img:1.2"}, "relative to baseImageRegistry.address"),
            ({"baseImage": "other.example.com/team/img:1.2",
              "baseImageRegistry": {"address": "myacr.azurecr.io", "secretName": "acr"}},
             "must be pulled from baseImageRegistry.address")):
        manifest = {"apiVersion": "kenv.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "registry"},
                    "spec": {"docker": docker}}
        result = kubectl(cluster, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(manifest), check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr
    joined = {"baseImage": "/team/img:1.2", "baseImageRegistry": {"address": "myacr.azurecr.io", "secretName": "acr"}}
    manifest = {"apiVersion": "kenv.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "registry"},
                "spec": {"docker": joined}}
    kubectl(cluster, "apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=json.dumps(manifest))


def test_missing_ca_config_map_waits_with_a_reason(kube, namespace, base_image):
    create_env(kube, namespace, "noca", {"docker": {"baseImage": base_image}, "pip": {"packages": ["six"]},
                                         "build": {"caBundle": {"name": "absent", "key": "ca.crt"}}})
    env = wait_phase(kube, namespace, "noca", {"Pending"}, timeout=30)
    built = next(c for c in env["status"]["conditions"] if c["type"] == "Built")
    assert built["reason"] == "MissingReference" and "spec.build.caBundle" in built["message"]
    assert not [j for j in build_jobs(kube) if j["metadata"]["annotations"]["kenv.dev/requested-by"].endswith(
        f"{namespace}/noca")]
