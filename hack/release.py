"""kenv as its users install it: `helm upgrade --install` of charts/kenv with the operator image built here, the
operator a real pod on the local node, its webhook reached by the API server through the chart's Service.

Used by `make run`, the tests and the benchmarks. Only stdlib and pyyaml besides the sibling hack modules.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

import images
from kubeapi import KubeAPI
from localcluster import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts/kenv"
BUILD_NAMESPACE = "kenv-system"
ROLES = ("controller", "admission")  # the chart's two Deployments, `<release>-<role>`
LEASE = "kenv-reconciler"  # the controllers' Lease (KENV_LEASE_NAME's default)


class KenvRelease:
    """One Helm release of the chart. `settings` become KENV_* variables (extraEnv), `values` chart values."""

    def __init__(self, cluster: Any, namespace: str = BUILD_NAMESPACE, name: str = "kenv",
                 settings: dict[str, str] | None = None, values: dict[str, Any] | None = None) -> None:
        self.cluster = cluster
        self.lease_name = (settings or {}).get("KENV_LEASE_NAME", LEASE)
        self.namespace = namespace
        self.name = name
        self.settings = settings or {}
        self.extra_values = values or {}
        self.api = KubeAPI(cluster.kubeconfig)
        self.helm = str(Path(cluster.kubectl).parent / "helm")
        self.images: dict[str, str] = {}
        self._scaled_from: dict[str, int] | None = None  # replicas per role before stop()

    # -- Helm

    def values(self) -> dict[str, Any]:
        registry = self.cluster.registry
        operator_repo, _, operator_tag = self.images["operator"].rpartition(":")
        values: dict[str, Any] = {
            "destinationRepo": f"{registry}/kenv/environments",
            "insecureRegistries": [registry],
            "image": {"repository": operator_repo, "tag": operator_tag},
            "builderImages": {name: self.images[name] for name in ("kaniko", "buildah", "buildkit")},
            "conda": {"installerImage": self.images["conda-installer"]},
            # A cluster of hack/localcluster.py runs its node on this machine: the package cache lives in its
            # state folder (kept across `hack/cluster up`s, like the registry's contents). Elsewhere: off.
            "packageCache": {"hostPath": str(Path(self.cluster.state_dir) / "package-cache")
                             if isinstance(self.cluster, LocalCluster) else ""},
            "extraEnv": [{"name": f"KENV_{k.upper()}", "value": str(v)} for k, v in self.settings.items()],
        }
        return _merge(values, self.extra_values)

    def run_helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        home = Path(self.cluster.state_dir) / "helm"
        env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
               "HELM_DATA_HOME": str(home / "data")}
        result = subprocess.run([self.helm, "--kubeconfig", str(self.cluster.kubeconfig), *args],
                                capture_output=True, text=True, env=env)
        if check and result.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def install(self, timeout: float = 300, **values: Any) -> KenvRelease:
        """Build and push the images (cached by content), `helm upgrade --install --wait`, then wait until the
        webhook answers admission requests."""
        self.images = images.build(["operator", "kaniko", "buildah", "buildkit", "conda-installer"],
                                   self.cluster.registry)
        self.extra_values = _merge(self.extra_values, values)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(self.values(), f)
        try:
            self.run_helm("upgrade", "--install", self.name, str(CHART), "-n", self.namespace, "--create-namespace",
                          "-f", f.name, "--wait", f"--timeout={int(timeout)}s")
        finally:
            os.unlink(f.name)
        if self.replicas("controller"):
            wait_until(self._leading, timeout, "a controller to take the Lease")
        if self.replicas("admission"):
            self.wait_admitting(timeout)
        return self

    def uninstall(self) -> None:
        self.run_helm("uninstall", self.name, "-n", self.namespace, "--wait", check=False)

    # -- the operator pods: `admission` replicas and `controller` replicas, one of which leads

    def deployment_path(self, role: str = "controller") -> str:
        return f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{self.name}-{role}"

    def replicas(self, role: str = "admission") -> int:
        return int(self.api.request("GET", self.deployment_path(role))["spec"].get("replicas", 1))

    def pods(self, terminating: bool = False, role: str | None = None) -> list[dict]:
        """The release's operator pods (of one role); those being deleted only with terminating=True."""
        selector = f"app.kubernetes.io/instance={self.name}"
        if role:
            selector += f",app.kubernetes.io/component={role}"
        pods = self.api.request("GET", f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={selector}")["items"]
        return [p for p in pods if terminating or "deletionTimestamp" not in p["metadata"]]

    def ready_pods(self, role: str) -> list[dict]:
        return [p for p in self.pods(role=role) if _is_ready(p)]

    def lease(self) -> dict[str, Any]:
        """The controllers' Lease spec ({} while there is none)."""
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.lease_name}"
        try:
            return dict(self.api.request("GET", path).get("spec") or {})
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return {}
            raise

    def lease_holder(self) -> str:
        """The Lease holder's identity (`<pod>_<pid>`), "" when free or absent."""
        return str(self.lease().get("holderIdentity") or "")

    def wait_new_leader(self, old: str, timeout: float = 120) -> tuple[str, float]:
        """The first holder other than `old` (and not empty), and the seconds until it showed."""
        took = wait_until(lambda: self.lease_holder() not in ("", old), timeout, f"a leader other than {old}",
                          interval=0.2)
        return self.lease_holder(), took

    def pod(self) -> dict:
        """The leading controller pod (the one reconciling)."""
        holder = self.lease_holder().rpartition("_")[0]
        pods = [p for p in self.pods(role="controller") if p["metadata"]["name"] == holder]
        if len(pods) != 1:
            raise RuntimeError(f"no controller pod holds the Lease (holder {holder!r}, pods "
                               f"{[p['metadata']['name'] for p in self.pods(role='controller')]})")
        return pods[0]

    def ready(self) -> bool:
        pods = self.pods()
        return bool(pods) and all(_is_ready(p) for p in pods)

    def wait_ready(self, timeout: float = 180) -> None:
        """Every pod Ready and, when controllers run, one of them leading."""
        wait_until(lambda: self.ready() and (self._leading() or not self.replicas("controller")), timeout,
                   "the operator pods to be Ready and one to lead")

    def _leading(self) -> bool:
        try:
            return bool(self.pod())
        except RuntimeError:
            return False

    def wait_admitting(self, timeout: float = 120) -> None:
        """Ready is not enough for the API server to reach the webhook: a dry-run of a labelled pod must come
        back refused by kenv itself (the probe Environment does not exist), not by a failed webhook call."""
        namespace = self._probe_namespace()
        pod = {"metadata": {"generateName": "kenv-probe-", "labels": {
            "kenv.dev/environment": f"kenv-probe-{uuid.uuid4().hex[:6]}"}},
               "spec": {"containers": [{"name": "c", "image": "probe"}]}}

        def answered() -> bool:
            try:
                self.api.request("POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All", pod)
            except urllib.error.HTTPError as error:
                return "does not exist" in error.read().decode(errors="replace")
            except OSError:
                return False
            return False
        wait_until(answered, timeout, "the webhook to answer through its Service")

    def _probe_namespace(self) -> str:
        """A namespace the webhook applies to (never the release's own)."""
        return "default" if self.namespace != "default" else "kube-public"

    def scale(self, replicas: dict[str, int], timeout: float = 180) -> None:
        """Scale the Deployments of the roles named; when none is left at 0, wait until all are Ready (and
        admitting, with admission replicas)."""
        for role, count in replicas.items():
            self.api.request("PATCH", f"{self.deployment_path(role)}/scale", {"spec": {"replicas": count}},
                             "application/merge-patch+json")
        for role, count in replicas.items():
            if count == 0:
                wait_until(lambda role=role: not self.pods(terminating=True, role=role), timeout,
                           f"the {role} pods to be gone")
        if all(replicas.values()):
            self.wait_ready(timeout)
            if self.replicas("admission"):
                self.wait_admitting(timeout)

    def stop(self) -> None:
        """No operator (and no webhook) until start(): both Deployments scaled to 0."""
        if self._scaled_from is None:  # stopped twice: start() restores what ran before the first
            self._scaled_from = {role: self.replicas(role) for role in ROLES}
        self.scale(dict.fromkeys(ROLES, 0))

    def start(self) -> None:
        self.scale(self._scaled_from or dict.fromkeys(ROLES, 1))
        self._scaled_from = None

    def restart_count(self, pod: dict | None = None) -> int:
        """The operator container's restarts in `pod` as it is now (default: the leader's pod)."""
        name = (pod or self.pod())["metadata"]["name"]
        now = self.api.request("GET", f"/api/v1/namespaces/{self.namespace}/pods/{name}")
        return sum(s.get("restartCount", 0) for s in now["status"].get("containerStatuses", []))

    def kill(self) -> None:
        """SIGKILL the leading controller's processes, as the kernel's OOM killer would; the kubelet restarts
        the container (same pod, same Lease identity: it takes the Lease back at once unless a standby took it)
        and wait_ready() sees a leader again."""
        pod = self.pod()
        node = getattr(self.cluster, "node", None)
        if node is None:  # a cluster whose nodes we cannot reach: the closest is a pod deleted without grace
            existing = {p["metadata"]["uid"] for p in self.pods(terminating=True, role="controller")}
            self._delete_now(pod)
            wait_until(lambda: {p["metadata"]["uid"] for p in self.pods(role="controller")} - existing, 60,
                       "the Deployment to replace the operator pod")
            return
        before = self.restart_count(pod)
        self._kill_operator_container(pod)
        wait_until(lambda: self.restart_count(pod) > before, 60, "the kubelet to restart the operator container")

    def crash_leader(self) -> str:
        """The leader gone with no goodbye and no restart in place, as with its node: its container SIGKILLed
        (the Lease is not released) and its pod deleted without grace, so a standby must wait the lease out.
        Returns the old holder's identity."""
        pod, old = self.pod(), self.lease_holder()
        self._kill_operator_container(pod)
        self._delete_now(pod)
        return old

    def _kill_operator_container(self, pod: dict) -> None:
        """SIGKILL the operator container of `pod`; when it has no process, say what its kubelet reports of
        it (its state, its last end and the end of its previous log): a leader's container that is not running
        ended on its own, which is a finding in itself."""
        try:
            self.cluster.node.kill_container(pod["metadata"]["uid"], _operator_container(pod)["containerID"])
        except RuntimeError as error:
            raise RuntimeError(f"{error}; {self.container_report(pod)}") from error

    def container_report(self, pod: dict) -> str:
        """The operator container of `pod` as its kubelet reports it now, with the end of its previous log."""
        name = pod["metadata"]["name"]
        now = self.api.request("GET", f"/api/v1/namespaces/{self.namespace}/pods/{name}")
        status = _operator_container(now)
        report = (f"pod {name}: restarts {status.get('restartCount', 0)}, state {status.get('state')}, "
                  f"last state {status.get('lastState')}")
        if status.get("restartCount"):
            with contextlib.suppress(urllib.error.HTTPError):
                previous = self.api.text(f"/api/v1/namespaces/{self.namespace}/pods/{name}/log"
                                         f"?container=operator&previous=true&tailLines=20")
                report += "\nthe end of its previous log:\n" + previous
        return report

    def _delete_now(self, pod: dict) -> None:
        self.api.request("DELETE", f"/api/v1/namespaces/{self.namespace}/pods/{pod['metadata']['name']}",
                         {"gracePeriodSeconds": 0})

    def main_pid(self) -> int:
        """The operator container's main process as this host sees it (for RSS and CPU figures)."""
        pod = self.pod()
        pids = self.container_pids(pod)
        if not pids:
            raise RuntimeError(f"no process found for the operator container of {pod['metadata']['name']}")
        return min(pids)

    def container_pids(self, pod: dict) -> list[int]:
        """The operator container's processes in `pod`, as this host sees them."""
        return self.cluster.node.container_pids(pod["metadata"]["uid"], _operator_container(pod)["containerID"])

    # -- what the operator says

    def metrics(self) -> str:
        return self.pod_metrics(self.pod())

    def pod_metrics(self, pod: dict) -> str:
        port = next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p["name"] == "metrics")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{pod['status']['podIP']}:{port}/metrics", timeout=10) as response:
            return str(response.read().decode())

    def log_text(self) -> str:
        """The logs of every operator container this release runs (the previous instance's too)."""
        parts = []
        for pod in self.pods():
            base = f"/api/v1/namespaces/{self.namespace}/pods/{pod['metadata']['name']}/log?container=operator"
            statuses = pod.get("status", {}).get("containerStatuses", [])
            if any(s.get("restartCount") for s in statuses):
                with contextlib.suppress(urllib.error.HTTPError):
                    parts.append(self.api.text(base + "&previous=true"))
            with contextlib.suppress(urllib.error.HTTPError):
                parts.append(self.api.text(base))
        return "\n".join(parts)



def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _is_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def _operator_container(pod: dict) -> dict:
    return next(s for s in pod["status"]["containerStatuses"] if s["name"] == "operator")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5) -> float:
    """Poll until predicate() is truthy; the seconds it took. TimeoutError naming `what` after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
