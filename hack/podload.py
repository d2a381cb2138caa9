"""Labelled pod CREATEs sent on an open loop through the API server, for bench/webhook.py and bench/reconcile.py,
and the AdmissionReview the API server sends a webhook for such a pod (bench/webhook.py, bench/admission_profile.py).

Every pod carries a scheduling gate: admission is what is measured, nothing schedules or runs it. Latency is the
client's POST round trip over kept-alive connections; a request is sent on schedule whether or not the previous
ones have answered.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from kubeapi import KubeAPI


def admission_review(namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    """An AdmissionReview as the API server sends it for a labelled pod CREATE (defaulted fields left out)."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"train-{uuid.uuid4().hex[:8]}", "namespace": namespace, "labels": labels},
           "spec": {"containers": [{"name": "train", "image": "placeholder", "command": ["python", "train.py"]}]}}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                        "namespace": namespace, "operation": "CREATE", "object": pod, "dryRun": False,
                        "userInfo": {"username": f"system:serviceaccount:{namespace}:default", "groups": []}}}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class PodCreator:
    """Creates pods and records each one's latency and failure under a kind of the caller's choosing."""

    def __init__(self, kube: KubeAPI, kinds: list[str]) -> None:
        self.client = httpx.Client(base_url=kube.server, verify=kube.ssl, headers=kube.headers, trust_env=False,
                                   timeout=30, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = {kind: [] for kind in kinds}
        self.failures: dict[str, list[str]] = {kind: [] for kind in kinds}

    def create(self, namespace: str, name: str, labels: dict[str, str], kind: str, injected: bool,
               record: bool = True) -> None:
        """injected: the pod must come back with a digest-pinned image (a webhook set it), else it failed."""
        body = {"metadata": {"name": name, "labels": labels},
                "spec": {"schedulingGates": [{"name": "bench.kenv.dev/hold"}],
                         "containers": [{"name": "c", "image": "x", "command": ["true"]}]}}
        started = time.perf_counter()
        try:
            response = self.client.post(f"/api/v1/namespaces/{namespace}/pods", json=body)
            elapsed = time.perf_counter() - started
            failure = None
            if response.status_code != 201:
                failure = f"{name}: HTTP {response.status_code} {response.text[:300]}"
            elif injected and "@sha256:" not in response.json()["spec"]["containers"][0]["image"]:
                failure = f"{name}: admitted without a digest-pinned image"
        except httpx.HTTPError as error:
            elapsed, failure = time.perf_counter() - started, f"{name}: {error!r}"
        if not record:
            if failure:
                raise RuntimeError(f"warm-up pod failed: {failure}")
            return
        with self.lock:
            self.latency[kind].append(elapsed)
            if failure:
                self.failures[kind].append(failure)

    def close(self) -> None:
        self.client.close()


def open_loop(send: Callable[[int], None], rate: float, total: int,
              until: threading.Event | None = None) -> tuple[float, int]:
    """Call send(i) for i in range(total) at `rate` per second from 64 threads, stopping early once `until` is set;
    returns when every call has ended, with (seconds taken to send, calls sent more than one interval late)."""
    interval, late = 1 / rate, 0
    with ThreadPoolExecutor(max_workers=64) as pool:
        start = time.monotonic()
        for i in range(total):
            if until is not None and until.is_set():
                break
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -interval:
                late += 1
            pool.submit(send, i)
    return time.monotonic() - start, late
