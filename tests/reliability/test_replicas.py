"""No refused pod during an upgrade or a crash (issue 14), on the real cluster with the chart's defaults: two
admission replicas behind the webhook Service, two controllers of which the Lease holder reconciles.

Each fault hits while labelled pods are created at 50 per second through the API server; every one must come
back injected with a digest-pinned image, and no content may get a second build Job. bench/failover.py runs
the same faults for 60 s each and prints the README's figures; these are the short versions.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import uuid

import pytest

from buildgate import BuildGate
from faultload import BuildJobs, Load, retag
from kenvfixtures import BUILD_NAMESPACE, create_env, get_env, wait_for, wait_phase

pytestmark = pytest.mark.usefixtures("operator")
RATE = 50.0
LEASE_TAKEOVER_LIMIT = 15 + 2 + 8  # lease duration + retry, plus the API and scheduling slack of a busy node


def quick_spec(base_image: str, marker: str) -> dict:
    return {"docker": {"dockerfile": f"FROM {base_image}\nLABEL kenv.test={marker}"},
            "python": {"userManagedDependencies": True}}


@pytest.fixture
def steady(kube, namespace, base_image) -> str:
    """A Ready Environment the load's pods ask for."""
    create_env(kube, namespace, "steady", quick_spec(base_image, "steady"))
    assert wait_phase(kube, namespace, "steady", {"Ready", "Failed"})["status"]["phase"] == "Ready"
    return "steady"


@pytest.fixture
def gate():
    held = BuildGate()
    yield held
    held.close()


# How long a new Environment may wait for its first reconcile. These tests follow a rollout or a takeover, probably
# slow because the new leader first resumes every Environment the earlier tests left: in two full `make test` runs on
# 2026-11-29 that took over 60 s (no status at all yet), while the same tests alone were Building in seconds.
START_TIMEOUT = 180


def check(result, fault: str) -> None:
    print(f"\nFAULT {fault}: {result.summary()}")
    assert not result.failures, result.failures[:5]
    assert result.rate >= RATE * 0.8, f"the load ran at {result.rate:.1f}/s, not {RATE}/s: nothing was proven"


def test_deleting_an_admission_replica_refuses_no_pod(kube, cluster, namespace, steady, operator):
    before = {p["metadata"]["name"] for p in operator.ready_pods("admission")}
    assert len(before) >= 2, "the chart's default runs two admission replicas"
    victim = sorted(before)[0]
    with Load(kube, namespace, steady, RATE) as load:
        time.sleep(3)
        started = time.monotonic()
        kube.request("DELETE", f"/api/v1/namespaces/{BUILD_NAMESPACE}/pods/{victim}")  # graceful, as a drain
        # Its preStop hook (`kenv drain`) reached the operator: from now on each answer closes its connection.
        def draining() -> bool:
            try:
                return "draining: every admission answer" in kube.text(
                    f"/api/v1/namespaces/{BUILD_NAMESPACE}/pods/{victim}/log?container=operator")
            except urllib.error.HTTPError:
                return False  # the log is not served for a moment while the pod terminates
        wait_for(draining, 10, "the drain to begin", interval=0.2)
        wait_for(lambda: len({p["metadata"]["name"] for p in operator.ready_pods("admission")} - {victim}) >= 2,
                 120, "a replacement admission replica to be Ready")
        print(f"\nreplacement admission replica Ready {time.monotonic() - started:.1f}s after the delete")
        time.sleep(3)
    check(load.stop(), "admission pod deleted")


def test_helm_upgrade_to_a_new_image_tag_refuses_no_pod(kube, cluster, namespace, steady, operator):
    tag = f"upgrade-{uuid.uuid4().hex[:6]}"
    retag(cluster.registry, operator.images["operator"], tag)
    old_pods = {p["metadata"]["uid"] for p in operator.pods()}
    jobs = BuildJobs(kube, BUILD_NAMESPACE)
    try:
        with Load(kube, namespace, steady, RATE) as load:
            time.sleep(2)
            started = time.monotonic()
            operator.install(image={"tag": tag})  # helm upgrade --wait: both Deployments roll
            print(f"\nhelm upgrade --wait took {time.monotonic() - started:.1f}s")
            time.sleep(3)
    finally:
        operator.extra_values["image"].pop("tag", None)  # the session release's next install uses its own tag
    check(load.stop(), "helm upgrade")
    assert not jobs.stop()
    pods = operator.pods()
    assert not old_pods & {p["metadata"]["uid"] for p in pods}, "every pod was replaced"
    assert all(p["spec"]["containers"][0]["image"].endswith(f":{tag}") for p in pods)
    assert operator.pod()  # one controller leads after the upgrade
    # Nothing restarted: a new leader resuming under the load once blocked its event loop past the Lease's renew
    # deadline (a list of the steady Environment's thousands of pods) and exited, again and again.
    restarted = [operator.container_report(p) for p in pods if operator.restart_count(p)]
    assert not restarted, restarted


def test_killing_the_leader_mid_build_hands_over_without_a_duplicate_build(kube, cluster, namespace, steady,
                                                                          base_image, gate, operator):
    token = f"leader-{namespace}"
    create_env(kube, namespace, "mid", gate.spec(base_image, token))
    wait_phase(kube, namespace, "mid", {"Building"}, timeout=START_TIMEOUT)
    wait_for(lambda: gate.waiting(token), 120, "the build pod to reach the gated step")
    jobs = BuildJobs(kube, BUILD_NAMESPACE)
    with Load(kube, namespace, steady, RATE) as load:
        time.sleep(2)
        old = operator.crash_leader()  # no goodbye, no restart in place: a standby must wait the lease out
        killed = time.monotonic()
        holder, took = operator.wait_new_leader(old)
        print(f"\nnew leader {holder} {took:.1f}s after the SIGKILL")
        gate.release(token)
        env = wait_phase(kube, namespace, "mid", {"Ready", "Failed"}, timeout=300)
        print(f"\nthe held build's Environment Ready {time.monotonic() - killed:.1f}s after the SIGKILL")
    check(load.stop(), "leader killed mid-build")
    assert env["status"]["phase"] == "Ready", env["status"]
    assert not jobs.stop(), "a content was built twice"
    assert took <= LEASE_TAKEOVER_LIMIT
    operator.wait_ready()


def test_a_paused_leader_that_wakes_after_a_takeover_steps_down_without_duplicate_builds(
        kube, cluster, namespace, base_image, gate, operator):
    """A split: the leader stops (SIGSTOP: a long pause, a partition) with a build running, a standby takes the
    Lease and carries on, then the old leader wakes still believing it leads. It must exit at its next renewal,
    and no content may get a second Job."""
    token = f"split-{namespace}"
    create_env(kube, namespace, "held", gate.spec(base_image, token))
    wait_phase(kube, namespace, "held", {"Building"}, timeout=START_TIMEOUT)
    wait_for(lambda: gate.waiting(token), 120, "the build pod to reach the gated step")
    leader = operator.pod()
    restarts = operator.restart_count(leader)
    old = operator.lease_holder()
    pids = operator.container_pids(leader)
    assert pids
    jobs = BuildJobs(kube, BUILD_NAMESPACE)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        holder, took = operator.wait_new_leader(old)
        print(f"\nstandby {holder} took over {took:.1f}s after the leader paused")
        assert took <= LEASE_TAKEOVER_LIMIT
        # The new leader acts: a new Environment builds while the old leader sleeps.
        create_env(kube, namespace, "during", quick_spec(base_image, f"during-{namespace}"))
        assert wait_phase(kube, namespace, "during", {"Ready", "Failed"})["status"]["phase"] == "Ready"
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    # Woken, the old leader finds the Lease taken and exits; its container restarts as a standby.
    wait_for(lambda: operator.restart_count(leader) > restarts, 60, "the woken leader to exit")
    # A change the old leader could have raced on, after it woke: the held build finishes now.
    gate.release(token)
    assert wait_phase(kube, namespace, "held", {"Ready", "Failed"})["status"]["phase"] == "Ready"
    assert get_env(kube, namespace, "during")["status"]["version"] == 1
    assert not jobs.stop(), "a content was built twice"
    assert operator.lease_holder() == holder  # the standby kept the lead
    operator.wait_ready()


def test_admission_replicas_never_write_an_environment(kube, namespace, operator):
    """Only the leading reconciler writes Environments. kopf strips its finalizer from objects no handler of its
    process needs it for: admission replicas once did so on every event, and the reconciler's re-adding then
    cost every handling cycle its change handlers (an Environment stuck in Building)."""
    controllers = operator.replicas("controller")
    operator.scale({"controller": 0})
    try:
        create_env(kube, namespace, "untouched", {"python": {"userManagedDependencies": True}},
                   finalizers=["kenv.dev/finalizer"])
        path = f"/apis/kenv.dev/v1alpha1/namespaces/{namespace}/environments/untouched"
        # The replicas see it: labelled pods are admitted (gated), not refused as "does not exist".
        probe = {"metadata": {"generateName": "probe-", "labels": {"kenv.dev/environment": "untouched"}},
                 "spec": {"containers": [{"name": "c", "image": "probe"}]}}
        admitted = []

        def admits_in_a_row() -> bool:
            try:
                kube.request("POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All", probe)
                admitted.append(True)
            except urllib.error.HTTPError as error:
                assert "does not exist" in error.read().decode(errors="replace"), error
                admitted.clear()
            return len(admitted) >= 6  # several: the API server may send each to either replica
        wait_for(admits_in_a_row, 60, "the admission replicas to index the Environment", interval=0.2)
        changed = kube.request("PATCH", path, {"metadata": {"annotations": {"poke": "1"}}},
                               "application/merge-patch+json")  # an event every replica sees
        time.sleep(5)
        now = kube.request("GET", path)
        assert now["metadata"]["resourceVersion"] == changed["metadata"]["resourceVersion"], now["metadata"]
        assert now["metadata"]["finalizers"] == ["kenv.dev/finalizer"]
    finally:
        operator.scale({"controller": controllers})
