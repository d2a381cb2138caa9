"""A whole kenv stack for benchmarks: local control plane, registry, fakelet, base image, CRDs, operator."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fakelet import Fakelet
from kubeapi import KubeAPI
from localcluster import LocalCluster
from operatorproc import BUILD_NAMESPACE, OperatorProcess

ROOT = Path(__file__).resolve().parent.parent
GROUP_PATH = "/apis/kenv.dev/v1alpha1"


class Stack:
    def __init__(self, max_parallel_builds: int) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="kenv-bench-"))
        self.cap = max_parallel_builds
        self.namespace = f"bench-{uuid.uuid4().hex[:6]}"

    def start(self) -> Stack:
        self.cluster = LocalCluster(self.state / "cluster").start()
        self.kube = KubeAPI(self.cluster.kubeconfig)
        env = {**os.environ, "KENV_REGISTRY": self.cluster.registry}
        self.base_image = subprocess.run([str(ROOT / "hack/base-image.sh")], env=env, check=True, text=True,
                                         capture_output=True).stdout.strip().splitlines()[-1]
        subprocess.run([self.cluster.kubectl, "--kubeconfig", str(self.cluster.kubeconfig), "apply", "-f",
                        str(ROOT / "crds")], check=True, capture_output=True)
        subprocess.run([self.cluster.kubectl, "--kubeconfig", str(self.cluster.kubeconfig), "wait",
                        "--for=condition=Established", "crd/environments.kenv.dev"], check=True, capture_output=True)
        for name in (BUILD_NAMESPACE, self.namespace):
            self.kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
        self.fakelet = Fakelet(self.cluster.kubeconfig, registry=self.cluster.registry,
                               max_parallel_builds=2).start()
        self.operator = OperatorProcess(self.cluster.kubeconfig, self.cluster.registry, self.state / "operator.log",
                                        max_parallel_builds=str(self.cap)).start()
        return self

    def stop(self) -> None:
        self.operator.stop()
        self.fakelet.stop()
        self.cluster.stop()

    def environments(self) -> list[dict[str, Any]]:
        return list(self.kube.request("GET", f"{GROUP_PATH}/namespaces/{self.namespace}/environments")["items"])

    def ready_environment(self, name: str) -> dict[str, Any]:
        self.kube.request("POST", f"{GROUP_PATH}/namespaces/{self.namespace}/environments", {
            "apiVersion": "kenv.dev/v1alpha1", "kind": "Environment", "metadata": {"name": name},
            "spec": {"docker": {"baseImage": self.base_image}, "python": {"userManagedDependencies": True}}})
        while True:
            body = self.kube.request("GET", f"{GROUP_PATH}/namespaces/{self.namespace}/environments/{name}")
            if (body.get("status") or {}).get("phase") == "Ready":
                return dict(body)
            time.sleep(0.5)

    def active_builds(self) -> int:
        jobs = self.kube.request("GET", f"/apis/batch/v1/namespaces/{BUILD_NAMESPACE}/jobs")["items"]
        return sum(1 for j in jobs if not any(c["type"] in ("Complete", "Failed") and c["status"] == "True"
                                              for c in j["status"].get("conditions", [])))

    def load(self, count: int) -> dict[str, Any]:
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(self.active_builds())
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        for i in range(count):
            self.kube.request("POST", f"{GROUP_PATH}/namespaces/{self.namespace}/environments", {
                "apiVersion": "kenv.dev/v1alpha1", "kind": "Environment", "metadata": {"name": f"load-{i}"},
                "spec": {"docker": {"dockerfile": f"FROM {self.base_image}\nLABEL kenv.load={i}"},
                         "python": {"userManagedDependencies": True}}})
        while True:
            items = self.environments()
            if len(items) == count and all((e.get("status") or {}).get("phase") == "Ready" for e in items):
                break
            time.sleep(2)
        seconds = time.monotonic() - started
        done.set()
        sampler.join()
        jobs = self.kube.request("GET", f"/apis/batch/v1/namespaces/{BUILD_NAMESPACE}/jobs")["items"]
        per_content: dict[str, int] = {}
        for job in jobs:
            key = job["metadata"]["labels"]["kenv.dev/hash"]
            per_content[key] = per_content.get(key, 0) + 1
        lost = count - len({e["status"]["digest"] for e in items})
        return {"max_active": max(samples), "samples": len(samples), "seconds": seconds,
                "jobs_per_content": max(per_content.values()), "lost": lost}
