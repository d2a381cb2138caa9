"""The floor webhook of bench/webhook.py on the bench's cluster: bench/floorwebhook (Go, standard library only)
as a pod behind a Service, registered exactly like kenv's webhook (failurePolicy, timeout, matchPolicy, sideEffects,
reinvocationPolicy, a label objectSelector), so the API server pays the same way to call either.
"""

from __future__ import annotations

import base64
import json
import tempfile
import time
import urllib.error
from pathlib import Path
from typing import Any

import images
from kenv.certs import write_serving_certs
from kubeapi import KubeAPI

NAMESPACE = "kenv-bench-floor"
LABEL = "bench.kenv.dev/floor"  # a pod labelled LABEL=<a floor's name> is sent to that floor webhook
PORT = 8443


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class FloorWebhook:
    def __init__(self, kube: KubeAPI, registry: str, kenv_webhook: dict[str, Any], name: str = "floor",
                 patch: list[dict[str, Any]] | None = None, http1: bool = False) -> None:
        """kenv_webhook: one webhook of kenv's MutatingWebhookConfiguration, whose settings the floor copies;
        patch: the JSON Patch to answer with (default: one operation setting the first container's image);
        http1: offer HTTP/1.1 only, as kenv's server does (the API server otherwise speaks HTTP/2 to the floor)."""
        self.kube, self.registry, self.kenv_webhook = kube, registry, kenv_webhook
        self.name, self.patch, self.http1 = name, patch, http1

    def deploy(self, probe_namespace: str, timeout: float = 120) -> FloorWebhook:
        """probe_namespace: one kenv's webhook applies to, where a dry-run pod proves the floor answers."""
        image = images.build(["floor-webhook"], self.registry)["floor-webhook"]
        with tempfile.TemporaryDirectory() as tmp:
            certs = write_serving_certs(Path(tmp), [f"{self.name}.{NAMESPACE}.svc"])
            tls = {name: _b64((certs / name).read_bytes()) for name in ("tls.crt", "tls.key")}
            ca = _b64((certs / "ca.crt").read_bytes())
        try:
            self.kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        except urllib.error.HTTPError as error:
            if error.code != 409:  # the other floor made it
                raise
        self.kube.request("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets",
                          {"metadata": {"name": self.name}, "type": "kubernetes.io/tls", "data": tls})
        self.kube.request("POST", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments", self._deployment(image))
        self.kube.request("POST", f"/api/v1/namespaces/{NAMESPACE}/services", {
            "metadata": {"name": self.name},
            "spec": {"selector": {"app": self.name}, "ports": [{"port": 443, "targetPort": PORT}]}})
        self._wait_ready(timeout)
        self.kube.request("POST", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
                          self._configuration(ca))
        self._wait_admitting(probe_namespace, timeout)
        return self

    def _deployment(self, image: str) -> dict[str, Any]:
        probe = {"httpGet": {"path": "/healthz", "port": PORT, "scheme": "HTTPS"}, "periodSeconds": 2}
        args = (["-patch", json.dumps(self.patch)] if self.patch else []) + (["-http1"] if self.http1 else [])
        container = {"name": "webhook", "image": image, "args": args, "ports": [{"containerPort": PORT}],
                     "readinessProbe": probe,
                     "volumeMounts": [{"name": "tls", "mountPath": "/tls", "readOnly": True}]}
        return {"metadata": {"name": self.name},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": self.name}},
                         "template": {"metadata": {"labels": {"app": self.name}},
                                      "spec": {"containers": [container], "automountServiceAccountToken": False,
                                               "volumes": [{"name": "tls", "secret": {"secretName": self.name}}]}}}}

    def _configuration(self, ca: str) -> dict[str, Any]:
        copied = {key: self.kenv_webhook[key] for key in ("rules", "failurePolicy", "matchPolicy", "sideEffects",
                                                          "admissionReviewVersions", "timeoutSeconds",
                                                          "reinvocationPolicy", "namespaceSelector")}
        return {"metadata": {"name": self.name},
                "webhooks": [{**copied, "name": f"{self.name}.bench.kenv.dev",
                              "clientConfig": {"caBundle": ca, "service": {
                                  "name": self.name, "namespace": NAMESPACE, "path": "/mutate", "port": 443}},
                              "objectSelector": {"matchLabels": {LABEL: self.name}}}]}

    def pod(self) -> dict[str, Any]:
        path = f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=app%3D{self.name}"
        pods = self.kube.request("GET", path)["items"]
        if len(pods) != 1:
            raise RuntimeError(f"expected one floor webhook pod, found {len(pods)}")
        return dict(pods[0])

    def _wait_admitting(self, namespace: str, timeout: float) -> None:
        """A Ready pod is not yet reachable through its Service: dry-run a labelled pod until the webhook changed
        the image."""
        pod = {"metadata": {"generateName": "floor-probe-", "labels": {LABEL: self.name}},
               "spec": {"containers": [{"name": "c", "image": "probe"}]}}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                admitted = self.kube.request("POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All", pod)
                if admitted["spec"]["containers"][0]["image"] != "probe":
                    return
            except urllib.error.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the floor webhook did not answer through its Service after {timeout:.0f}s")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                conditions = (self.pod().get("status") or {}).get("conditions") or []
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    return
            except RuntimeError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the floor webhook pod was not Ready after {timeout:.0f}s")
