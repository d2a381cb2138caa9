"""Injection: the real API server calls kenv's webhook for labelled pods (bare pods and the job controller's)."""

from __future__ import annotations

import pytest

from buildgate import BuildGate
from kenvfixtures import (
    GROUP_PATH,
    create_env,
    create_pod,
    env_vars,
    get_env,
    job_pods,
    pod,
    pod_log,
    refused,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.usefixtures("operator")


@pytest.fixture
def ready_env(kube, namespace, base_image) -> dict:
    """An Environment whose image is the base image as is (a quick real build)."""
    create_env(kube, namespace, "tools", {
        "docker": {"baseImage": base_image, "shmSize": "512Mi"},
        "python": {"userManagedDependencies": True, "interpreterPath": "/usr/bin/python3"},
        "environmentVariables": {"OMP_NUM_THREADS": "2", "LITERAL": "$(NOT_EXPANDED)"},
        "secretEnv": [{"name": "API_TOKEN", "secretKeyRef": {"name": "creds", "key": "token"}}],
        "secretEnvFrom": [{"secretName": "bundle", "prefix": "B_"}],
    })
    env = wait_phase(kube, namespace, "tools", {"Ready", "Failed"}, timeout=300)
    assert env["status"]["phase"] == "Ready", env["status"]
    wait_admitting(kube, namespace, env["status"]["image"])
    return env


def wait_admitting(kube, namespace: str, image: str, running: int = 3) -> None:
    """Until `running` dry-run pods in a row get `image`: every admission replica's index holds the Ready status
    the test read. An Environment Ready within a second of its creation (its image already in the registry) can
    reach a pod's admission before a replica's watch does; that replica gates the pod and the image follows when
    the gate lifts (test_pod_waits_gated_while_the_image_builds), which is not what these tests look at."""
    seen = 0

    def admitted() -> bool:
        nonlocal seen
        dry = kube.request("POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All",
                           pod("dry-run", {"kenv.dev/environment": "tools"}, command=["true"]))
        seen = seen + 1 if dry["spec"]["containers"][0]["image"] == image else 0
        return seen >= running

    wait_for(admitted, 30, "the admission replicas to admit with the Ready image")


def test_bare_pod_gets_digest_variables_secrets_and_shm(kube, namespace, ready_env):
    status = ready_env["status"]
    created = create_pod(kube, namespace, pod("p1", {"kenv.dev/environment": "tools"},
                                              command=["python3", "-c", "print(1)"],
                                              env=[{"name": "OMP_NUM_THREADS", "value": "8"}]))
    container = created["spec"]["containers"][0]
    assert container["image"] == status["image"] and "@sha256:" in container["image"]
    variables = env_vars(container)
    assert variables["OMP_NUM_THREADS"] == "8"  # the pod's own value wins ...
    annotations = created["metadata"]["annotations"]
    assert annotations["kenv.dev/overridden-env"] == "OMP_NUM_THREADS"  # ... and the loss is recorded
    assert variables["LITERAL"] == "$$(NOT_EXPANDED)"  # kubelet turns $$ into $: the value stays literal
    assert variables["API_TOKEN"] == {"secretKeyRef": {"name": "creds", "key": "token", "optional": False}}
    assert container["envFrom"] == [{"prefix": "B_", "secretRef": {"name": "bundle", "optional": False}}]
    assert variables["KENV_PYTHON"] == "/usr/bin/python3"
    shm = next(v for v in created["spec"]["volumes"] if v["name"] == "kenv-dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "512Mi"}
    assert {"name": "kenv-dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert annotations["kenv.dev/injected-environment"] == f"{namespace}/tools"
    assert annotations["kenv.dev/injected-image"] == status["image"]
    assert annotations["kenv.dev/injected-version"] == str(status["version"])


def test_job_pods_are_injected_and_unlabelled_pods_untouched(kube, namespace, ready_env, pause_image):
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "train"},
           "spec": {"backoffLimit": 0, "template": pod("x", {"kenv.dev/environment": "tools"},
                                                       command=["python3", "-c", "print(1)"])}}
    del job["spec"]["template"]["metadata"]["name"]
    kube.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job)
    pods = wait_for(lambda: job_pods(kube, namespace, "train"), 30, "the job controller's pod")
    assert pods[0]["spec"]["containers"][0]["image"] == ready_env["status"]["image"]
    plain = create_pod(kube, namespace, {**pod("plain", {"app": "other"}), "spec": {
        "containers": [{"name": "c", "image": pause_image}]}})
    assert plain["spec"]["containers"][0]["image"] == pause_image
    assert "kenv.dev/injected" not in (plain["metadata"].get("annotations") or {})


def test_missing_environment_and_unknown_version_are_refused(kube, namespace, ready_env):
    message = refused(kube, namespace, pod("p2", {"kenv.dev/environment": "nope"}, command=["true"]))
    assert f"Environment {namespace}/nope does not exist" in message and "kubectl get env nope" in message
    message = refused(kube, namespace, pod("p3", {"kenv.dev/environment": "tools"},
                                           {"kenv.dev/version": "9"}, command=["true"]))
    assert "no version 9" in message and "known: 1" in message


def test_version_pin_picks_the_older_digest(kube, namespace, ready_env, base_image):
    first = ready_env["status"]
    kube.request("PATCH", f"{GROUP_PATH}/namespaces/{namespace}/environments/tools",
                 {"spec": {"docker": {"baseImage": None, "dockerfile": f"FROM {base_image}\nLABEL kenv.test=v2"}}},
                 content_type="application/merge-patch+json")
    second = wait_for(lambda: (e := get_env(kube, namespace, "tools"))["status"].get("version") == 2 and e,
                      300, "version 2")["status"]
    assert second["image"] != first["image"]
    pinned = create_pod(kube, namespace, pod("old", {"kenv.dev/environment": "tools"},
                                             {"kenv.dev/version": "1"}, command=["true"]))
    latest = create_pod(kube, namespace, pod("new", {"kenv.dev/environment": "tools"}, command=["true"]))
    assert pinned["spec"]["containers"][0]["image"] == first["image"]
    assert latest["spec"]["containers"][0]["image"] == second["image"]


def test_cluster_environment_and_bootstrap_wrapping(kube, namespace, base_image):
    name = f"curated-{namespace}"
    kube.request("POST", f"{GROUP_PATH}/clusterenvironments", {
        "apiVersion": "kenv.dev/v1alpha1", "kind": "ClusterEnvironment", "metadata": {"name": name},
        "spec": {"docker": {"baseImage": base_image}, "python": {"userManagedDependencies": True},
                 "secretEnv": [{"name": "TOKEN", "secretKeyRef": {"name": "team-token", "key": "t"}}],
                 "bootstrap": {"script": "echo ready > /tmp/boot", "mode": "RankZero", "markerDir": "/shared"}}})
    try:
        wait_for(lambda: (kube.request("GET", f"{GROUP_PATH}/clusterenvironments/{name}").get("status") or {})
                 .get("phase") == "Ready", 300, "the ClusterEnvironment to be Ready")
        message = refused(kube, namespace, pod("noshare", {"kenv.dev/cluster-environment": name},
                                               command=["python3", "train.py"]))
        assert "/shared" in message  # RankZero needs a volume shared by all ranks at markerDir
        body = pod("boot", {"kenv.dev/cluster-environment": name}, command=["python3", "train.py"],
                   args=["--epochs", "2"], volumeMounts=[{"name": "shared", "mountPath": "/shared"}])
        body["spec"]["volumes"] = [{"name": "shared", "emptyDir": {}}]
        created = create_pod(kube, namespace, body)
        container = created["spec"]["containers"][0]
        assert container["command"][:2] == ["/bin/sh", "-c"]
        assert container["command"][3:] == ["kenv-bootstrap", "python3", "train.py", "--epochs", "2"]
        assert "args" not in container
        variables = env_vars(container)
        assert variables["TOKEN"]["secretKeyRef"]["name"] == "team-token"  # resolved in the pod's namespace
        assert variables["KENV_BOOTSTRAP_SCRIPT"] == "echo ready > /tmp/boot"
        assert created["metadata"]["annotations"]["kenv.dev/injected-environment"] == f"cluster/{name}"
    finally:
        kube.request("DELETE", f"{GROUP_PATH}/clusterenvironments/{name}")


def test_pod_waits_gated_while_the_image_builds(kube, namespace, base_image):
    gate = BuildGate()
    try:
        spec = gate.spec(base_image, f"gated-{namespace}")
        create_env(kube, namespace, "slow", {**spec, "environmentVariables": {"A": "1"}})
        wait_phase(kube, namespace, "slow", {"Building"}, timeout=60)
        created = create_pod(kube, namespace, pod("waiting", {"kenv.dev/environment": "slow"},
                                                  command=["python3", "-c", "print('trained')"]))
        assert {"name": "kenv.dev/image"} in created["spec"]["schedulingGates"]
        assert created["metadata"]["annotations"]["kenv.dev/awaiting-image"] == "true"
        assert env_vars(created["spec"]["containers"][0])["A"] == "1"  # what is known is injected already
        wait_for(lambda: gate.waiting(f"gated-{namespace}"), 120, "the build pod to reach the gated step")
        assert kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/waiting")["spec"]["schedulingGates"]
        gate.release(f"gated-{namespace}")
        env = wait_phase(kube, namespace, "slow", {"Ready", "Failed"}, timeout=300)
    finally:
        gate.close()
    assert env["status"]["phase"] == "Ready", env["status"]

    def released() -> dict | None:
        current = kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/waiting")
        return current if not current["spec"].get("schedulingGates") else None
    current = wait_for(released, 60, "the operator to lift the scheduling gate")
    assert current["spec"]["containers"][0]["image"] == env["status"]["image"]
    assert current["metadata"]["annotations"]["kenv.dev/injected-image"] == env["status"]["image"]
    assert "kenv.dev/awaiting-image" not in current["metadata"]["annotations"]

    def ran() -> dict | None:  # the released pod really runs, in the image that was built meanwhile
        body = kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/waiting")
        return body if body["status"].get("phase") in ("Succeeded", "Failed") else None
    finished = wait_for(ran, 120, "the released pod to run")
    assert finished["status"]["phase"] == "Succeeded"
    assert pod_log(kube, namespace, "waiting").strip() == "trained"
