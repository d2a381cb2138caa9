"""Reconcile throughput when every image already exists (the cache-hit path the operator takes most often).

  python bench/reconcile.py [--envs 1000] [--contents 200] [--namespaces 5] [--pods 1000] [--pod-envs 200]

Pushes one tiny image per distinct content under the tag the operator will look up, applies the Environments,
and prints apply→Ready p50/p99, the total time, builds started (must be 0), the operator's peak RSS and CPU, and
the same figures for a floor loop that does only the API and registry round trips one reconcile needs (see
floor_loop), run in this process against the same cluster.
Targets (issue 4): all Ready ≤ 60 s, p50 ≤ 1 s, ratio to the floor ≤ 3, RSS ≤ 250 MiB.
Then admission at that scale: --pods labelled pods (scheduling-gated, bench/podload.py) spread over the first
--pod-envs Environments, sent at --pod-rate pods/s while the operator holds all of them in its index; prints the
failed admissions (refused, or admitted without a digest-pinned image: target 0), p50/p99 of the CREATE round trip,
and the operator's peak RSS and CPU after them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "hack"), str(ROOT / "operator")]

from kenv.models import EnvironmentSpec  # noqa: E402
from kenv.render import render_context  # noqa: E402
from podload import PodCreator, open_loop, percentile  # noqa: E402
from stack import GROUP_PATH, Stack, metric_sum_count  # noqa: E402


def spec_for(content: int) -> dict:
    return {"docker": {"dockerfile": f"FROM scratch\nLABEL kenv.bench={content}"},
            "python": {"userManagedDependencies": True}}


def push_tiny_image(registry: str, repository: str, tag: str, label: str) -> str:
    """An image with no layers, pushed with the distribution API (blob upload, then manifest)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                         "config": {"Labels": {"kenv.bench": label}}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    start = opener.open(urllib.request.Request(f"http://{registry}/v2/{repository}/blobs/uploads/", method="POST"))
    location = start.headers["Location"]
    upload = location if location.startswith("http") else f"http://{registry}{location}"
    separator = "&" if "?" in upload else "?"
    opener.open(urllib.request.Request(f"{upload}{separator}digest={config_digest}", data=config, method="PUT",
                                       headers={"Content-Type": "application/octet-stream"}))
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": config_digest, "size": len(config)}, "layers": []}).encode()
    response = opener.open(urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{tag}", data=manifest, method="PUT",
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}))
    return str(response.headers["Docker-Content-Digest"])


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def api_server_requests(stack: Stack) -> tuple[float, float, float, Counter[str]]:
    """(requests served, seconds they took, seconds they waited in API Priority and Fairness queues, requests by
    verb and resource), over every verb but WATCH and CONNECT (long-running) since the API server started: all
    clients, the bench's too."""
    text = stack.kube.text("/metrics")
    totals = dict.fromkeys(("count", "sum", "wait"), 0.0)
    pattern = (r'^(apiserver_request_duration_seconds_(count|sum)|apiserver_flowcontrol_request_wait_duration_'
               r'seconds_(sum))\{([^}]*)\} (\S+)$')
    for _metric, duration, wait, labels, value in re.findall(pattern, text, re.M):
        if re.search(r'verb="(WATCH|CONNECT)"', labels):  # APF waits carry no verb: all counted
            continue
        totals["wait" if wait else duration] += float(value)
    kinds: Counter[str] = Counter()
    for labels, value in re.findall(r'^apiserver_request_total\{([^}]*)\} (\S+)$', text, re.M):
        label = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if label.get("verb") not in ("WATCH", "CONNECT"):
            resource = label.get("resource", "") + (f"/{label['subresource']}" if label.get("subresource") else "")
            kinds[f"{label.get('verb')} {resource}"] += int(float(value))
    return totals["count"], totals["sum"], totals["wait"], kinds


def watch_ready(stack: Stack, ready_at: dict[str, float], expected: int, stop: threading.Event) -> None:
    """Record when each Environment is first seen Ready (a watch across namespaces)."""
    while not stop.is_set() and len(ready_at) < expected:
        try:
            stream = stack.kube.stream(f"{GROUP_PATH}/environments?watch=1&timeoutSeconds=60", timeout=70)
        except OSError:
            time.sleep(0.2)
            continue
        with stream:
            for line in stream:
                event = json.loads(line)
                obj = event["object"]
                if (obj.get("status") or {}).get("phase") == "Ready":
                    key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
                    ready_at.setdefault(key, time.monotonic())
                if stop.is_set() or len(ready_at) >= expected:
                    return


def floor_loop(stack: Stack, keys: list[tuple[str, str, str]], workers: int) -> list[float]:
    """The API and registry round trips of one cache-hit reconcile of a new Environment, for every Environment:
    GET its image's manifest; record version 1 (create the object: a ConfigMap of the same size stands in; the
    numbers come from the operator's index, not a LIST; tag the image: PUT the manifest); post the Ready Event;
    patch the status, and the annotation in which kopf records the spec it handled. The body comes from the watch,
    as the operator's does."""
    manifests = f"http://{stack.cluster.registry}/v2/kenv/environments/manifests"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}

    def one(key: tuple[str, str, str]) -> float:
        namespace, name, tag = key
        started = time.monotonic()
        with opener.open(urllib.request.Request(f"{manifests}/{tag}", headers=accept)) as got:
            manifest, media_type = got.read(), got.headers["Content-Type"]
        opener.open(urllib.request.Request(f"{manifests}/floor-{name}-v1", data=manifest, method="PUT",
                                           headers={"Content-Type": media_type})).close()
        stack.kube.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", {
            "metadata": {"name": f"floor-{name}-v1", "labels": {"kenv.dev/uid": f"floor-{name}"}},
            "data": {"definition": json.dumps(spec_for(0)), "image": f"{manifests}/{tag}", "changes": "new"}})
        stack.kube.request("POST", f"/api/v1/namespaces/{namespace}/events", {
            "metadata": {"generateName": f"{name}."}, "reason": "Ready", "message": f"version 1 is {tag}",
            "type": "Normal", "involvedObject": {"kind": "Environment", "namespace": namespace, "name": name}})
        stack.kube.request("PATCH", f"{GROUP_PATH}/namespaces/{namespace}/environments/{name}/status",
                           {"status": {"observedGeneration": 1}},
                           content_type="application/merge-patch+json")
        # On the stand-in, not the Environment: an annotation there would run the operator's update handler.
        stack.kube.request("PATCH", f"/api/v1/namespaces/{namespace}/configmaps/floor-{name}-v1", {"metadata": {
            "annotations": {"bench.kenv.dev/handled": json.dumps(spec_for(0))}}},
            content_type="application/merge-patch+json")
        return time.monotonic() - started

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, keys))


def admission_run(stack: Stack, environments: list[tuple[str, str]], count: int, rate: float) -> PodCreator:
    """count labelled pods, round-robin over the (namespace, name) Environments, on an open loop at rate."""
    creator = PodCreator(stack.kube, ["kenv"])

    def send(i: int) -> None:
        namespace, name = environments[i % len(environments)]
        creator.create(namespace, f"pod-{i}", {"kenv.dev/environment": name}, "kenv", injected=True)

    open_loop(send, rate, count)
    creator.close()
    return creator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=1000)
    parser.add_argument("--contents", type=int, default=200)
    parser.add_argument("--namespaces", type=int, default=5)
    parser.add_argument("--pods", type=int, default=1000, help="labelled pods admitted afterwards (0: none)")
    parser.add_argument("--pod-envs", type=int, default=200, help="the Environments those pods use")
    parser.add_argument("--pod-rate", type=float, default=50, help="pods per second")
    args = parser.parse_args()
    stack = Stack(max_parallel_builds=4, poll_seconds="5").start()  # the operator's production poll interval
    try:
        registry = stack.cluster.registry
        tags = [render_context(EnvironmentSpec.model_validate(spec_for(i))).tag for i in range(args.contents)]
        for i, tag in enumerate(tags):
            push_tiny_image(registry, "kenv/environments", tag, str(i))
        namespaces = [f"{stack.namespace}-{n}" for n in range(args.namespaces)]
        for namespace in namespaces:
            stack.kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
        plan = [(namespaces[i % len(namespaces)], f"env-{i}", i % args.contents) for i in range(args.envs)]

        ready_at: dict[str, float] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=watch_ready, args=(stack, ready_at, args.envs, stop), daemon=True)
        watcher.start()
        time.sleep(1)
        applied_at: dict[str, float] = {}
        pid = stack.operator.main_pid()  # the operator container's process, seen from this host
        cpu_before = cpu_seconds(pid)
        api_before = api_server_requests(stack)
        print(f"operator pid {pid}", flush=True)
        started = time.monotonic()
        for namespace, name, content in plan:
            applied_at[f"{namespace}/{name}"] = time.monotonic()
            stack.kube.request("POST", f"{GROUP_PATH}/namespaces/{namespace}/environments", {
                "apiVersion": "kenv.dev/v1alpha1", "kind": "Environment", "metadata": {"name": name},
                "spec": spec_for(content)})
        applied = time.monotonic() - started
        watcher.join(timeout=600)
        stop.set()
        total = max(ready_at.values()) - started if ready_at else float("nan")
        latencies = [ready_at[k] - applied_at[k] for k in applied_at if k in ready_at]
        jobs = stack.kube.request("GET", "/apis/batch/v1/namespaces/kenv-system/jobs")["items"]
        rss = peak_rss_mib(pid)
        cpu = cpu_seconds(pid) - cpu_before
        reconciles = metric_sum_count(stack.operator_metrics(), "kenv_reconcile_seconds")
        api_after = api_server_requests(stack)
        served, took, waited = (b - a for a, b in zip(api_before[:3], api_after[:3], strict=True))
        by_kind = api_after[3] - api_before[3]

        floor_started = time.monotonic()
        floor = floor_loop(stack, [(ns, name, tags[c]) for ns, name, c in plan], workers=20)
        floor_total = time.monotonic() - floor_started
        print(f"reconcile: {len(latencies)}/{args.envs} Environments Ready ({args.contents} contents, "
              f"{args.namespaces} namespaces, applied one by one in {applied:.1f}s) in {total:.1f}s; "
              f"apply→Ready p50 {statistics.median(latencies):.2f}s "
              f"p99 {percentile(latencies, 0.99):.2f}s; builds started {len(jobs)}; operator peak RSS {rss:.0f} MiB, "
              f"CPU {cpu:.1f}s; {reconciles[1]:.0f} reconciles, {reconciles[0] / max(reconciles[1], 1) * 1000:.0f} ms "
              f"each on average (kenv_reconcile_seconds: inside kenv's handler, not kopf's queueing)")
        print(f"API server during the burst (every client, the bench's creates and watch included): "
              f"{served:.0f} requests, {served / args.envs:.1f} per Environment, {served / total:.0f}/s; "
              f"{took / max(served, 1) * 1000:.0f} ms each on average, of which {waited / max(served, 1) * 1000:.0f} "
              f"ms queued by API Priority and Fairness; per Environment: "
              + ", ".join(f"{kind} {n / args.envs:.2f}" for kind, n in by_kind.most_common() if n >= args.envs / 20))
        print(f"floor (same API round trips, 20 workers): total {floor_total:.1f}s, per reconcile p50 "
              f"{statistics.median(floor) * 1000:.0f} ms p99 {percentile(floor, 0.99) * 1000:.0f} ms; "
              f"ratio operator/floor total {total / floor_total:.2f}")
        met = (len(latencies) == args.envs and total <= 60 and statistics.median(latencies) <= 1
               and total / floor_total <= 3 and rss <= 250 and not jobs)
        print("targets (all Ready ≤ 60 s, p50 ≤ 1 s, ratio ≤ 3, RSS ≤ 250 MiB, 0 builds):",
              "met" if met else "missed")
        failed = 0
        if args.pods:
            cpu_before = cpu_seconds(pid)
            pods = admission_run(stack, [(ns, name) for ns, name, _ in plan[:args.pod_envs]], args.pods,
                                 args.pod_rate)
            ms = [v * 1000 for v in pods.latency["kenv"]]
            failed = len(pods.failures["kenv"])
            print(f"admission: {len(ms)} labelled pods over {min(args.pod_envs, len(plan))} Environments at "
                  f"{args.pod_rate:g} pods/s, {len(plan)} Environments indexed: failed {failed} (target 0); "
                  f"CREATE p50 {statistics.median(ms):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms; operator peak "
                  f"RSS {peak_rss_mib(pid):.0f} MiB, CPU {cpu_seconds(pid) - cpu_before:.1f}s")
            for failure in pods.failures["kenv"][:5]:
                print(f"    {failure}")
        return 0 if len(latencies) == args.envs and not jobs and not failed else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
