"""A whole kenv stack for benchmarks: the local cluster (control plane, registry, a real node), the base image,
the CRDs and kenv installed by Helm (the operator a real pod; builds are real Kaniko pods)."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import images
from kubeapi import KubeAPI
from localcluster import LocalCluster
from release import BUILD_NAMESPACE, KenvRelease

ROOT = Path(__file__).resolve().parent.parent
GROUP_PATH = "/apis/kenv.dev/v1alpha1"


def metric_sum_count(text: str, name: str) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram in exposition text."""
    found = {m[0]: float(m[1]) for m in re.findall(rf"^{name}_(sum|count) (\S+)$", text, re.M)}
    return found.get("sum", 0.0), found.get("count", 0.0)


@dataclass
class Observed:
    """A Prometheus histogram's series: seconds in all and the cumulative count per bucket (le: upper bound)."""

    seconds: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    def count(self) -> int:
        return int(self.buckets.get(math.inf, 0.0))

    def at_most(self, bound: float) -> int:
        """How many observations the bucket `bound` (one of the histogram's) holds."""
        return int(self.buckets.get(bound, 0.0))

    def mean(self) -> float:
        return self.seconds / self.count() if self.count() else math.nan

    def longest_under(self) -> float:
        """The smallest bucket bound every observation stayed under (seconds); nan for none."""
        if not self.count():
            return math.nan
        return min((le for le, count in self.buckets.items() if count >= self.count()), default=math.nan)


def histograms(text: str, name: str, since: str | None = None) -> dict[str, Observed]:
    """Histogram `name` in Prometheus exposition text, per series (its labels but `le`, as written: "" for none),
    less what `since` (the same text read earlier) held."""
    found: dict[str, Observed] = {}
    for labels, le, value in re.findall(rf'^{name}_bucket\{{(.*?),?le="([^"]+)"\}} (\S+)$', text, re.M):
        found.setdefault(labels, Observed()).buckets[float(le)] = float(value)
    for labels, value in re.findall(rf"^{name}_sum(?:\{{(.*?)\}})? (\S+)$", text, re.M):
        found.setdefault(labels, Observed()).seconds = float(value)
    earlier = histograms(since, name) if since is not None else {}
    for labels, series in found.items():
        before = earlier.get(labels, Observed())
        series.seconds -= before.seconds
        series.buckets = {le: count - before.buckets.get(le, 0.0) for le, count in series.buckets.items()}
    return found


class Stack:
    def __init__(self, max_parallel_builds: int, replicas: int = 1, **operator_settings: str) -> None:
        """max_parallel_builds: the operator's cap; replicas: of admission and of controllers (1, as the figures
        before replicated admission were taken; bench/failover.py runs the chart's 2); operator_settings: extra
        KENV_* settings (poll_seconds="5")."""
        self.state = Path(tempfile.mkdtemp(prefix="kenv-bench-"))
        self.cap = max_parallel_builds
        self.replicas = replicas
        self.operator_settings = operator_settings
        self.namespace = f"bench-{uuid.uuid4().hex[:6]}"

    def start(self) -> Stack:
        self.cluster = LocalCluster(self.state / "cluster").start()
        try:
            return self._start_rest()
        except BaseException:
            self.stop()
            raise

    def _start_rest(self) -> Stack:
        self.kube = KubeAPI(self.cluster.kubeconfig)
        self.base_image = images.build(["base"], self.cluster.registry)["base"]
        subprocess.run([self.cluster.kubectl, "--kubeconfig", str(self.cluster.kubeconfig), "apply", "-f",
                        str(ROOT / "crds")], check=True, capture_output=True)
        self._wait_established(["environments.kenv.dev", "clusterenvironments.kenv.dev"])
        self.kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": self.namespace}})
        self.operator = KenvRelease(self.cluster, settings=self.operator_settings,
                                    values={"maxParallelBuilds": self.cap, "admission": {"replicas": self.replicas},
                                            "controller": {"replicas": self.replicas}}).install()
        return self

    def _wait_established(self, crds: list[str], timeout: float = 60) -> None:
        """Poll the CRDs until Established (`kubectl wait` right after `apply` may find none yet and fail)."""
        deadline = time.monotonic() + timeout
        pending = list(crds)
        while pending:
            try:
                body = self.kube.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{pending[0]}")
                if any(c["type"] == "Established" and c["status"] == "True"
                       for c in (body.get("status") or {}).get("conditions") or []):
                    pending.pop(0)
                    continue
            except urllib.error.HTTPError as error:
                if error.code != 404:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {pending[0]} not Established after {timeout:.0f}s")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the cluster and remove its state (registry, images, package cache): about 1 GB a run."""
        if hasattr(self, "cluster"):
            self.cluster.stop()
        shutil.rmtree(self.state, ignore_errors=True)

    def operator_metrics(self, role: str = "controller") -> str:
        """The Prometheus text of the leading controller, or of the (one) admission pod, read from its pod
        address (this host reaches pod IPs)."""
        pod = self.operator.pod() if role == "controller" else self.operator.pods(role=role)[0]
        return self.operator.pod_metrics(pod)

    def pod_log(self, namespace: str, pod: str) -> str:
        return str(self.kube.text(f"/api/v1/namespaces/{namespace}/pods/{pod}/log"))

    def environments(self) -> list[dict[str, Any]]:
        return list(self.kube.request("GET", f"{GROUP_PATH}/namespaces/{self.namespace}/environments")["items"])

    def create_environment(self, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> None:
        self.kube.request("POST", f"{GROUP_PATH}/namespaces/{self.namespace}/environments", {
            "apiVersion": "kenv.dev/v1alpha1", "kind": "Environment",
            "metadata": {"name": name, "annotations": annotations or {}}, "spec": spec})

    def wait_ready(self, name: str, timeout: float = 900) -> dict[str, Any]:
        """The Environment once Ready; RuntimeError if it Fails, TimeoutError after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.kube.request("GET", f"{GROUP_PATH}/namespaces/{self.namespace}/environments/{name}")
            status = body.get("status") or {}
            if status.get("phase") == "Ready":
                return dict(body)
            if status.get("phase") == "Failed":
                raise RuntimeError(f"Environment {name} Failed: {status.get('conditions')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Environment {name} not Ready after {timeout:.0f}s: {status}")
            time.sleep(0.2)

    def ready_environment(self, name: str) -> dict[str, Any]:
        self.create_environment(name, {"docker": {"baseImage": self.base_image},
                                       "python": {"userManagedDependencies": True}})
        return self.wait_ready(name)

    def build_jobs(self, content_hash: str | None = None) -> list[dict[str, Any]]:
        selector = f"?labelSelector=kenv.dev%2Fhash%3D{content_hash[:40]}" if content_hash else ""
        return list(self.kube.request("GET", f"/apis/batch/v1/namespaces/{BUILD_NAMESPACE}/jobs{selector}")["items"])

    def active_builds(self) -> int:
        jobs = self.kube.request("GET", f"/apis/batch/v1/namespaces/{BUILD_NAMESPACE}/jobs")["items"]
        return sum(1 for j in jobs if not any(c["type"] in ("Complete", "Failed") and c["status"] == "True"
                                              for c in j["status"].get("conditions", [])))

    def load(self, count: int, timeout: float = 7200) -> dict[str, Any]:
        """count Environments of distinct content (FROM base + one LABEL each), created at once; samples the
        active build Jobs every 0.5 s until all are Ready (or one Failed, or timeout)."""
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(self.active_builds())
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        try:
            for i in range(count):
                self.create_environment(f"load-{i}", {
                    "docker": {"dockerfile": f"FROM {self.base_image}\nLABEL kenv.load={self.namespace}-{i}"},
                    "python": {"userManagedDependencies": True}})
            while True:
                items = self.environments()
                phases = [(e.get("status") or {}).get("phase") for e in items]
                if len(items) == count and all(p == "Ready" for p in phases):
                    break
                failed = [e["metadata"]["name"] for e, p in zip(items, phases, strict=True) if p == "Failed"]
                if failed:
                    raise RuntimeError(f"Environments Failed: {failed[:5]}")
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"not all Ready after {timeout:.0f}s: "
                                       f"{ {p: phases.count(p) for p in set(phases)} }")
                time.sleep(1)
            seconds = time.monotonic() - started
        finally:
            done.set()
            sampler.join()
        per_content: dict[str, int] = {}
        for job in self.build_jobs():
            key = job["metadata"]["labels"]["kenv.dev/hash"]
            per_content[key] = per_content.get(key, 0) + 1
        digests = {e["status"]["digest"] for e in items}
        return {"max_active": max(samples), "samples": len(samples), "seconds": seconds,
                "contents": len({e["status"]["hash"] for e in items}), "jobs": sum(per_content.values()),
                "jobs_per_content_max": max(per_content.values()), "jobs_per_content_min": min(per_content.values()),
                "digests": len(digests), "lost": count - len(digests)}
