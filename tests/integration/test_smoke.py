"""Smoke tests of the local test bed itself: control plane, controllers, scheduler, fakelet, webhooks,
buildah, registry. If these fail, every other integration test fails for reasons unrelated to kenv."""

from __future__ import annotations

import base64
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

from kenvfixtures import wait_for
from localcluster import LocalCluster
from pki import cert_pem, issue_cert, key_pem, make_ca

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])

POD_SPEC = {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox:1.36"}]}


def kubectl(cluster, *args: str, stdin: str | None = None) -> str:
    return subprocess.run([cluster.kubectl, "--kubeconfig", str(cluster.kubeconfig), *args], input=stdin,
                          check=True, capture_output=True, text=True, timeout=60).stdout


def job_pods(kube, ns: str, job: str) -> list[dict]:
    return kube.request("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=job-name%3D{job}")["items"]


def job_condition(kube, ns: str, job: str) -> str | None:
    status = kube.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/{job}").get("status", {})
    finished = [c["type"] for c in status.get("conditions") or []
                if c["type"] in ("Complete", "Failed") and c["status"] == "True"]
    return finished[0] if finished else None


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


def test_job_pod_is_scheduled_run_by_fakelet_and_job_completes(kube, namespace, fakelet):
    if fakelet is None:
        pytest.skip("the fakelet is disabled (KENV_TEST_FAKELET=0)")
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "smoke"},
           "spec": {"backoffLimit": 0, "template": {
               "metadata": {"annotations": {"kenv.dev/fakelet-exit": "0"}},
               "spec": POD_SPEC}}}
    kube.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job)

    pod = wait_for(lambda: job_pods(kube, namespace, "smoke"), what="the job controller's pod")[0]
    wait_for(lambda: job_condition(kube, namespace, "smoke") == "Complete", what="Job Complete")
    pod = kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}")
    assert pod["spec"]["nodeName"] == "kenv-node"  # bound by the real scheduler
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


def test_fakelet_holds_completes_and_finalizes_deletion(kube, namespace, fakelet):
    if fakelet is None:
        pytest.skip("the fakelet is disabled (KENV_TEST_FAKELET=0)")
    fakelet.hold = lambda pod: pod["metadata"].get("labels", {}).get("smoke") == "hold"
    try:
        for name in ("held-a", "held-b"):
            kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", {
                "metadata": {"name": name, "labels": {"smoke": "hold"}},
                "spec": POD_SPEC})
        both = {(namespace, "held-a"), (namespace, "held-b")}
        wait_for(lambda: both <= set(fakelet.held()), what="held pods")
        pods = f"/api/v1/namespaces/{namespace}/pods"
        running = kube.request("GET", f"{pods}/held-a")
        assert running["status"]["phase"] == "Running"
        assert running["status"]["containerStatuses"][0]["ready"] is True

        fakelet.complete((namespace, "held-a"), exit_code=3)
        failed = kube.request("GET", f"{pods}/held-a")["status"]
        assert failed["phase"] == "Failed"
        assert failed["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3

        # Without a kubelet confirming, a bound pod would stay Terminating forever.
        kube.request("DELETE", f"{pods}/held-b")
        wait_for(lambda: _gone(kube, f"{pods}/held-b"), what="deleted pod to disappear")
        assert (namespace, "held-b") not in fakelet.held()
    finally:
        fakelet.hold = None


def _gone(kube, path: str) -> bool:
    try:
        kube.request("GET", path)
        return False
    except urllib.error.HTTPError as e:
        return e.code == 404


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


def run_build_job(kube, namespace: str, destination: str, dockerfile: str, hello: str) -> tuple[str, dict]:
    """A Kaniko-style build Job, as the operator makes them; returns its outcome and its pod's final state."""
    # Keys are flat; `items` lays them out as a directory tree, as the operator's context ConfigMaps do.
    kube.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", {"metadata": {"name": "ctx"}, "data": {
        "Dockerfile": dockerfile, "hello": hello}})
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "build"},
           "spec": {"backoffLimit": 0, "template": {
               "metadata": {"labels": {"kenv.dev/role": "build"}},
               "spec": {"restartPolicy": "Never", "containers": [{
                   # A buildah-image pod: the fakelet builds it with buildah on the host (test_kaniko.py
                   # covers the Kaniko path).
                   "name": "build", "image": "quay.io/buildah/stable:v1.38",
                   "args": ["--dockerfile=Dockerfile", "--context=dir:///workspace",
                            f"--destination={destination}", "--digest-file=/dev/termination-log"],
                   "volumeMounts": [{"name": "context", "mountPath": "/workspace"}]}],
                   "volumes": [{"name": "context", "configMap": {"name": "ctx", "items": [
                       {"key": "Dockerfile", "path": "Dockerfile"},
                       {"key": "hello", "path": "files/hello.txt"}]}}],
               }}}}
    kube.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job)
    outcome = wait_for(lambda: job_condition(kube, namespace, "build"), timeout=300, interval=0.5,
                       what="the build Job to finish")
    pod = job_pods(kube, namespace, "build")[0]
    return outcome, pod


def test_build_pod_is_built_with_buildah_and_pushed_to_registry(kube, namespace, fakelet, registry):
    if fakelet is None:
        pytest.skip("the fakelet is disabled (KENV_TEST_FAKELET=0)")
    tag = uuid.uuid4().hex[:10]
    outcome, pod = run_build_job(kube, namespace, f"{registry}/smoke/hello:{tag}",
                                 "FROM scratch\nCOPY files/hello.txt /hello.txt\n", f"hello {tag}\n")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert outcome == "Complete", terminated.get("message")
    digest = terminated["message"]
    assert digest.startswith("sha256:") and len(digest) == 71

    request = urllib.request.Request(f"http://{registry}/v2/smoke/hello/manifests/{tag}", method="HEAD",
                                     headers={"Accept": MANIFEST_TYPES})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as resp:
        assert resp.headers["Docker-Content-Digest"] == digest
    assert fakelet.log_path(namespace, pod["metadata"]["name"]).read_text().count("$ buildah") >= 2


def test_failed_build_reports_exit_code_and_log_tail(kube, namespace, fakelet, registry):
    if fakelet is None:
        pytest.skip("the fakelet is disabled (KENV_TEST_FAKELET=0)")
    outcome, pod = run_build_job(kube, namespace, f"{registry}/smoke/broken:1",
                                 "FROM scratch\nCOPY files/missing.txt /\n", "unused\n")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert outcome == "Failed"
    assert pod["status"]["phase"] == "Failed"
    assert terminated["exitCode"] != 0 and terminated["reason"] == "Error"  # buildah's own code (125)
    assert "missing.txt" in terminated["message"]
