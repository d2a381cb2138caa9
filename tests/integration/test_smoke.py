"""Smoke tests of the local test bed itself: control plane, controllers, scheduler, the real node (kubelet,
containerd, runc, CNI, kube-proxy), webhooks, the registry and the Kaniko executor image. If these fail, every
other integration test fails for reasons unrelated to kenv."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from kubernetes_asyncio import client, config

import images
from kenvfixtures import exit_code, job_outcome, job_pods, pod_log, run_pod, wait_for
from localcluster import LocalCluster
from nodeconfig import NODE_IP
from pki import cert_pem, issue_cert, key_pem, make_ca
from procs import free_port

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])



def kubectl(cluster, *args: str, stdin: str | None = None) -> str:
    return subprocess.run([cluster.kubectl, "--kubeconfig", str(cluster.kubeconfig), *args], input=stdin,
                          check=True, capture_output=True, text=True, timeout=60).stdout


async def test_apiserver_answers_kubectl_and_python_client(cluster):
    assert kubectl(cluster, "get", "--raw", "/readyz").strip() == "ok"
    version = json.loads(kubectl(cluster, "version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    if isinstance(cluster, LocalCluster):
        assert version["serverVersion"]["gitVersion"] == version["clientVersion"]["gitVersion"] == "v1.34.4"

    api = await config.new_client_from_config(config_file=str(cluster.kubeconfig))
    async with api:
        names = {ns.metadata.name for ns in (await client.CoreV1Api(api).list_namespace()).items}
    assert {"default", "kube-system"} <= names


def test_crd_becomes_established_and_serves_objects(cluster, kube, namespace):
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.smoke.kenv.dev"},
           "spec": {"group": "smoke.kenv.dev", "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": schema}]}}
    crd_name = crd["metadata"]["name"]
    kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(crd))
    try:
        def established():
            obj = kube.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/" + crd_name)
            return any(c["type"] == "Established" and c["status"] == "True"
                       for c in obj.get("status", {}).get("conditions") or [])
        wait_for(established, what="CRD Established")
        widget = {"apiVersion": "smoke.kenv.dev/v1", "kind": "Widget", "metadata": {"name": "w1"}, "size": 3}
        path = f"/apis/smoke.kenv.dev/v1/namespaces/{namespace}/widgets"
        wait_for(lambda: _try(lambda: kube.request("POST", path, widget)), what="Widget accepted")
        assert kube.request("GET", f"{path}/w1")["size"] == 3
    finally:
        kubectl(cluster, "delete", "crd", crd_name, "--wait=false")


def _try(fn):
    try:
        return fn()
    except urllib.error.HTTPError as e:
        if e.code in (404, 503):  # the new resource is not served yet
            return None
        raise


def test_node_is_registered_by_a_real_kubelet(cluster, kube):
    nodes = kube.request("GET", "/api/v1/nodes")["items"]
    assert nodes, "no node registered"
    ready = [n for n in nodes if any(c["type"] == "Ready" and c["status"] == "True"
                                     for c in n["status"]["conditions"])]
    assert ready, [n["status"]["conditions"] for n in nodes]
    if isinstance(cluster, LocalCluster):
        (node,) = nodes
        info = node["status"]["nodeInfo"]
        assert node["metadata"]["name"] == cluster.node_name
        assert info["kubeletVersion"] == "v1.34.4" and info["containerRuntimeVersion"].startswith("containerd://1.")
        assert {"type": "InternalIP", "address": NODE_IP} in node["status"]["addresses"]
        assert node["metadata"]["labels"]["kubernetes.io/hostname"] == cluster.node_name
        assert not node["spec"].get("taints")


def test_job_runs_in_a_real_container_and_its_exit_code_counts(kube, namespace, base_image):
    def job(name: str, code: str) -> None:
        kube.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", {
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "main", "image": base_image, "command": ["python3", "-c", code]}]}}}})

    job("ok", "import os, platform; print('hello from', platform.node(), os.getpid())")
    job("fails", "import sys; print('failing on purpose'); sys.exit(3)")
    assert wait_for(lambda: job_outcome(kube, namespace, "ok"), 120, what="Job ok to finish") == "Complete"
    assert wait_for(lambda: job_outcome(kube, namespace, "fails"), 120, what="Job fails to finish") == "Failed"
    ok = job_pods(kube, namespace, "ok")[0]
    log = pod_log(kube, namespace, ok["metadata"]["name"])
    # the container has its own PID namespace (PID 1) and the pod's name as host name
    assert log.strip() == f"hello from {ok['metadata']['name']} 1"
    assert ok["spec"]["nodeName"] and ok["status"]["podIP"].startswith("10.244.")
    failed = job_pods(kube, namespace, "fails")[0]
    assert failed["status"]["phase"] == "Failed" and exit_code(failed) == 3


POD_FEATURES = """
import hashlib, os, pathlib
shm = os.statvfs("/dev/shm")
mounts = [line.split() for line in open("/proc/self/mounts")]
report = {
    "secret_file_sha256": hashlib.sha256(pathlib.Path("/secret/token").read_bytes()).hexdigest(),
    "secret_env_sha256": hashlib.sha256(os.environ["TOKEN"].encode()).hexdigest(),
    "shm_bytes": shm.f_blocks * shm.f_frsize,
    "shm_fs": next(m[2] for m in mounts if m[1] == "/dev/shm"),
    "pod_name": os.environ["POD_NAME"],
}
pathlib.Path("/dev/termination-log").write_text(repr(report))
"""


def test_secret_volume_secret_env_shm_and_termination_message(kube, namespace, base_image):
    token = uuid.uuid4().hex
    kube.request("POST", f"/api/v1/namespaces/{namespace}/secrets", {
        "metadata": {"name": "s"}, "data": {"token": base64.b64encode(token.encode()).decode()}})
    pod, _ = run_pod(kube, namespace, "features", {
        "containers": [{"name": "main", "image": base_image, "command": ["python3", "-c", POD_FEATURES],
                        "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
                                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "volumeMounts": [{"name": "secret", "mountPath": "/secret"},
                                         {"name": "shm", "mountPath": "/dev/shm"}]}],
        "volumes": [{"name": "secret", "secret": {"secretName": "s"}},
                    {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "96Mi"}}]})
    assert exit_code(pod) == 0
    report = eval(pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"])  # noqa: S307 (our repr)
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert report == {"secret_file_sha256": digest, "secret_env_sha256": digest, "shm_bytes": 96 * 1024 * 1024,
                      "shm_fs": "tmpfs", "pod_name": "features"}


IN_CLUSTER_CALL = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
context = ssl.create_default_context(cafile=f"{sa}/ca.crt")
request = urllib.request.Request(f"https://{host}:{port}/version",
                                 headers={"Authorization": "Bearer " + open(f"{sa}/token").read()})
with urllib.request.urlopen(request, context=context, timeout=10) as response:
    print(host, json.load(response)["gitVersion"])
"""


def test_pod_reaches_the_api_server_through_the_kubernetes_service(kube, namespace, base_image):
    service = kube.request("GET", "/api/v1/namespaces/default/services/kubernetes")
    pod, log = run_pod(kube, namespace, "incluster", {"containers": [
        {"name": "main", "image": base_image, "command": ["python3", "-c", IN_CLUSTER_CALL]}]})
    assert exit_code(pod) == 0, log
    host, version = log.split()
    assert host == service["spec"]["clusterIP"] and version == kube.request("GET", "/version")["gitVersion"]


def test_kubectl_logs_exec_and_port_forward(cluster, kube, namespace, base_image):
    marker = uuid.uuid4().hex
    kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", {"metadata": {"name": "web"}, "spec": {
        "containers": [{"name": "main", "image": base_image, "workingDir": "/srv",
                        "command": ["sh", "-c", f"mkdir -p /srv && echo {marker} > /srv/index.html && "
                                                "echo serving && exec python3 -m http.server 8080"],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}}]}})
    wait_for(lambda: any(c["type"] == "Ready" and c["status"] == "True" for c in kube.request(
        "GET", f"/api/v1/namespaces/{namespace}/pods/web").get("status", {}).get("conditions", [])),
             120, what="the web pod to be Ready (a real readiness probe)")
    assert kubectl(cluster, "logs", "-n", namespace, "web").splitlines()[0] == "serving"
    assert kubectl(cluster, "exec", "-n", namespace, "web", "--", "cat", "/srv/index.html").strip() == marker
    port = free_port()
    forward = subprocess.Popen([cluster.kubectl, "--kubeconfig", str(cluster.kubeconfig), "port-forward", "-n",
                                namespace, "pod/web", f"{port}:8080"], stdout=subprocess.PIPE, text=True)
    try:
        assert "Forwarding from" in (forward.stdout.readline() if forward.stdout else "")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/index.html", timeout=10) as response:
            assert response.read().decode().strip() == marker
    finally:
        forward.terminate()
        forward.wait(10)


class _Mutator(BaseHTTPRequestHandler):
    """Adds a label to every object it is asked about, as a JSONPatch in an AdmissionReview response."""

    calls: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        request = review["request"]
        _Mutator.calls.append(request["name"])
        patch = [{"op": "add", "path": "/metadata/labels", "value": {"smoke.kenv.dev/mutated": "yes"}}]
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {
            "uid": request["uid"], "allowed": True, "patchType": "JSONPatch",
            "patch": base64.b64encode(json.dumps(patch).encode()).decode()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_apiserver_calls_a_mutating_webhook_on_127_0_0_1(kube, namespace, tmp_path):
    ca = make_ca("smoke-webhook-ca")
    cert, key = issue_cert(ca, "smoke-webhook", hosts=("127.0.0.1",))
    (tmp_path / "tls.crt").write_bytes(cert_pem(cert))
    (tmp_path / "tls.key").write_bytes(key_pem(key))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Mutator)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    config_name = f"smoke-{namespace}"
    webhooks = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    kube.request("POST", webhooks, {"metadata": {"name": config_name}, "webhooks": [{
        "name": "mutate.smoke.kenv.dev", "sideEffects": "None", "admissionReviewVersions": ["v1"],
        "failurePolicy": "Fail", "timeoutSeconds": 5,
        "clientConfig": {"url": f"https://127.0.0.1:{server.server_port}/mutate",
                         "caBundle": base64.b64encode(cert_pem(ca[0])).decode()},
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                   "resources": ["configmaps"], "scope": "Namespaced"}]}]})
    try:
        # The apiserver picks new webhook configurations up asynchronously: create until one is mutated.
        def mutated_configmap():
            cm = kube.request("POST", f"/api/v1/namespaces/{namespace}/configmaps",
                              {"metadata": {"name": f"probe-{uuid.uuid4().hex[:6]}"}})
            return cm if cm["metadata"].get("labels", {}).get("smoke.kenv.dev/mutated") == "yes" else None
        cm = wait_for(mutated_configmap, timeout=20, interval=0.5, what="webhook to mutate a ConfigMap")
        assert cm["metadata"]["name"] in _Mutator.calls
    finally:
        kube.request("DELETE", f"{webhooks}/{config_name}")
        server.shutdown()


@pytest.fixture(scope="module")
def kaniko_image(cluster) -> str:
    return images.build(["kaniko"], cluster.registry)["kaniko"]


def run_build_job(kube, namespace: str, image: str, destination: str, dockerfile: str,
                  hello: str) -> tuple[str, dict]:
    """A Kaniko build Job shaped like the operator's; returns its outcome and its pod's final state."""
    # Keys are flat; `items` puts them one level down (context/...), as the operator's build Jobs do.
    kube.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", {"metadata": {"name": "ctx"}, "data": {
        "Dockerfile": dockerfile, "hello": hello}})
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "build"},
           "spec": {"backoffLimit": 0, "template": {
               "metadata": {"labels": {"kenv.dev/role": "smoke-build"}},
               "spec": {"restartPolicy": "Never", "containers": [{
                   "name": "build", "image": image,
                   "args": ["--dockerfile=/workspace/context/Dockerfile", "--context=dir:///workspace/context",
                            f"--destination={destination}", "--digest-file=/dev/termination-log",
                            f"--insecure-registry={destination.split('/')[0]}"],
                   "volumeMounts": [{"name": "context", "mountPath": "/workspace"}]}],
                   "volumes": [{"name": "context", "configMap": {"name": "ctx", "items": [
                       {"key": "Dockerfile", "path": "context/Dockerfile"},
                       {"key": "hello", "path": "context/files/hello.txt"}]}}],
               }}}}
    kube.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job)
    outcome = wait_for(lambda: job_outcome(kube, namespace, "build"), timeout=300, interval=0.5,
                       what="the build Job to finish")
    pod = job_pods(kube, namespace, "build")[0]
    return outcome, pod


def test_kaniko_pod_builds_and_pushes_to_the_registry(kube, namespace, registry, kaniko_image):
    tag = uuid.uuid4().hex[:10]
    outcome, pod = run_build_job(kube, namespace, kaniko_image, f"{registry}/smoke/hello:{tag}",
                                 "FROM scratch\nCOPY files/hello.txt /hello.txt\n", f"hello {tag}\n")
    log = pod_log(kube, namespace, pod["metadata"]["name"])
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert outcome == "Complete", log[-3000:]
    digest = terminated["message"]
    assert digest.startswith("sha256:") and len(digest) == 71

    request = urllib.request.Request(f"http://{registry}/v2/smoke/hello/manifests/{tag}", method="HEAD",
                                     headers={"Accept": MANIFEST_TYPES})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as resp:
        assert resp.headers["Docker-Content-Digest"] == digest
    assert f"Pushed {registry}/smoke/hello@{digest}" in log


def test_failed_kaniko_build_reports_exit_code_and_log(kube, namespace, registry, kaniko_image):
    outcome, pod = run_build_job(kube, namespace, kaniko_image, f"{registry}/smoke/broken:1",
                                 "FROM scratch\nCOPY files/missing.txt /\n", "unused\n")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert outcome == "Failed"
    assert pod["status"]["phase"] == "Failed"
    assert terminated["exitCode"] != 0 and terminated["reason"] == "Error"
    log = pod_log(kube, namespace, pod["metadata"]["name"])
    assert "missing.txt" in log
