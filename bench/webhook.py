"""Pod CREATE latency with the kenv admission webhook vs. without, in one run, against a Ready Environment.

    python bench/webhook.py [--rate 20] [--seconds 60] [--warmup 20]

Starts its own stack (bench/stack.py: the local cluster, base image, CRDs, kenv by Helm), makes one
Environment Ready, then creates pods at --rate pods/s (open loop: a request is sent on schedule whether or not the
previous ones have answered) for --seconds, alternating a pod labelled kenv.dev/environment (the webhook is called)
with an unlabelled one (the webhook's objectSelector skips it), so machine noise hits both kinds alike. Every pod
carries a scheduling gate: the admission is what is measured, so nothing schedules or runs it. Latency is the
client's POST round trip over kept-alive connections. Prints p50/p99 of both kinds, the difference (what the
webhook adds) next to the issue's targets, and the failed admissions (a refused labelled pod, or one admitted
without a digest-pinned image); exits 1 if any.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent / "hack")]
from stack import Stack  # noqa: E402

TARGET_ADDED_P50_MS = 5.0
TARGET_ADDED_P99_MS = 15.0
ENVIRONMENT = "bench"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def verdict(value: float, target: float) -> str:
    return f"(target ≤ {target:g} ms: {'target met' if value <= target else 'missed'})"


class PodCreator:
    def __init__(self, stack: Stack) -> None:
        kube = stack.kube
        self.path = f"/api/v1/namespaces/{stack.namespace}/pods"
        self.client = httpx.Client(base_url=kube.server, verify=kube.ssl, headers=kube.headers, trust_env=False,
                                   timeout=30, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
        self.lock = threading.Lock()
        self.latency: dict[bool, list[float]] = {True: [], False: []}
        self.failures: dict[bool, list[str]] = {True: [], False: []}

    def create(self, name: str, labelled: bool, record: bool = True) -> None:
        labels = {"kenv.dev/environment": ENVIRONMENT} if labelled else {"app": ENVIRONMENT}
        body = {"metadata": {"name": name, "labels": labels},
                "spec": {"schedulingGates": [{"name": "bench.kenv.dev/hold"}],
                         "containers": [{"name": "c", "image": "x", "command": ["true"]}]}}
        started = time.perf_counter()
        try:
            response = self.client.post(self.path, json=body)
            elapsed = time.perf_counter() - started
            failure = None
            if response.status_code != 201:
                failure = f"{name}: HTTP {response.status_code} {response.text[:300]}"
            elif labelled and "@sha256:" not in response.json()["spec"]["containers"][0]["image"]:
                failure = f"{name}: admitted without a digest-pinned image"
        except httpx.HTTPError as error:
            elapsed, failure = time.perf_counter() - started, f"{name}: {error!r}"
        if not record:
            if failure:
                raise RuntimeError(f"warm-up pod failed: {failure}")
            return
        with self.lock:
            self.latency[labelled].append(elapsed)
            if failure:
                self.failures[labelled].append(failure)


def run(rate: float, seconds: float, warmup: int) -> int:
    stack = Stack(max_parallel_builds=4).start()
    try:
        stack.ready_environment(ENVIRONMENT)
        creator = PodCreator(stack)
        for i in range(warmup):  # TLS sessions, the webhook's first calls, the apiserver's caches
            creator.create(f"warm-w{i}", labelled=True, record=False)
            creator.create(f"warm-n{i}", labelled=False, record=False)
        total = int(rate * seconds)
        interval = 1 / rate
        late = 0
        with ThreadPoolExecutor(max_workers=64) as pool:
            start = time.monotonic()
            for i in range(total):
                delay = start + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -interval:
                    late += 1
                labelled = i % 2 == 0
                pool.submit(creator.create, f"{'w' if labelled else 'n'}{i}", labelled)
        sent_seconds = time.monotonic() - start
        creator.client.close()
    finally:
        stack.stop()

    ms = {kind: [v * 1000 for v in values] for kind, values in creator.latency.items()}
    p50 = {kind: percentile(values, 0.50) for kind, values in ms.items()}
    p99 = {kind: percentile(values, 0.99) for kind, values in ms.items()}
    added50, added99 = p50[True] - p50[False], p99[True] - p99[False]
    failed = len(creator.failures[True])
    print(f"webhook: {total} pod CREATEs at {rate:g} pods/s for {seconds:g} s (sent in {sent_seconds:.1f} s, "
          f"{late} sent late), alternating labelled/unlabelled, scheduling-gated; {warmup}+{warmup} warm-up pods "
          f"not counted")
    print(f"  with webhook    (label kenv.dev/environment, n={len(ms[True])}): "
          f"p50 {p50[True]:.1f} ms, p99 {p99[True]:.1f} ms")
    print(f"  without webhook (unlabelled,                 n={len(ms[False])}): "
          f"p50 {p50[False]:.1f} ms, p99 {p99[False]:.1f} ms")
    print(f"  added by the webhook: p50 {added50:+.1f} ms {verdict(added50, TARGET_ADDED_P50_MS)}, "
          f"p99 {added99:+.1f} ms {verdict(added99, TARGET_ADDED_P99_MS)}")
    print(f"  failed admissions: {failed} (labelled); unlabelled pods failed: {len(creator.failures[False])}")
    for failure in (creator.failures[True] + creator.failures[False])[:5]:
        print(f"    {failure}")
    return 1 if failed or creator.failures[False] else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20, help="pods per second, both kinds together")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=int, default=20, help="uncounted pods of each kind first")
    args = parser.parse_args()
    return run(args.rate, args.seconds, args.warmup)


if __name__ == "__main__":
    sys.exit(main())
