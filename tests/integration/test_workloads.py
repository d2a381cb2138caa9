"""kenv under the workload controllers ML teams run: Kubeflow's training operator (PyTorchJob), JobSet, KubeRay
(RayJob) and Kueue, each built from the Go module proxy and run against the local cluster (hack/frameworks.py).

Every workload labels its pod templates with kenv.dev/environment and names only a placeholder image: each
replica runs the Environment's digest-pinned image with its variables and secrets, the replicas really talk to
each other (by the Service names the controllers create, resolved by the cluster's CoreDNS), and each job
really finishes.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from buildgate import BuildGate
from frameworks import Frameworks
from kenvfixtures import create_env, kubectl, pod_log, refused, wait_for, wait_phase
from localcluster import LocalCluster

pytestmark = pytest.mark.usefixtures("operator")

RAY_VERSION = "2.60.0"
GATE = "kenv.dev/image"  # the chart's default scheduling gate


@pytest.fixture(scope="module")
def frameworks(cluster):
    if not isinstance(cluster, LocalCluster):
        pytest.skip("the workload controllers run as processes of the local cluster")
    started = Frameworks(cluster)
    yield started
    started.stop()


def variables_and_secret(kube, namespace: str, token: str) -> dict:
    """Spec fields giving pods TRAIN_TOKEN (a variable) and TRACKING_KEY (from a Secret made here), both `token`."""
    kube.request("POST", f"/api/v1/namespaces/{namespace}/secrets", {
        "metadata": {"name": "tracking"}, "data": {"key": base64.b64encode(token.encode()).decode()}})
    return {"environmentVariables": {"TRAIN_TOKEN": token},
            "secretEnv": [{"name": "TRACKING_KEY", "secretKeyRef": {"name": "tracking", "key": "key"}}]}


@pytest.fixture
def train_env(kube, namespace, base_image) -> tuple[dict, str]:
    """A Ready Environment with a variable and a secret variable, both holding a token unique to the test."""
    token = uuid.uuid4().hex
    create_env(kube, namespace, "train", {
        "docker": {"baseImage": base_image},
        "python": {"userManagedDependencies": True, "interpreterPath": "/usr/bin/python3"},
        **variables_and_secret(kube, namespace, token)})
    env = wait_phase(kube, namespace, "train", {"Ready", "Failed"})
    assert env["status"]["phase"] == "Ready", env["status"]
    return env, token


def apply(cluster, body: dict) -> None:
    kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(body))


def get(kube, path: str) -> dict[str, Any]:
    return dict(kube.request("GET", path))


def pods(kube, namespace: str, selector: str) -> list[dict[str, Any]]:
    return list(kube.request("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}")["items"])


def condition(obj: dict, kind: str) -> bool:
    return any(c["type"] == kind and c["status"] == "True" for c in (obj.get("status") or {}).get("conditions") or [])


def wait_finished(kube, path: str, success: str, failure: str, timeout: float, what: str) -> dict[str, Any]:
    """The object at path once its `success` or `failure` condition is True."""
    def finished() -> dict[str, Any] | None:
        obj = get(kube, path)
        return obj if condition(obj, success) or condition(obj, failure) else None
    return dict(wait_for(finished, timeout, what))


def images_of(pod: dict) -> dict[str, str]:
    spec = pod["spec"]
    return {c["name"]: c["image"] for c in [*(spec.get("initContainers") or []), *spec["containers"]]}


def labelled_template(env: str, containers: list[dict], **spec: Any) -> dict:
    return {"metadata": {"labels": {"kenv.dev/environment": env}}, "spec": {"containers": containers, **spec}}


# -- PyTorchJob ----------------------------------------------------------------------------------------------

# What torch.distributed's env:// rendezvous reads, used for a real rendezvous over TCP: rank 0 listens on
# MASTER_PORT, the others connect to MASTER_ADDR (the master's Service name) and say who they are.
RENDEZVOUS = """
import os, socket, time
rank, world, port = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["MASTER_PORT"])
if rank == 0:
    server = socket.create_server(("", port))
    heard = []
    for _ in range(world - 1):
        conn, _ = server.accept()
        heard.append(conn.recv(64).decode())
        conn.close()
    print("rank 0 heard from", ",".join(sorted(heard)))
else:
    deadline = time.time() + 180
    while True:
        try:
            with socket.create_connection((os.environ["MASTER_ADDR"], port), timeout=5) as conn:
                conn.sendall(str(rank).encode())
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(1)
print("rank", rank, "of", world, "token", os.environ["TRAIN_TOKEN"], "secret", os.environ["TRACKING_KEY"])
"""


def test_pytorchjob_replicas_run_in_the_environment_and_rendezvous(cluster, kube, namespace, frameworks, train_env):
    frameworks.start("training-operator")
    env, token = train_env
    container = {"name": "pytorch", "image": "placeholder", "command": ["python3", "-c", RENDEZVOUS]}
    replica = {"restartPolicy": "Never", "template": labelled_template("train", [container])}
    apply(cluster, {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                    "metadata": {"name": "ddp", "namespace": namespace},
                    "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, **replica},
                                                     "Worker": {"replicas": 1, **replica}}}})
    path = f"/apis/kubeflow.org/v1/namespaces/{namespace}/pytorchjobs/ddp"
    job = wait_finished(kube, path, "Succeeded", "Failed", 300, "the PyTorchJob to finish")
    replicas = pods(kube, namespace, "training.kubeflow.org/job-name%3Dddp")
    logs = {p["metadata"]["name"]: pod_log(kube, namespace, p["metadata"]["name"]) for p in replicas}
    assert condition(job, "Succeeded"), (job.get("status"), logs)
    assert sorted(logs) == ["ddp-master-0", "ddp-worker-0"]
    for pod in replicas:
        assert images_of(pod)["pytorch"] == env["status"]["image"]
    assert logs["ddp-master-0"].splitlines() == ["rank 0 heard from 1", f"rank 0 of 2 token {token} secret {token}"]
    assert logs["ddp-worker-0"].splitlines() == [f"rank 1 of 2 token {token} secret {token}"]


# -- JobSet --------------------------------------------------------------------------------------------------

def test_jobset_runs_the_environment_and_its_bootstrap_once_on_global_rank_zero(
        cluster, kube, namespace, frameworks, base_image, tmp_path):
    """Two child Jobs, each Indexed: JOB_COMPLETION_INDEX is 0 in both, so only JobSet's global job index tells
    rank 0 apart. The bootstrap (RankZero) prepares a shared directory once; both replicas read what it wrote."""
    frameworks.start("jobset")
    shared = tmp_path / "shared"
    shared.mkdir()
    token = uuid.uuid4().hex
    create_env(kube, namespace, "prepared", {
        "docker": {"baseImage": base_image},
        "python": {"userManagedDependencies": True, "interpreterPath": "/usr/bin/python3"},
        "bootstrap": {"script": "hostname >> /shared/ran\necho prepared > /shared/data\n", "mode": "RankZero",
                      "markerDir": "/shared"},
        **variables_and_secret(kube, namespace, token)})
    env = wait_phase(kube, namespace, "prepared", {"Ready", "Failed"})
    assert env["status"]["phase"] == "Ready", env["status"]
    read = ("import os; print(open('/shared/data').read().strip(), os.environ['TRAIN_TOKEN'], "
            "os.environ['TRACKING_KEY'])")
    container = {"name": "train", "image": "placeholder", "command": ["python3", "-c", read],
                 "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}
    template = labelled_template("prepared", [container], restartPolicy="Never",
                                 volumes=[{"name": "shared", "hostPath": {"path": str(shared), "type": "Directory"}}])
    apply(cluster, {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
                    "metadata": {"name": "prep", "namespace": namespace},
                    "spec": {"replicatedJobs": [{"name": "workers", "replicas": 2, "template": {"spec": {
                        "parallelism": 1, "completions": 1, "backoffLimit": 0, "template": template}}}]}})
    path = f"/apis/jobset.x-k8s.io/v1alpha2/namespaces/{namespace}/jobsets/prep"
    jobset = wait_finished(kube, path, "Completed", "Failed", 300, "the JobSet to finish")
    replicas = pods(kube, namespace, "jobset.sigs.k8s.io/jobset-name%3Dprep")
    logs = {p["metadata"]["name"]: pod_log(kube, namespace, p["metadata"]["name"]) for p in replicas}
    assert condition(jobset, "Completed"), (jobset.get("status"), logs)
    assert len(replicas) == 2
    by_index = {p["metadata"]["labels"]["jobset.sigs.k8s.io/job-global-index"]: p for p in replicas}
    for pod in replicas:
        assert images_of(pod)["train"] == env["status"]["image"]
        assert pod_log(kube, namespace, pod["metadata"]["name"]).splitlines()[-1] == f"prepared {token} {token}"
    # the script ran once, in the pod of global job index 0 (JobSet sets its hostname: <job>-<index>)
    assert (shared / "ran").read_text().splitlines() == [by_index["0"]["spec"]["hostname"]]


# -- Kueue ---------------------------------------------------------------------------------------------------

KUEUE = "kueue.x-k8s.io/v1beta2"
KUEUE_GATE = "kueue.x-k8s.io/admission"


def held_queue(cluster, namespace: str) -> str:
    """A ClusterQueue on hold (it admits nothing until release_queue) and the namespace's LocalQueue `team`."""
    queue, flavor = f"cq-{namespace}", f"flavor-{namespace}"
    apply(cluster, {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": flavor}})
    apply(cluster, {"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": queue}, "spec": {
        "namespaceSelector": {}, "stopPolicy": "Hold", "resourceGroups": [{
            "coveredResources": ["cpu", "memory"], "flavors": [{"name": flavor, "resources": [
                {"name": "cpu", "nominalQuota": "2"}, {"name": "memory", "nominalQuota": "2Gi"}]}]}]}})
    apply(cluster, {"apiVersion": KUEUE, "kind": "LocalQueue", "metadata": {"name": "team", "namespace": namespace},
                    "spec": {"clusterQueue": queue}})
    return queue


def release_queue(kube, queue: str) -> None:
    kube.request("PATCH", f"/apis/{KUEUE}/clusterqueues/{queue}", {"spec": {"stopPolicy": "None"}},
                 content_type="application/merge-patch+json")


def refused_or_created(kube, namespace: str, body: dict) -> str:
    """The refusal's text, or "" after deleting the pod if it was created (Kueue's cache may not have the new
    LocalQueue yet)."""
    try:
        kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body)
    except urllib.error.HTTPError as error:
        return error.read().decode()
    kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{body['metadata']['name']}?gracePeriodSeconds=0")
    wait_for(lambda: not kube.request("GET", f"/api/v1/namespaces/{namespace}/pods")["items"], 60, "the pod gone")
    return ""


def gates_of(kube, namespace: str, name: str) -> list[str]:
    pod = get(kube, f"/api/v1/namespaces/{namespace}/pods/{name}")
    return [g["name"] for g in pod["spec"].get("schedulingGates") or []]

def test_kueue_queued_job_waits_for_admission_and_for_the_environment(
        cluster, kube, namespace, frameworks, base_image):
    """Two independent waits: Kueue holds the Job suspended (no pod exists) until its queue admits it; then the
    Job's pod is created while the Environment is still building, so kenv admits it gated, and lifts its gate
    with the digest-pinned image once the build is Ready. No pod is ever scheduled with a placeholder image."""
    frameworks.start("kueue")
    queue = held_queue(cluster, namespace)
    gate = BuildGate()
    try:
        token = uuid.uuid4().hex
        create_env(kube, namespace, "queued", gate.spec(base_image, token))
        wait_for(lambda: gate.waiting(token), 180, "the build to reach its gate")
        container = {"name": "train", "image": "placeholder", "command": ["python3", "-c", "print('trained')"],
                     "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}
        apply(cluster, {"apiVersion": "batch/v1", "kind": "Job", "metadata": {
            "name": "train", "namespace": namespace, "labels": {"kueue.x-k8s.io/queue-name": "team"}},
            "spec": {"backoffLimit": 0, "template": labelled_template("queued", [container], restartPolicy="Never")}})
        job_path = f"/apis/batch/v1/namespaces/{namespace}/jobs/train"
        assert get(kube, job_path)["spec"]["suspend"] is True  # Kueue's webhook suspended it on creation
        workloads = f"/apis/{KUEUE}/namespaces/{namespace}/workloads"
        wait_for(lambda: kube.request("GET", workloads)["items"], 60, "Kueue's Workload for the Job")
        assert not pods(kube, namespace, "job-name%3Dtrain")  # queued: the Job controller made no pod

        release_queue(kube, queue)
        pod = wait_for(lambda: (pods(kube, namespace, "job-name%3Dtrain") or [None])[0], 60, "the admitted Job's pod")
        spec = pod["spec"]
        assert get(kube, job_path)["spec"]["suspend"] is False
        assert pod["metadata"]["labels"]["kueue.x-k8s.io/cluster-queue-name"] == queue  # admitted through the queue
        assert [g["name"] for g in spec["schedulingGates"]] == [GATE] and "nodeName" not in spec
        assert get(kube, f"/apis/kenv.dev/v1alpha1/namespaces/{namespace}/environments/queued")["status"][
            "phase"] == "Building"

        gate.release(token)
        env = wait_phase(kube, namespace, "queued", {"Ready", "Failed"})
        assert env["status"]["phase"] == "Ready", env["status"]
        finished = wait_finished(kube, job_path, "Complete", "Failed", 120, "the Job to finish")
        assert condition(finished, "Complete"), finished.get("status")
        pod = pods(kube, namespace, "job-name%3Dtrain")[0]
        assert images_of(pod)["train"] == env["status"]["image"] and not pod["spec"].get("schedulingGates")
        assert pod_log(kube, namespace, pod["metadata"]["name"]).strip() == "trained"
    finally:
        gate.close()
        kube.request("DELETE", f"/apis/batch/v1/namespaces/{namespace}/jobs/train?propagationPolicy=Background")


def test_kueue_queued_plain_pod_is_refused_while_building_and_queued_once_ready(
        cluster, kube, namespace, frameworks, base_image):
    """Kueue's pod integration queues a bare pod by gating it, and compares the pod's containers with its
    Workload: had kenv gated it too, setting the image on un-gating would make Kueue delete the pod. So while the
    Environment builds such a pod is refused, saying what to do; once it is Ready, the pod gets the image at
    admission, waits for Kueue's gate alone and runs when the queue admits it."""
    frameworks.start("kueue")
    queue = held_queue(cluster, namespace)
    gate = BuildGate()
    container = {"name": "train", "image": "placeholder", "command": ["python3", "-c", "print('trained')"],
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}
    labels = {"kenv.dev/environment": "solo", "kueue.x-k8s.io/queue-name": "team"}
    body = {"metadata": {"name": "solo", "labels": labels},
            "spec": {"restartPolicy": "Never", "containers": [container]}}
    pod_path = f"/api/v1/namespaces/{namespace}/pods/solo"
    try:
        token = uuid.uuid4().hex
        create_env(kube, namespace, "solo", gate.spec(base_image, token))
        wait_for(lambda: gate.waiting(token), 180, "the build to reach its gate")
        message = refused(kube, namespace, body)
        assert "is queued by Kueue's pod integration" in message and "--for=condition=Built" in message, message
        # Without the label, queued by the namespace's LocalQueue `default`: Kueue's webhook labels and gates the
        # pod after kenv's, and kenv, called again (reinvocationPolicy IfNeeded), refuses it then.
        apply(cluster, {"apiVersion": KUEUE, "kind": "LocalQueue",
                        "metadata": {"name": "default", "namespace": namespace}, "spec": {"clusterQueue": queue}})
        unlabelled = {**body, "metadata": {"name": "solo", "labels": {"kenv.dev/environment": "solo"}}}
        message = wait_for(lambda: (lambda m: m if "is queued by Kueue's pod integration" in m else None)(
            refused_or_created(kube, namespace, unlabelled)), 30, "the default LocalQueue to queue the pod")
        assert "--for=condition=Built" in message, message

        gate.release(token)
        env = wait_phase(kube, namespace, "solo", {"Ready", "Failed"})
        assert env["status"]["phase"] == "Ready", env["status"]
        kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body)
        gates = gates_of(kube, namespace, "solo")
        assert KUEUE_GATE in gates and GATE not in gates  # Kueue's wait only: the image is already there
        assert images_of(get(kube, pod_path))["train"] == env["status"]["image"]
        time.sleep(2)  # held: Kueue keeps its gate, nothing schedules the pod
        assert KUEUE_GATE in gates_of(kube, namespace, "solo") and "nodeName" not in get(kube, pod_path)["spec"]

        release_queue(kube, queue)
        wait_for(lambda: get(kube, pod_path)["status"].get("phase") in ("Succeeded", "Failed"), 120, "the pod to run")
        assert get(kube, pod_path)["status"]["phase"] == "Succeeded"
        assert pod_log(kube, namespace, "solo").strip() == "trained"
    finally:
        gate.close()
        # Kueue's finalizer is on the pod: delete it while Kueue runs
        if kube.request("GET", f"/api/v1/namespaces/{namespace}/pods")["items"]:
            kube.request("DELETE", f"{pod_path}?gracePeriodSeconds=0")
        wait_for(lambda: not kube.request("GET", f"/api/v1/namespaces/{namespace}/pods")["items"], 120,
                 "the queued pod to be deleted")


# -- RayJob --------------------------------------------------------------------------------------------------

RAY_ENTRYPOINT = ("python3 -c \"import os, ray; ray.init(); "
                  "task = ray.remote(lambda: (os.environ['RAY_NODE_TYPE_NAME'], os.environ['TRAIN_TOKEN'], "
                  "os.environ['TRACKING_KEY'])); "
                  "print('ray-result', *ray.get(task.remote()))\"")


def ray_job_log(head_ip: str, job_id: str) -> str:
    """A Ray job's whole log, from the dashboard's job API on the head pod (port 8265)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{head_ip}:8265/api/jobs/{job_id}/logs", timeout=30) as response:
        return str(json.loads(response.read())["logs"])


def test_rayjob_head_workers_and_submitter_run_in_the_environment(
        cluster, kube, namespace, frameworks, base_image, ca_config_map):
    """The Environment installs ray[default] (a real Kaniko build); KubeRay makes the head, a worker (its
    wait-gcs-ready init container copies the worker's image) and the submitter Job from labelled templates."""
    frameworks.start("kuberay")
    token = uuid.uuid4().hex
    create_env(kube, namespace, "ray", {
        "docker": {"baseImage": base_image}, "pip": {"requirements": f"ray[default]=={RAY_VERSION}\n"},
        "build": {"caBundle": ca_config_map}, **variables_and_secret(kube, namespace, token)})
    env = wait_phase(kube, namespace, "ray", {"Ready", "Failed"}, timeout=900)
    assert env["status"]["phase"] == "Ready", env["status"]
    image = env["status"]["image"]

    def group(name: str, port: int, path: str, memory: str) -> dict:
        probe = {"httpGet": {"path": path, "port": port}, "periodSeconds": 3, "failureThreshold": 100}
        return labelled_template("ray", [{"name": name, "image": "placeholder", "readinessProbe": probe,
                                          "resources": {"requests": {"cpu": "200m", "memory": "512Mi"},
                                                        "limits": {"memory": memory}}}])
    apply(cluster, {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "rj", "namespace": namespace},
                    "spec": {
        "entrypoint": RAY_ENTRYPOINT, "shutdownAfterJobFinishes": False,
        "submitterPodTemplate": labelled_template("ray", [{"name": "ray-job-submitter", "image": "placeholder"}],
                                                  restartPolicy="Never"),
        "rayClusterSpec": {
            "rayVersion": RAY_VERSION,
            "headGroupSpec": {"rayStartParams": {"num-cpus": "0"},
                              "template": group("ray-head", 8265, "/api/gcs_healthz", "2Gi")},
            "workerGroupSpecs": [{"groupName": "workers", "replicas": 1, "minReplicas": 1, "maxReplicas": 1,
                                  "rayStartParams": {},
                                  "template": group("ray-worker", 52365, "/api/local_raylet_healthz", "1Gi")}]}}})
    path = f"/apis/ray.io/v1/namespaces/{namespace}/rayjobs/rj"
    try:
        job = wait_for(lambda: (lambda j: j if (j.get("status") or {}).get("jobStatus") in ("SUCCEEDED", "FAILED")
                                else None)(get(kube, path)), 600, "the RayJob to finish", interval=2)
        submitters = pods(kube, namespace, "job-name%3Drj")
        logs = {p["metadata"]["name"]: pod_log(kube, namespace, p["metadata"]["name"]) for p in submitters}
        assert job["status"]["jobStatus"] == "SUCCEEDED", (job["status"], logs)
        ray_pods = pods(kube, namespace, "ray.io%2Fis-ray-node%3Dyes")
        # the task ran on the worker (the head has no CPUs for tasks) and saw the Environment's variable and secret.
        # The job's own log, from the head's job API: the submitter's `ray job submit` tail can end before the
        # job's last lines reach it.
        head = next(p for p in ray_pods if p["metadata"]["labels"]["ray.io/node-type"] == "head")
        logs["job"] = ray_job_log(head["status"]["podIP"], job["status"]["jobId"])
        assert f"ray-result workers {token} {token}" in logs["job"].splitlines(), logs
        assert sorted(p["metadata"]["labels"]["ray.io/node-type"] for p in ray_pods) == ["head", "worker"]
        for pod in [*ray_pods, *submitters]:
            assert set(images_of(pod).values()) == {image}, images_of(pod)
    finally:
        kube.request("DELETE", path)
        wait_for(lambda: not kube.request("GET", f"/apis/ray.io/v1/namespaces/{namespace}/rayjobs")["items"], 120,
                 "the RayJob's finalizer")


# -- the status contract for controllers ---------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/controllers/wait_for_environment.py"


def test_example_controller_waits_for_the_current_spec_then_creates_its_workload(
        cluster, kube, namespace, base_image, tmp_path):
    """examples/controllers/wait_for_environment.py, as a controller author would run it: it creates nothing
    while the image builds, then prints the image and creates its Job; a failed build exits 1 with why."""
    run = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    gate = BuildGate()
    try:
        token = uuid.uuid4().hex
        create_env(kube, namespace, "waited", gate.spec(base_image, token))
        manifest = tmp_path / "job.yaml"
        container = {"name": "train", "image": "placeholder", "command": ["python3", "-c", "print('trained')"]}
        manifest.write_text(json.dumps({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "after"},
                                        "spec": {"backoffLimit": 0, "template": labelled_template(
                                            "waited", [container], restartPolicy="Never")}}))
        waiter = subprocess.Popen([sys.executable, str(EXAMPLE), "waited", "-n", namespace, "--timeout", "300",
                                   "--create", str(manifest)], env=run, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        wait_for(lambda: gate.waiting(token), 180, "the build to reach its gate")
        time.sleep(2)  # the waiter has listed and is watching: it must still be waiting
        assert waiter.poll() is None
        assert not kube.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"]
        gate.release(token)
        out, err = waiter.communicate(timeout=300)
    finally:
        gate.close()
    assert waiter.returncode == 0, err
    env = get(kube, f"/apis/kenv.dev/v1alpha1/namespaces/{namespace}/environments/waited")
    assert out.splitlines() == [env["status"]["image"]]
    job_path = f"/apis/batch/v1/namespaces/{namespace}/jobs/after"
    finished = wait_finished(kube, job_path, "Complete", "Failed", 120, "the example's Job to finish")
    assert condition(finished, "Complete"), finished.get("status")
    assert images_of(pods(kube, namespace, "job-name%3Dafter")[0])["train"] == env["status"]["image"]

    create_env(kube, namespace, "broken", {"docker": {"dockerfile": f"FROM {base_image}\nRUN exit 3"},
                                           "python": {"userManagedDependencies": True}})
    failed = subprocess.run([sys.executable, str(EXAMPLE), "broken", "-n", namespace, "--timeout", "300"],
                            env=run, capture_output=True, text=True, timeout=330)
    assert failed.returncode == 1 and failed.stdout == "", failed
    assert failed.stderr.startswith(f"Environment {namespace}/broken failed to build: "), failed.stderr
