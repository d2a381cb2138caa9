"""kenv's replicas through faults (issue 14): labelled pods created at a steady rate through the API server while
a fault hits the admission replicas or the leading reconciler, and what each fault cost.

Used by tests/reliability/test_replicas.py (short runs, asserted) and bench/failover.py (the README's figures).
Only stdlib, httpx and the sibling hack modules.
"""

from __future__ import annotations

import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field

from kubeapi import KubeAPI
from podload import PodCreator, open_loop, percentile


@dataclass
class LoadResult:
    sent: int
    seconds: float
    failures: list[str]
    latencies: list[float] = field(repr=False)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        p50 = percentile(self.latencies, 0.5) * 1000 if self.latencies else 0
        p99 = percentile(self.latencies, 0.99) * 1000 if self.latencies else 0
        return (f"{self.sent} pods at {self.rate:.1f}/s, {len(self.failures)} failed, "
                f"p50 {p50:.0f} ms, p99 {p99:.0f} ms")


class Load:
    """Labelled pod CREATEs (held by a scheduling gate of their own, so nothing runs them) at `rate` per second
    from a background thread until stop(); each must come back injected with a digest-pinned image."""

    def __init__(self, kube: KubeAPI, namespace: str, environment: str, rate: float = 50.0) -> None:
        self.namespace, self.environment, self.rate = namespace, environment, rate
        self.creator = PodCreator(kube, ["pods"])
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = self.seconds = 0.0
        self.prefix = f"load-{uuid.uuid4().hex[:6]}"

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        labels = {"kenv.dev/environment": self.environment}
        open_loop(lambda i: self.creator.create(self.namespace, f"{self.prefix}-{i}", labels, "pods", True),
                  self.rate, sys.maxsize, until=self.stopping)

    def stop(self) -> LoadResult:
        if not self.stopping.is_set():
            self.stopping.set()
            self.thread.join()  # open_loop returns once every create has ended, each recorded with its latency
            self.seconds = time.monotonic() - self.started
            self.creator.close()
        latencies = list(self.creator.latency["pods"])
        return LoadResult(len(latencies), self.seconds, list(self.creator.failures["pods"]), latencies)


class BuildJobs:
    """The build Jobs created in the build namespace while it runs (polled from a background thread; Jobs that
    existed before, such as earlier rebuilds of a content, are not counted): two new Jobs for one content hash,
    or a Job created again under a name that already had one, is a duplicate build."""

    def __init__(self, kube: KubeAPI, namespace: str, interval: float = 0.3) -> None:
        self.kube, self.namespace, self.interval = kube, namespace, interval
        self.path = f"/apis/batch/v1/namespaces/{namespace}/jobs?labelSelector=kenv.dev%2Frole%3Dbuild"
        existing = self.kube.request("GET", self.path)["items"]
        self.before = {job["metadata"]["uid"] for job in existing}
        self.names_before = {job["metadata"]["name"] for job in existing}
        self.seen: dict[str, set[str]] = {}  # content hash label -> uids of Jobs created since
        self.recreated: set[str] = set()  # names that had a Job before and got a new one
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                jobs = self.kube.request("GET", self.path)["items"]
            except (OSError, urllib.error.HTTPError):
                continue
            for job in jobs:
                metadata = job["metadata"]
                if metadata["uid"] in self.before:
                    continue
                content = metadata.get("labels", {}).get("kenv.dev/hash", metadata["name"])
                self.seen.setdefault(content, set()).add(metadata["uid"])
                if metadata["name"] in self.names_before:
                    self.recreated.add(metadata["name"])

    def stop(self) -> dict[str, set[str]]:
        """The duplicates: content hashes (or recreated Job names) with more than one Job."""
        self.stopping.set()
        self.thread.join()
        duplicates = {content: uids for content, uids in self.seen.items() if len(uids) > 1}
        return duplicates | {name: {"recreated"} for name in self.recreated}


def retag(registry: str, image: str, tag: str) -> str:
    """Push `image`'s manifest under another tag of the same repository (local registry, plain HTTP): a new
    image tag for `helm upgrade` without a new build."""
    repository = image.split("/", 1)[1].rsplit(":", 1)[0]
    reference = image.rsplit(":", 1)[1]
    accept = ("application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, "
              "application/vnd.oci.image.index.v1+json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    got = urllib.request.Request(f"http://{registry}/v2/{repository}/manifests/{reference}",
                                 headers={"Accept": accept})
    with opener.open(got, timeout=30) as response:
        manifest, media_type = response.read(), response.headers["Content-Type"]
    put = urllib.request.Request(f"http://{registry}/v2/{repository}/manifests/{tag}", data=manifest,
                                 method="PUT", headers={"Content-Type": media_type})
    with opener.open(put, timeout=30):
        pass
    return f"{registry}/{repository}:{tag}"
