"""Pod start latency on the local node (a real kubelet, containerd and runc).

    python bench/pods.py [--pods 10]

Starts its own local cluster and, for two images from its registry (the 0.7 MB pause image and the ~80 MB
Debian/python3 base), times pods from the POST to Running (the container started; polled every 20 ms): the first
pod of each image separately (the node pulls it), then --pods more one after another (image present). For the base
image it also times POST to Succeeded of `python3 -c print(...)`, the shortest useful job. Prints p50/max.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "hack")]
import images  # noqa: E402
from kubeapi import KubeAPI  # noqa: E402
from localcluster import LocalCluster  # noqa: E402


def timed_pod(api: KubeAPI, namespace: str, image: str, until: str, command: list[str] | None = None) -> float:
    name = f"p-{uuid.uuid4().hex[:8]}"
    container: dict = {"name": "c", "image": image}
    if command:
        container["command"] = command
    started = time.monotonic()
    api.request("POST", f"/api/v1/namespaces/{namespace}/pods", {
        "metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [container]}})
    while True:
        phase = api.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")["status"].get("phase")
        if phase == until:
            seconds = time.monotonic() - started
            break
        if phase == "Failed" or time.monotonic() - started > 300:
            raise RuntimeError(f"pod {name} ({image}) ended {phase}")
        time.sleep(0.02)
    api.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", {"gracePeriodSeconds": 0})
    return seconds


def report(what: str, rest: list[float], first: float | None = None) -> None:
    pulled = f"first (image pulled by the node) {first:.2f} s; then " if first is not None else ""
    print(f"  {what}: {pulled}p50 {statistics.median(rest):.2f} s, max {max(rest):.2f} s over {len(rest)} pods")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=10)
    args = parser.parse_args()
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="kenv-bench-pods-")) / "cluster").start()
    try:
        api = KubeAPI(cluster.kubeconfig)
        refs = images.build(["pause", "base"], cluster.registry)
        namespace = "default"
        print(f"pods: start latency on node {cluster.node_name} (kubelet v1.34.4, containerd, runc)")
        for label, image in (("pause image, POST -> Running", refs["pause"]),
                             ("Debian/python3 base, POST -> Running", refs["base"])):
            sleep = None if "pause" in image else ["sleep", "3600"]
            first = timed_pod(api, namespace, image, "Running", sleep)
            report(label, [timed_pod(api, namespace, image, "Running", sleep) for _ in range(args.pods)], first)
        job = ["python3", "-c", "print('done')"]
        report("python3 -c print(...) on the base, POST -> Succeeded",
               [timed_pod(api, namespace, refs["base"], "Succeeded", job) for _ in range(args.pods)])
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
