"""kenv benchmarks; print their figures (never asserted as timings in tests).

  python bench/run.py render            # rendering + hashing, as a ratio to yaml.safe_dump of the same spec
  python bench/run.py admission [--rate 50 --seconds 60]   # webhook vs no-webhook pod creation, p50/p99
  python bench/run.py load [--envs 300 --cap 4]            # build cap, one Job per content, lost updates

admission and load start their own local control plane, registry, fakelet and operator.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "hack"), str(ROOT / "operator")]


def bench_render(rounds: int = 2000) -> None:
    import yaml

    from kenv.models import EnvironmentSpec
    from kenv.render import render_context

    raw = {"docker": {"baseImage": "python:3.11"}, "pip": {"requirements": "numpy==2.1\npandas\n" * 20},
           "conda": {"channels": ["conda-forge"], "packages": ["cudatoolkit=11.8"] * 10}, "python": {"version": "3.11"}}
    spec = EnvironmentSpec.model_validate(raw)

    def timed(fn) -> float:
        started = time.perf_counter()
        for _ in range(rounds):
            fn()
        return (time.perf_counter() - started) / rounds

    baseline = timed(lambda: yaml.safe_dump(raw))
    render = timed(lambda: render_context(spec).hash)
    print(f"render+hash: {render * 1e6:.0f} µs per spec; {render / baseline:.2f}x yaml.safe_dump of the spec")


def start_stack(cap: int):
    from stack import Stack

    return Stack(max_parallel_builds=cap).start()


def bench_admission(rate: float, seconds: float) -> None:
    stack = start_stack(cap=4)
    kube, namespace = stack.kube, stack.namespace
    stack.ready_environment("bench")

    def burst(labelled: bool) -> tuple[list[float], int]:
        latencies: list[float] = []
        failures = 0
        lock = threading.Lock()
        tag = "w" if labelled else "n"

        def admit(i: int) -> None:
            nonlocal failures
            labels = {"kenv.dev/environment": "bench"} if labelled else {"app": "bench"}
            body = {"metadata": {"name": f"{tag}{i}", "labels": labels},
                    "spec": {"schedulingGates": [{"name": "bench.kenv.dev/hold"}],
                             "containers": [{"name": "c", "image": "x", "command": ["true"]}]}}
            started = time.monotonic()
            try:
                kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body)
            except Exception:  # noqa: BLE001 - counted
                with lock:
                    failures += 1
            with lock:
                latencies.append(time.monotonic() - started)

        threads = []
        interval = 1 / rate
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            thread = threading.Thread(target=admit, args=(i,))
            thread.start()
            threads.append(thread)
            time.sleep(max(0.0, start + (i + 1) * interval - time.monotonic()))
        for thread in threads:
            thread.join()
        return sorted(latencies), failures

    try:
        plain, plain_failures = burst(labelled=False)
        injected, failures = burst(labelled=True)
        p99 = lambda values: values[int(len(values) * 0.99) - 1]  # noqa: E731
        print(f"admission {rate:g} pods/s for {seconds:g}s: {len(injected)} pods, {failures} failed; "
              f"p50 {statistics.median(injected) * 1000:.0f} ms, p99 {p99(injected) * 1000:.0f} ms")
        print(f"baseline without webhook: {plain_failures} failed, p99 {p99(plain) * 1000:.0f} ms; "
              f"webhook p99 / baseline p99 = {p99(injected) / p99(plain):.2f}")
    finally:
        stack.stop()


def bench_load(envs: int, cap: int) -> None:
    stack = start_stack(cap=cap)
    try:
        result = stack.load(envs)
        print(f"load: {envs} environments, cap {cap}: max active build Jobs {result['max_active']} "
              f"({result['samples']} samples), all Ready in {result['seconds']:.0f}s, "
              f"jobs per content max {result['jobs_per_content']}, lost updates {result['lost']}")
    finally:
        stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["render", "admission", "load", "all"])
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--envs", type=int, default=300)
    parser.add_argument("--cap", type=int, default=4)
    args = parser.parse_args()
    if args.which in ("render", "all"):
        bench_render()
    if args.which in ("admission", "all"):
        bench_admission(args.rate, args.seconds)
    if args.which in ("load", "all"):
        bench_load(args.envs, args.cap)
    return 0


if __name__ == "__main__":
    sys.exit(main())
