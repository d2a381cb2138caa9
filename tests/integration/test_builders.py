"""The other builders, each in a real build pod with the least privilege that works (operator/kenv/builds.py):
buildah (Debian's, packaged by hack/images.py) and rootless BuildKit (built from the Go module proxy by
hack/build-buildkit.sh)."""

from __future__ import annotations

import pytest

from kenvfixtures import create_env, env_versions, exit_code, job_pods, last_layer, pod_log, run_pod, wait_phase

pytestmark = pytest.mark.usefixtures("operator")


def build_with(kube, cluster, namespace: str, base_image: str, ca_config_map: dict,
               builder: str) -> tuple[dict, dict, str]:
    """A pip Environment of its own content built by `builder`: (Environment, build pod, build log)."""
    create_env(kube, namespace, builder, {
        "docker": {"dockerfile": f"FROM {base_image}\nLABEL kenv.test={builder}-{namespace}"},
        "pip": {"requirements": "six==1.16.0\n"},
        "build": {"builder": builder, "caBundle": ca_config_map}})
    env = wait_phase(kube, namespace, builder, {"Ready", "Failed"}, timeout=600)
    job = env["status"]["buildJob"]
    (build,) = job_pods(kube, job["namespace"], job["name"])
    log = pod_log(kube, job["namespace"], build["metadata"]["name"])
    assert env["status"]["phase"] == "Ready", (env["status"], log[-3000:])
    assert f"kenv/{builder}:" in build["spec"]["containers"][0]["image"] and exit_code(build) == 0
    assert "Successfully installed six-1.16.0" in log
    # the builder wrote the pushed digest to the termination message, as Kaniko's --digest-file does
    assert build["status"]["containerStatuses"][0]["state"]["terminated"]["message"].strip() == env["status"]["digest"]
    # the package lock, alone in the image's last layer (one layer per step), read back into the version
    lock = env_versions(kube, namespace, builder)[0]["spec"]["lock"]
    assert {(p["name"].lower(), p["version"]) for p in lock["packages"]} >= {("six", "1.16.0")}
    layer, paths = last_layer(cluster.registry, env["status"]["digest"])
    assert lock["layer"] == layer and "etc/kenv/lock.json" in paths
    assert not [p for p in paths if "-packages/" in p], sorted(paths)
    return env, build, log


def test_buildah_pod_builds_a_pip_environment_without_privileges(kube, cluster, namespace, base_image,
                                                                 ca_config_map):
    env, build, _ = build_with(kube, cluster, namespace, base_image, ca_config_map, "buildah")
    context = build["spec"]["containers"][0]["securityContext"]
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["SETUID", "SETGID", "SETFCAP"]}
    assert context["privileged"] is False and context["allowPrivilegeEscalation"] is False

    check = ["python3", "-c", "import six; print(six.__version__)"]
    pod, out = run_pod(kube, namespace, "check", {"containers": [
        {"name": "c", "image": env["status"]["image"], "command": check}]})
    assert exit_code(pod) == 0 and out.strip() == "1.16.0"


def test_rootless_buildkit_pod_builds_a_pip_environment(kube, cluster, namespace, base_image, ca_config_map):
    env, build, _ = build_with(kube, cluster, namespace, base_image, ca_config_map, "buildkit")
    context = build["spec"]["containers"][0]["securityContext"]
    assert context["runAsUser"] == 1000 and context["runAsNonRoot"] is True and "capabilities" not in context
    check = ["python3", "-c", "import six; print(six.__version__)"]
    pod, out = run_pod(kube, namespace, "check", {"containers": [
        {"name": "c", "image": env["status"]["image"], "command": check}]})
    assert exit_code(pod) == 0 and out.strip() == "1.16.0"
