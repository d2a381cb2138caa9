"""Pod CREATE latency through the API server with no webhook, with a minimal Go webhook (the floor) and with kenv,
interleaved in one run against a Ready Environment; then where kenv's time goes.

    python bench/webhook.py [--rate 20] [--seconds 60] [--warmup 20] [--direct 300]

Starts its own stack (bench/stack.py: the local cluster, base image, CRDs, kenv by Helm, the operator a real pod),
makes one Environment Ready and deploys the floor webhook (bench/floor.py: Go, standard library only, a one-operation
JSON Patch, registered like kenv's). Then creates pods at --rate pods/s (open loop: a request is sent on schedule
whether or not the previous ones have answered) for --seconds, cycling five kinds so machine noise hits all alike:
unlabelled (no webhook is called), labelled for the floor, labelled for a second floor that offers only HTTP/1.1
(the floor speaks HTTP/2 to the API server, kenv's aiohttp server cannot), labelled for a third floor that answers
with kenv's exact JSON Patch (what the API server pays to apply a bigger patch), labelled kenv.dev/environment.
Every pod carries a scheduling gate: the admission is what is measured, so nothing schedules or runs it. Latency
is the client's POST round trip over kept-alive connections.

Prints p50/p99 and the five slowest per kind, what each webhook adds (its kind's percentile minus the unlabelled
kind's: an estimate, not the percentile of a per-pod difference), kenv's added latency as a multiple of the
floor's (target ≤ 1.5×) with the range that multiple takes over resamplings of the run's pods (how much of a miss
is sampling noise), the absolute targets, what kenv's admission process recorded during the run (its garbage
collections, kenv_gc_pause_seconds; its own time per request, kenv_admission_request_seconds), how the kernel
scheduled it and the floor's process (bench/hostsched.py: time waiting for a CPU, CFS throttling), and
the failed admissions (a refused labelled pod, or one admitted without the webhook's image); exits 1 if any. The
breakdown then sends --direct AdmissionReviews straight to each webhook's pod (host to pod, TLS, kept-alive, no API
server), back to back and then --direct/2 each 0.1 s apart (an idle server, as the API server finds it), and
reads kenv's own handler time from its metrics: API server's share = added - direct; server's share = direct -
handler.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import random
import ssl
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent / "hack")]
import hostsched  # noqa: E402
from floor import LABEL as FLOOR_LABEL  # noqa: E402
from floor import PORT as FLOOR_PORT  # noqa: E402
from floor import FloorWebhook  # noqa: E402
from podload import PodCreator, admission_review, open_loop, percentile  # noqa: E402
from stack import Observed, Stack, histograms, metric_sum_count  # noqa: E402

TARGET_ADDED_P50_MS = 5.0
TARGET_ADDED_P99_MS = 15.0
TARGET_FLOOR_MULTIPLE = 1.5
SPACED_GAP_SECONDS = 0.1
ENVIRONMENT = "bench"
KINDS = ("none", "floor", "floor-http1", "floor-kenv-patch", "kenv")
WEBHOOK_KINDS = KINDS[1:]
MEANINGS = {"none": "unlabelled, no webhook", "floor": "Go floor, one-op patch", "floor-http1": "Go floor, HTTP/1.1",
            "floor-kenv-patch": "Go floor, kenv's patch", "kenv": "kenv"}
LABELS = {"none": {"app": ENVIRONMENT}, **{kind: {FLOOR_LABEL: kind} for kind in WEBHOOK_KINDS if kind != "kenv"},
          "kenv": {"kenv.dev/environment": ENVIRONMENT}}


def verdict(met: bool, target: str) -> str:
    return f"(target {target}: {'met' if met else 'missed'})"


def send_pod(stack: Stack, creator: PodCreator, run: str, i: int, record: bool = True) -> None:
    """The i-th pod of a run, of the kind i picks in the cycle."""
    kind = KINDS[i % len(KINDS)]
    creator.create(stack.namespace, f"{kind}-{run}-{i}", LABELS[kind], kind, injected=kind != "none",
                   record=record)


def direct_client() -> httpx.Client:
    """For AdmissionReviews straight to a webhook pod. The pods' serving certificates name their Services, not
    their IPs: the chain is not checked, the latency is what is measured."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return httpx.Client(verify=context, trust_env=False, timeout=10)


def direct_response(client: httpx.Client, url: str, namespace: str) -> dict:
    response = client.post(url, json=admission_review(namespace, LABELS["kenv"]))
    if response.status_code != 200 or not response.json()["response"]["allowed"]:
        raise RuntimeError(f"{url} refused a direct AdmissionReview: {response.text[:300]}")
    return dict(response.json()["response"])


def direct_round_trips(url: str, namespace: str, count: int) -> list[float]:
    """count AdmissionReviews POSTed one after another straight to a webhook pod; seconds each."""
    times = []
    with direct_client() as client:
        for _ in range(count):
            started = time.perf_counter()
            direct_response(client, url, namespace)
            times.append(time.perf_counter() - started)
    return times


def spaced_round_trips(urls: dict[str, str], namespace: str, count: int, gap: float) -> dict[str, list[float]]:
    """count AdmissionReviews to each of `urls` ({kind: url}), taking turns, `gap` seconds apart: each lands in an
    idle process, as the API server's do at the bench's rates (back to back, caches stay warm); seconds each."""
    times: dict[str, list[float]] = {kind: [] for kind in urls}
    with direct_client() as client:
        for url in urls.values():
            for _ in range(10):  # connections and TLS sessions, not counted
                direct_response(client, url, namespace)
        for _ in range(count):
            for kind, url in urls.items():
                time.sleep(gap)
                started = time.perf_counter()
                direct_response(client, url, namespace)
                times[kind].append(time.perf_counter() - started)
    return times


def kenv_patch(stack: Stack) -> list[dict]:
    """The JSON Patch kenv answers the bench's pods with, for the floor that answers with the same."""
    with direct_client() as client:
        answer = direct_response(client, f"{kenv_url(stack)}/inject-environment", stack.namespace)
    return list(json.loads(base64.b64decode(answer["patch"])))


def kenv_url(stack: Stack) -> str:
    port = (stack.operator.values().get("webhook") or {}).get("port", 9443)
    return f"https://{stack.operator.pods(role='admission')[0]['status']['podIP']}:{port}"


def breakdown(stack: Stack, floor: FloorWebhook, count: int) -> dict[str, list[float]]:
    direct_round_trips(f"{kenv_url(stack)}/inject-environment", stack.namespace, 20)  # warm, not counted
    before = metric_sum_count(stack.operator_metrics("admission"), "kenv_admission_seconds")
    kenv = direct_round_trips(f"{kenv_url(stack)}/inject-environment", stack.namespace, count)
    after = metric_sum_count(stack.operator_metrics("admission"), "kenv_admission_seconds")
    floor_ip = floor.pod()["status"]["podIP"]
    direct_round_trips(f"https://{floor_ip}:{FLOOR_PORT}/mutate", stack.namespace, 20)
    go = direct_round_trips(f"https://{floor_ip}:{FLOOR_PORT}/mutate", stack.namespace, count)
    handled = after[1] - before[1]
    handler = [(after[0] - before[0]) / handled] if handled else []
    spaced = spaced_round_trips({"kenv": f"{kenv_url(stack)}/inject-environment",
                                 "floor": f"https://{floor_ip}:{FLOOR_PORT}/mutate"}, stack.namespace,
                                max(1, count // 2),
                                SPACED_GAP_SECONDS)
    return {"kenv": kenv, "floor": go, "handler": handler, "kenv-spaced": spaced["kenv"],
            "floor-spaced": spaced["floor"]}


def kenv_webhook(stack: Stack) -> dict:
    configurations = stack.kube.request(
        "GET", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations")["items"]
    return next(w for c in configurations for w in c.get("webhooks") or []
                if w["name"] == "inject-environment.kenv.dev")


def run(rate: float, seconds: float, warmup: int, direct: int) -> int:
    stack = Stack(max_parallel_builds=4).start()
    try:
        stack.ready_environment(ENVIRONMENT)
        floor = FloorWebhook(stack.kube, stack.cluster.registry, kenv_webhook(stack)).deploy(stack.namespace)
        FloorWebhook(stack.kube, stack.cluster.registry, kenv_webhook(stack), name="floor-http1",
                     http1=True).deploy(stack.namespace)
        FloorWebhook(stack.kube, stack.cluster.registry, kenv_webhook(stack), name="floor-kenv-patch",
                     patch=kenv_patch(stack)).deploy(stack.namespace)
        creator = PodCreator(stack.kube, list(KINDS))
        for i in range(warmup * len(KINDS)):  # TLS sessions, the webhooks' first calls, the apiserver's caches
            send_pod(stack, creator, "warm", i, record=False)
        total = int(rate * seconds)
        run_id = uuid.uuid4().hex[:4]
        metrics_before = stack.operator_metrics("admission")
        processes = {"kenv": hostsched.find_pid("operator", "--role=admission"),
                     "floor": hostsched.find_pid("/floor-webhook", without=("-http1", "-patch"))}
        scheduled_before = {kind: hostsched.scheduled(pid) if pid else None for kind, pid in processes.items()}
        sent_seconds, late = open_loop(lambda i: send_pod(stack, creator, run_id, i), rate, total)
        creator.close()
        metrics_after = stack.operator_metrics("admission")
        collections = histograms(metrics_after, "kenv_gc_pause_seconds", since=metrics_before)
        served = histograms(metrics_after, "kenv_admission_request_seconds", since=metrics_before).get("", Observed())
        scheduling = {kind: now - earlier for kind, pid in processes.items()
                      if pid and (earlier := scheduled_before[kind]) and (now := hostsched.scheduled(pid))}
        parts = breakdown(stack, floor, direct) if direct else {}
    finally:
        stack.stop()
    return report(creator, parts, Inside(collections, served, scheduling), rate, seconds, warmup, total,
                  sent_seconds, late)


def ratio_intervals(ms: dict[str, list[float]], rounds: int = 1000, seed: int = 0) -> dict[float, tuple[float, float]]:
    """A 90% bootstrap interval of kenv's added latency ÷ the floor's, at p50 and at p99: how far the ratio moves
    when the same run's pods are drawn again (with replacement, per kind). A ratio over a few hundred samples per
    kind is a difference of two percentiles divided by another: the interval says how much of a miss is noise."""
    draw = random.Random(seed)
    ratios: dict[float, list[float]] = {0.50: [], 0.99: []}
    for _ in range(rounds):
        sample = {kind: draw.choices(ms[kind], k=len(ms[kind])) for kind in ("none", "floor", "kenv")}
        for q, found in ratios.items():
            at = {kind: percentile(values, q) for kind, values in sample.items()}
            floor_added = at["floor"] - at["none"]
            found.append((at["kenv"] - at["none"]) / floor_added if floor_added > 0 else math.inf)
    return {q: (percentile(found, 0.05), percentile(found, 0.95)) for q, found in ratios.items()}


@dataclass(frozen=True)
class Inside:
    """What kenv's admission process recorded over the run: its garbage collections by generation (gcpause.py),
    its lean protocol's request times, and how the kernel scheduled it and the floor (hostsched.py)."""

    collections: dict[str, Observed]
    served: Observed
    scheduling: dict[str, hostsched.Scheduled]


def report(creator: PodCreator, parts: dict[str, list[float]], inside: Inside, rate: float, seconds: float,
           warmup: int, total: int, sent_seconds: float, late: int) -> int:
    ms = {kind: [v * 1000 for v in values] for kind, values in creator.latency.items()}
    p50 = {kind: percentile(values, 0.50) for kind, values in ms.items()}
    p99 = {kind: percentile(values, 0.99) for kind, values in ms.items()}
    print(f"webhook: {total} pod CREATEs at {rate:g} pods/s for {seconds:g} s (sent in {sent_seconds:.1f} s, "
          f"{late} sent late), cycling {'/'.join(KINDS)}, scheduling-gated; {warmup} warm-up pods of each kind "
          f"not counted")
    for kind in KINDS:
        slowest = ", ".join(f"{value:.1f}" for value in sorted(ms[kind])[-5:][::-1])
        print(f"  {kind:16s} ({MEANINGS[kind]:22s} n={len(ms[kind])}): p50 {p50[kind]:6.1f} ms, "
              f"p99 {p99[kind]:6.1f} ms; slowest {slowest} ms")
    added = {kind: (p50[kind] - p50["none"], p99[kind] - p99["none"]) for kind in WEBHOOK_KINDS}
    for kind in WEBHOOK_KINDS:
        print(f"  added by {kind:16s}: p50 {added[kind][0]:+.1f} ms, p99 {added[kind][1]:+.1f} ms")
    intervals = ratio_intervals(ms)
    for label, index, target in (("p50", 0, TARGET_ADDED_P50_MS), ("p99", 1, TARGET_ADDED_P99_MS)):
        floor_added, kenv_added = added["floor"][index], added["kenv"][index]
        multiple = kenv_added / floor_added if floor_added > 0 else math.inf
        low, high = intervals[0.50 if index == 0 else 0.99]
        print(f"  kenv vs floor at {label}: {multiple:.2f}x "
              f"{verdict(multiple <= TARGET_FLOOR_MULTIPLE, f'≤ {TARGET_FLOOR_MULTIPLE:g}x')}, "
              f"{low:.2f}x-{high:.2f}x in 90% of resamplings of this run; "
              f"absolute {kenv_added:+.1f} ms {verdict(kenv_added <= target, f'≤ {target:g} ms')}")
        same = added["floor-kenv-patch"][index]
        like = kenv_added / same if same > 0 else math.inf
        print(f"    like for like (the floor answering with kenv's patch): {like:.2f}x; "
              f"what kenv's bigger patch costs the API server: {same - floor_added:+.1f} ms")
        http1 = added["floor-http1"][index]
        print(f"    the floor over HTTP/1.1, as kenv's server speaks: {http1:+.1f} ms; kenv vs it "
              f"{kenv_added / http1 if http1 > 0 else math.inf:.2f}x; what HTTP/2 saves the floor: "
              f"{http1 - floor_added:+.1f} ms")
    print("  kenv's garbage collections during the run (admission pod, kenv_gc_pause_seconds): " + (", ".join(
        f"{labels.replace('=', ' ').replace(chr(34), '')}: {pauses.count()}"
        + (f" taking {pauses.seconds * 1000:.1f} ms, each ≤ {pauses.longest_under() * 1000:g} ms" if pauses.count()
           else "") for labels, pauses in sorted(inside.collections.items())) or "none recorded"))
    served = inside.served
    print(f"  kenv's own time per request during the run (kenv_admission_request_seconds, last bytes read to answer "
          f"written): {served.count()} requests, mean {served.mean() * 1000:.2f} ms, all ≤ "
          f"{served.longest_under() * 1000:g} ms, {served.count() - served.at_most(0.002)} over 2 ms")
    for kind in ("kenv", "floor"):
        found = inside.scheduling.get(kind)
        print(f"  {kind}'s process during the run (/proc schedstat): "
              + (found.describe() if found else "not found on this host, or restarted during the run"))
    if parts:
        direct = {kind: percentile([v * 1000 for v in parts[kind]], 0.5) for kind in ("kenv", "floor")}
        tail = {kind: percentile([v * 1000 for v in parts[kind]], 0.99) for kind in ("kenv", "floor")}
        handler = parts["handler"][0] * 1000 if parts["handler"] else math.nan
        print(f"  where kenv's added p50 goes ({len(parts['kenv'])} direct AdmissionReviews per webhook, p50):")
        print(f"    API server's call and JSON (added - direct): kenv {added['kenv'][0] - direct['kenv']:+.2f} ms, "
              f"floor {added['floor'][0] - direct['floor']:+.2f} ms")
        print(f"    webhook server, TLS and HTTP (direct - handler): kenv {direct['kenv'] - handler:.2f} ms, "
              f"floor {direct['floor']:.2f} ms (handler included)")
        print(f"    kenv's handler (kenv_admission_seconds, mean): {handler:.3f} ms")
        print(f"    direct round trips at p99 (the servers' own tail, no API server): kenv {tail['kenv']:.2f} ms, "
              f"floor {tail['floor']:.2f} ms")
        spaced = {kind: [v * 1000 for v in parts[f"{kind}-spaced"]] for kind in ("kenv", "floor")}
        print(f"    the same {SPACED_GAP_SECONDS:g} s apart, taking turns (n={len(spaced['kenv'])} each; an idle "
              f"process, as the API server finds it): p50 kenv {percentile(spaced['kenv'], 0.5):.2f} ms, floor "
              f"{percentile(spaced['floor'], 0.5):.2f} ms; p99 kenv {percentile(spaced['kenv'], 0.99):.2f} ms, "
              f"floor {percentile(spaced['floor'], 0.99):.2f} ms")
        print("    (in-process: python bench/admission_profile.py splits the server's share further)")
    failed = sum(len(creator.failures[kind]) for kind in WEBHOOK_KINDS)
    print("  failed admissions: " + ", ".join(f"{kind} {len(creator.failures[kind])}" for kind in WEBHOOK_KINDS)
          + f"; unlabelled pods failed: {len(creator.failures['none'])}")
    for failure in [f for kind in KINDS for f in creator.failures[kind]][:5]:
        print(f"    {failure}")
    return 1 if failed or creator.failures["none"] else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20, help="pods per second, all kinds together")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=int, default=20, help="uncounted pods of each kind first")
    parser.add_argument("--direct", type=int, default=300, help="direct AdmissionReviews per webhook (0: none)")
    args = parser.parse_args()
    return run(args.rate, args.seconds, args.warmup, args.direct)


if __name__ == "__main__":
    sys.exit(main())
