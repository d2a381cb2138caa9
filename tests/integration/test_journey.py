"""The user journey on real pods: kenv installed by Helm (the session operator is that release), an Environment
built by a Kaniko pod, and training Jobs that run in the digest-pinned image with what the Environment injects.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from kenvfixtures import (
    GROUP_PATH,
    build_pod,
    create_env,
    exit_code,
    job_outcome,
    job_pods,
    kubectl,
    pod_log,
    wait_for,
    wait_phase,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("operator")

TRAIN = """
import hashlib, os, shutil, sys
import six
shm = os.statvfs("/dev/shm")
print("six", six.__version__)
print("OMP_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
print("WANDB_API_KEY sha256", hashlib.sha256(os.environ["WANDB_API_KEY"].encode()).hexdigest())
print("shm bytes", shm.f_blocks * shm.f_frsize)
python = os.path.realpath(shutil.which(os.environ["KENV_PYTHON"]))
print("KENV_PYTHON", os.environ["KENV_PYTHON"], "is this interpreter", python == os.path.realpath(sys.executable))
"""


def job(name: str, environment: str, command: list[str], **spec: object) -> dict:
    pod_spec = {"restartPolicy": "Never", "containers": [{"name": "train", "image": "placeholder",
                                                          "command": command}], **spec.pop("pod", {})}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, **spec, "template": {
                "metadata": {"labels": {"kenv.dev/environment": environment}}, "spec": pod_spec}}}


def run_job(kube, namespace: str, body: dict, timeout: float = 180) -> list[dict]:
    """Create a Job, wait for it to finish, return its pods (Complete is asserted by the caller's logs)."""
    name = body["metadata"]["name"]
    kube.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", body)
    outcome = wait_for(lambda: job_outcome(kube, namespace, name), timeout, f"Job {name} to finish")
    pods = job_pods(kube, namespace, name)
    logs = {p["metadata"]["name"]: pod_log(kube, namespace, p["metadata"]["name"]) for p in pods}
    assert outcome == "Complete", logs
    return pods


@pytest.fixture
def journey_env(kube, namespace, base_image, ca_config_map) -> tuple[dict, str]:
    """The README's Environment: pip, variables, a secret variable, shm; its own content (one label), so a
    Kaniko pod really builds it."""
    token = uuid.uuid4().hex
    kube.request("POST", f"/api/v1/namespaces/{namespace}/secrets", {
        "metadata": {"name": "wandb"}, "data": {"api-key": base64.b64encode(token.encode()).decode()}})
    create_env(kube, namespace, "journey", {
        "docker": {"dockerfile": f"FROM {base_image}\nLABEL kenv.test=journey-{namespace}", "shmSize": "128Mi"},
        "pip": {"requirements": "six==1.16.0\n"},
        "environmentVariables": {"OMP_NUM_THREADS": "3"},
        "secretEnv": [{"name": "WANDB_API_KEY", "secretKeyRef": {"name": "wandb", "key": "api-key"}}],
        "build": {"caBundle": ca_config_map}})
    env = wait_phase(kube, namespace, "journey", {"Ready", "Failed"}, timeout=600)
    assert env["status"]["phase"] == "Ready", env["status"]
    return env, token


def test_helm_installed_operator_builds_and_a_training_job_runs_in_the_image(
        cluster, kube, namespace, operator, journey_env):
    env, token = journey_env
    status = env["status"]
    # The operator is a pod of the chart's Deployment, running the image built here, Ready by its probes.
    pod = operator.pod()
    assert pod["spec"]["containers"][0]["image"].startswith(f"{cluster.registry}/kenv/operator:")
    assert operator.ready() and pod["spec"]["serviceAccountName"] == "kenv"

    # The build ran in a Kaniko pod: its real log, read through the API by `kenv logs`.
    build, _ = build_pod(kube, status)
    assert "kaniko-executor" in build["spec"]["containers"][0]["image"] and exit_code(build) == 0
    logs = subprocess.run([sys.executable, "-m", "kenv.cli", "logs", "journey", "-n", namespace], capture_output=True,
                          text=True, env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)})
    assert logs.returncode == 0, logs.stderr
    assert "Successfully installed six-1.16.0" in logs.stdout
    assert f"Pushed {cluster.registry}/kenv/environments@{status['digest']}" in logs.stdout

    pods = run_job(kube, namespace, job("train", "journey", ["python3", "-c", TRAIN]))
    (train,) = pods
    container = train["spec"]["containers"][0]
    assert container["image"] == status["image"] and "@sha256:" in container["image"]
    assert train["status"]["containerStatuses"][0]["imageID"].endswith(status["digest"])
    expected = ["six 1.16.0", "OMP_NUM_THREADS 3",
                f"WANDB_API_KEY sha256 {hashlib.sha256(token.encode()).hexdigest()}",
                f"shm bytes {128 * 1024 * 1024}", "KENV_PYTHON python3 is this interpreter True"]
    assert pod_log(kube, namespace, train["metadata"]["name"]).splitlines() == expected
    shown = kubectl(cluster, "logs", "-n", namespace, "job/train").stdout.splitlines()
    assert shown == expected  # what a user sees


def test_bootstrap_runs_for_real_in_all_and_rank_zero_modes(cluster, kube, namespace, journey_env):
    env_path = f"{GROUP_PATH}/namespaces/{namespace}/environments/journey"
    kube.request("PATCH", env_path, {"spec": {"bootstrap": {
        "mode": "All", "script": 'echo "bootstrap on $HOSTNAME"; echo prepared > /tmp/prepared'}}},
        content_type="application/merge-patch+json")
    wait_for(lambda: kube.request("GET", env_path)["status"].get("observedGeneration")
             == kube.request("GET", env_path)["metadata"]["generation"], 30, "the edit to be observed")
    (pod,) = run_job(kube, namespace, job("all", "journey", ["cat", "/tmp/prepared"]))
    assert pod_log(kube, namespace, pod["metadata"]["name"]).splitlines() == [
        f"bootstrap on {pod['metadata']['name']}", "prepared"]

    # RankZero: an Indexed Job of 2 pods sharing a volume. Rank 0's script takes a few seconds and records when
    # it finished; rank 1 must not start its command before that.
    shared = Path(cluster.state_dir) / "shared" / namespace
    kube.request("PATCH", env_path, {"spec": {"bootstrap": {
        "mode": "RankZero", "markerDir": "/shared",
        "script": "sleep 4; python3 -c 'import time; print(time.time())' > /shared/rank0-done-at"}}},
        content_type="application/merge-patch+json")
    wait_for(lambda: kube.request("GET", env_path)["status"].get("observedGeneration")
             == kube.request("GET", env_path)["metadata"]["generation"], 30, "the edit to be observed")
    command = ["python3", "-c", "import os, time; print(os.environ['JOB_COMPLETION_INDEX'], time.time(), "
                                "open('/shared/rank0-done-at').read().strip())"]
    volume = {"name": "shared", "hostPath": {"path": str(shared), "type": "DirectoryOrCreate"}}
    body = job("ranks", "journey", command, completionMode="Indexed", completions=2, parallelism=2,
               pod={"volumes": [volume]})
    body["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [{"name": "shared", "mountPath": "/shared"}]
    try:
        pods = run_job(kube, namespace, body)
        by_rank = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p for p in pods}
        lines = {rank: pod_log(kube, namespace, p["metadata"]["name"]).splitlines() for rank, p in by_rank.items()}
        rank0_done = float(lines["0"][-1].split()[2])
        assert lines["1"][0] == "kenv: rank 1 waits for rank 0's bootstrap marker /shared/kenv-bootstrap-ranks.done"
        rank, started, seen_done = lines["1"][-1].split()
        assert rank == "1" and float(seen_done) == rank0_done and float(started) >= rank0_done
        assert (shared / "kenv-bootstrap-ranks.done").read_text().strip() == "0"
    finally:
        shutil.rmtree(shared, ignore_errors=True)
