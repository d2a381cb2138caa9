"""Issue 14's proof at full size: labelled pods created at 50/s for 60 s through the API server while a fault
hits kenv's replicas (the chart's defaults: 2 admission replicas, 2 controllers of which the Lease holder acts).

    python bench/failover.py [--rate 50] [--seconds 60] [--only delete-admission,helm-upgrade,kill-leader]

Starts its own stack (bench/stack.py). Each fault hits 10 s into its load window:
  delete-admission  one admission pod deleted (graceful, as a drain or an eviction)
  helm-upgrade      `helm upgrade --wait` to a new operator image tag: both Deployments roll
  kill-leader       the leading controller SIGKILLed and its pod deleted (no goodbye, no restart in place)
                    while a build runs (a Dockerfile step sleeping 20 s)
Prints per fault: pods sent and refused, admission p50/p99, time to recover (a replacement Ready, the upgrade
done, a new Lease holder), duplicate build Jobs (second Jobs for one content), and whether every Environment is
Ready afterwards. Exits 1 if a pod was refused, a content built twice or an Environment is not Ready.
After helm-upgrade and kill-leader it also times a new Environment created the moment the fault is over (the
upgrade done, a new Lease holder) to its first status: how soon the new leader answers what is new while it resumes
what it found, --leftovers Environments besides `steady` (half Ready, half waiting on a ConfigMap that does not
exist, polled) as a test suite leaves them.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "hack")]
from faultload import BuildJobs, Load, retag  # noqa: E402
from release import BUILD_NAMESPACE, wait_until  # noqa: E402
from stack import GROUP_PATH, Stack  # noqa: E402

FAULTS = ("delete-admission", "helm-upgrade", "kill-leader")


def environment(stack: Stack, name: str, dockerfile_tail: str) -> None:
    body = {"apiVersion": "kenv.dev/v1alpha1", "kind": "Environment", "metadata": {"name": name},
            "spec": {"docker": {"dockerfile": f"FROM {stack.base_image}\n{dockerfile_tail}"},
                     "python": {"userManagedDependencies": True}}}
    stack.kube.request("POST", f"{GROUP_PATH}/namespaces/{stack.namespace}/environments", body)


def first_status(stack: Stack) -> str:
    """Create an Environment now and time it to its first status (any phase)."""
    name = f"first-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    environment(stack, name, f"LABEL kenv.bench={name}")
    wait_until(lambda: phase(stack, name) != "", 300, f"a first status of {name}", interval=0.2)
    return f"a new Environment's first status {time.monotonic() - started:.1f} s after"


def leftovers(stack: Stack, count: int) -> None:
    for i in range(count):
        if i % 2:
            body = {"apiVersion": "kenv.dev/v1alpha1", "kind": "Environment", "metadata": {"name": f"left-{i}"},
                    "spec": {"docker": {"dockerfileFrom": {"name": "kenv-bench-absent", "key": "Dockerfile"}},
                             "python": {"userManagedDependencies": True}}}
            stack.kube.request("POST", f"{GROUP_PATH}/namespaces/{stack.namespace}/environments", body)
        else:
            environment(stack, f"left-{i}", "LABEL kenv.bench=steady")  # steady's content: found, Ready


def expected_unready(name: str) -> bool:
    """The leftovers that wait on a missing ConfigMap, and the Environments timed to their first status only."""
    return name.startswith("first-") or (name.startswith("left-") and int(name[5:]) % 2 == 1)


def phase(stack: Stack, name: str) -> str:
    env = stack.kube.request("GET", f"{GROUP_PATH}/namespaces/{stack.namespace}/environments/{name}")
    return str((env.get("status") or {}).get("phase", ""))


def delete_admission(stack: Stack) -> dict[str, Any]:
    victim = sorted(p["metadata"]["name"] for p in stack.operator.ready_pods("admission"))[0]
    stack.kube.request("DELETE", f"/api/v1/namespaces/{BUILD_NAMESPACE}/pods/{victim}")
    seconds = wait_until(lambda: len({p["metadata"]["name"] for p in stack.operator.ready_pods("admission")}
                                     - {victim}) >= 2, 180, "a replacement admission replica", interval=0.3)
    return {"recovered": f"replacement Ready in {seconds:.1f} s"}


def helm_upgrade(stack: Stack) -> dict[str, Any]:
    tag = f"bench-{uuid.uuid4().hex[:6]}"
    retag(stack.cluster.registry, stack.operator.images["operator"], tag)
    started = time.monotonic()
    stack.operator.install(image={"tag": tag})
    return {"recovered": f"upgrade --wait done in {time.monotonic() - started:.1f} s; {first_status(stack)}"}


def kill_leader(stack: Stack) -> dict[str, Any]:
    name = f"slow-{uuid.uuid4().hex[:6]}"
    environment(stack, name, f"RUN sleep 20 && echo {name}")
    wait_until(lambda: phase(stack, name) == "Building", 120, "the build to start")
    time.sleep(3)  # the build pod runs its step
    _, took = stack.operator.wait_new_leader(stack.operator.crash_leader())
    first = first_status(stack)
    ready = wait_until(lambda: phase(stack, name) == "Ready", 300, "the Environment built mid-kill to be Ready")
    return {"recovered": f"new leader in {took:.1f} s; {first}; the mid-kill build Ready {took + ready:.1f} s "
                         "after the kill"}


def run(rate: float, seconds: float, only: list[str], left: int) -> int:
    stack = Stack(max_parallel_builds=4, replicas=2).start()
    failed = False
    try:
        environment(stack, "steady", "LABEL kenv.bench=steady")
        wait_until(lambda: phase(stack, "steady") == "Ready", 300, "the steady Environment")
        leftovers(stack, left)
        print(f"failover: {rate:.0f} labelled pods/s for {seconds:.0f} s per fault; 2 admission replicas, "
              "2 controllers")
        for fault in only:
            jobs = BuildJobs(stack.kube, BUILD_NAMESPACE)
            with Load(stack.kube, stack.namespace, "steady", rate) as load:
                time.sleep(10)
                started = time.monotonic()
                outcome = {"delete-admission": delete_admission, "helm-upgrade": helm_upgrade,
                           "kill-leader": kill_leader}[fault](stack)
                time.sleep(max(0.0, seconds - 10 - (time.monotonic() - started)))
            result = load.stop()
            duplicates = jobs.stop()
            envs = stack.kube.request("GET", f"{GROUP_PATH}/namespaces/{stack.namespace}/environments")["items"]
            not_ready = [e["metadata"]["name"] for e in envs if (e.get("status") or {}).get("phase") != "Ready"
                         and not expected_unready(e["metadata"]["name"])]
            print(f"  {fault}: {result.summary()}; {outcome['recovered']}; duplicate build Jobs "
                  f"{len(duplicates)}; Environments not Ready {not_ready or 0}")
            failed |= bool(result.failures or duplicates or not_ready)
            for failure in result.failures[:3]:
                print(f"    refused: {failure}")
    finally:
        stack.stop()
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--only", default=",".join(FAULTS))
    parser.add_argument("--leftovers", type=int, default=100, help="Environments besides steady (see above)")
    args = parser.parse_args()
    only = [f for f in args.only.split(",") if f]
    unknown = set(only) - set(FAULTS)
    if unknown:
        parser.error(f"--only: unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    try:
        return run(args.rate, args.seconds, only, args.leftovers)
    except (RuntimeError, TimeoutError) as error:
        print(f"failover: FAILED: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
