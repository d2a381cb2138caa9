"""Faults survived: each test breaks a real part mid-flight and asserts the final state and the time to recover.

The operator is the Helm-installed pod; builds are real Kaniko pods, held mid-build by a BuildGate where a fault
must hit a running build. Recovery times are printed (`-s` or the junit log) and copied into README's table.
"""

from __future__ import annotations

import time
import urllib.error

import pytest

from buildgate import BuildGate
from kenvfixtures import (
    GROUP_PATH,
    build_jobs,
    create_env,
    get_env,
    job_pods,
    registry_digest,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.usefixtures("operator")


def quick_spec(base_image: str, marker: str) -> dict:
    """A real but fast build: the base image plus one label, distinct per test."""
    return {"docker": {"dockerfile": f"FROM {base_image}\nLABEL kenv.test={marker}"},
            "python": {"userManagedDependencies": True}}


@pytest.fixture
def gate():
    held = BuildGate()
    yield held
    held.close()


def wait_held(gate: BuildGate, token: str) -> None:
    wait_for(lambda: gate.waiting(token), 120, "the build pod to reach the gated step")


def report(fault: str, seconds: float) -> None:
    print(f"\nRECOVERY {fault}: {seconds:.1f}s")


def assert_ready_with_registry_digest(kube, cluster, namespace: str, name: str) -> dict:
    env = wait_phase(kube, namespace, name, {"Ready", "Failed"}, timeout=300)
    status = env["status"]
    assert status["phase"] == "Ready", status
    tag = "kenv-" + status["hash"][:40]
    assert registry_digest(cluster.registry, "kenv/environments", tag) == status["digest"]
    return env


def test_operator_killed_mid_build_resumes_without_duplicate_job(kube, cluster, namespace, base_image,
                                                                  gate, operator):
    token = f"killed-{namespace}"
    create_env(kube, namespace, "killed", gate.spec(base_image, token))
    wait_phase(kube, namespace, "killed", {"Building"}, timeout=60)
    wait_held(gate, token)
    started = time.monotonic()
    operator.kill()  # SIGKILL the operator container; its kubelet restarts it
    gate.release(token)
    operator.wait_ready()
    print(f"\noperator container back (Ready) {time.monotonic() - started:.1f}s after SIGKILL")
    env = assert_ready_with_registry_digest(kube, cluster, namespace, "killed")
    report("operator SIGKILL mid-build (to Ready)", time.monotonic() - started)
    assert len(build_jobs(kube, env["status"]["hash"])) == 1
    assert env["status"]["version"] == 1


def test_deleted_build_job_is_recreated_and_converges(kube, cluster, namespace, base_image, gate):
    token = f"nojob-{namespace}"
    create_env(kube, namespace, "nojob", gate.spec(base_image, token))
    env = wait_phase(kube, namespace, "nojob", {"Building"}, timeout=60)
    job = env["status"]["buildJob"]
    wait_held(gate, token)
    kube.request("DELETE", f"/apis/batch/v1/namespaces/{job['namespace']}/jobs/{job['name']}",
                 {"propagationPolicy": "Foreground"})
    started = time.monotonic()
    gate.release(token)  # the recreated Job's pod passes the gate
    assert_ready_with_registry_digest(kube, cluster, namespace, "nojob")
    report("build Job deleted by a user", time.monotonic() - started)


def test_deleted_build_pod_ends_failed_with_a_reason_and_a_token_rebuilds(kube, cluster, namespace,
                                                                          base_image, gate):
    token = f"nopod-{namespace}"
    create_env(kube, namespace, "nopod", gate.spec(base_image, token))
    env = wait_phase(kube, namespace, "nopod", {"Building"}, timeout=60)
    wait_held(gate, token)
    job = env["status"]["buildJob"]
    (pod,) = job_pods(kube, job["namespace"], job["name"])
    kube.request("DELETE", f"/api/v1/namespaces/{job['namespace']}/pods/{pod['metadata']['name']}",
                 {"gracePeriodSeconds": 0})
    gate.release(token)
    env = wait_phase(kube, namespace, "nopod", {"Failed", "Ready"}, timeout=120)
    if env["status"]["phase"] == "Failed":  # the Job gave up on the vanished pod (backoffLimit 0)
        built = next(c for c in env["status"]["conditions"] if c["type"] == "Built")
        assert built["reason"] == "BuildFailed" and f"build Job {job['name']} failed" in built["message"]
        kube.request("PATCH", f"{GROUP_PATH}/namespaces/{namespace}/environments/nopod",
                     {"metadata": {"annotations": {"kenv.dev/rebuild": "after-pod-loss"}}},
                     content_type="application/merge-patch+json")
        wait_for(lambda: get_env(kube, namespace, "nopod")["status"].get("rebuildToken") == "after-pod-loss",
                 300, "the rebuild after the lost pod")
    assert_ready_with_registry_digest(kube, cluster, namespace, "nopod")


def test_registry_down_waits_with_reason_and_recovers(kube, cluster, namespace, base_image):
    cluster.stop_component("registry")
    try:
        create_env(kube, namespace, "noreg", quick_spec(base_image, namespace))
        env = wait_phase(kube, namespace, "noreg", {"Pending"}, timeout=60)
        built = next(c for c in env["status"]["conditions"] if c["type"] == "Built")
        assert built["reason"] == "RegistryUnavailable" and "retrying" in built["message"]
        assert not build_jobs(kube, None) or all(
            not j["metadata"]["annotations"]["kenv.dev/requested-by"].endswith(f"{namespace}/noreg")
            for j in build_jobs(kube, None))  # never assumed to exist, never built blind
    finally:
        cluster.start_component("registry")
    started = time.monotonic()
    assert_ready_with_registry_digest(kube, cluster, namespace, "noreg")
    report("registry down during lookup", time.monotonic() - started)


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_control_plane_restart_is_survived_by_the_watches(kube, cluster, namespace, base_image, component):
    cluster.stop_component(component)
    cluster.start_component(component)
    started = time.monotonic()
    create_env(kube, namespace, "afterrestart", quick_spec(base_image, namespace))
    assert_ready_with_registry_digest(kube, cluster, namespace, "afterrestart")
    report(f"{component} restart (to a new Environment Ready)", time.monotonic() - started)


def test_webhook_down_refuses_labelled_pods_only(kube, namespace, base_image, pause_image, operator):
    create_env(kube, namespace, "web", quick_spec(base_image, namespace))
    wait_phase(kube, namespace, "web", {"Ready"}, timeout=300)
    operator.stop()  # the Deployment scaled to 0: the webhook Service has no endpoint
    try:
        labelled = {"metadata": {"name": "labelled", "labels": {"kenv.dev/environment": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "x", "command": ["true"]}]}}
        with pytest.raises(urllib.error.HTTPError) as error:
            kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", labelled)
        message = error.value.read().decode()
        assert "inject-environment" in message and ("connection refused" in message or "failed calling" in message)
        plain = {"metadata": {"name": "plain"}, "spec": {"containers": [{"name": "c", "image": pause_image}]}}
        assert kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", plain)["metadata"]["name"] == "plain"
    finally:
        operator.start()


def test_deleted_environment_leaves_running_pods_and_refuses_new_ones(kube, namespace, base_image):
    create_env(kube, namespace, "gone", quick_spec(base_image, namespace))
    image = wait_phase(kube, namespace, "gone", {"Ready"}, timeout=300)["status"]["image"]
    body = {"metadata": {"name": "runner", "labels": {"kenv.dev/environment": "gone"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x", "command": ["true"]}]}}
    kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body)
    kube.request("DELETE", f"{GROUP_PATH}/namespaces/{namespace}/environments/gone")
    wait_for(lambda: not kube.request("GET", f"{GROUP_PATH}/namespaces/{namespace}/environments")["items"],
             30, "the Environment to go")
    running = kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/runner")
    assert running["spec"]["containers"][0]["image"] == image and "deletionTimestamp" not in running["metadata"]

    def refused() -> str | None:
        try:
            kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", {**body, "metadata": {
                "generateName": "late-", "labels": {"kenv.dev/environment": "gone"}}})
        except urllib.error.HTTPError as error:
            return error.read().decode()
        return None
    message = wait_for(refused, 30, "the index to forget the Environment")
    assert "does not exist" in message and "kubectl get env gone" in message


def test_build_exceeding_its_deadline_fails_with_the_reason(kube, namespace, base_image, gate):
    spec = {**gate.spec(base_image, f"slow-{namespace}"), "build": {"timeoutSeconds": 60}}  # never released
    create_env(kube, namespace, "slowbuild", spec)
    env = wait_phase(kube, namespace, "slowbuild", {"Failed"}, timeout=150)
    built = next(c for c in env["status"]["conditions"] if c["type"] == "Built")
    assert built["reason"] == "BuildFailed" and "DeadlineExceeded" in built["message"]


def test_registry_down_during_push_retries_by_itself(kube, cluster, namespace, base_image, gate):
    token = f"pushfail-{namespace}"
    create_env(kube, namespace, "pushfail", gate.spec(base_image, token))
    wait_phase(kube, namespace, "pushfail", {"Building"}, timeout=60)
    wait_held(gate, token)
    cluster.stop_component("registry")
    try:
        gate.release(token)  # the build goes on now, and its push meets a dead registry
        env = wait_for(lambda: (e := get_env(kube, namespace, "pushfail"))["status"].get("transientRetries") and e,
                       180, "the failed push to be classified as a registry outage")
    finally:
        cluster.start_component("registry")
    built = next(c for c in env["status"]["conditions"] if c["type"] == "Built")
    assert built["reason"] == "RegistryUnavailable" and env["status"]["phase"] == "Pending"
    started = time.monotonic()
    env = assert_ready_with_registry_digest(kube, cluster, namespace, "pushfail")
    report("registry down during push (after it is back)", time.monotonic() - started)
    assert env["status"].get("transientRetries") is None
