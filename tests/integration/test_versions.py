"""Versions as immutable snapshots, on the real cluster: a pod always gets one whole version (image *and*
variables), numbers are never reused, pins restore old definitions, pruning keeps what pods use."""

from __future__ import annotations

import time
from typing import Any

import pytest

from buildgate import BuildGate
from kenvfixtures import (
    GROUP_PATH,
    create_env,
    create_pod,
    edit,
    env_versions,
    events_for,
    get_env,
    kenv_cli,
    pod,
    pod_log,
    refused,
    registry_digest,
    session_operator_paused,
    wait_for,
    wait_phase,
    wait_version,
)

pytestmark = pytest.mark.usefixtures("operator")
REPOSITORY = "kenv/environments"
# Prints what the pod received; KENV_VERSION and KENV_IMAGE are the version the webhook (or un-gating) chose.
REPORT = ["/bin/sh", "-c", 'echo "$STAGE $KENV_VERSION $KENV_IMAGE"']


@pytest.fixture
def gate() -> Any:
    held = BuildGate()
    yield held
    held.close()


def finished(kube: Any, namespace: str, name: str, timeout: float = 120) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        return body if body["status"].get("phase") in ("Succeeded", "Failed") else None
    return dict(wait_for(done, timeout, f"pod {name} to finish"))


def reported(kube: Any, namespace: str, name: str) -> list[str]:
    body = finished(kube, namespace, name)
    assert body["status"]["phase"] == "Succeeded", body["status"]
    return pod_log(kube, namespace, name).split()


def gated(kube: Any, namespace: str, name: str) -> bool:
    body = kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
    return {"name": "kenv.dev/image"} in (body["spec"].get("schedulingGates") or [])


def ready_condition(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    status = get_env(kube, namespace, name)["status"]
    return dict(next(c for c in status["conditions"] if c["type"] == "Ready"))


def test_edit_gates_new_pods_until_the_new_version_and_survives_an_operator_restart(
        kube, cluster, namespace, base_image, gate, operator):
    one, two = f"one-{namespace}", f"two-{namespace}"
    gate.release(one)
    create_env(kube, namespace, "fresh", {**gate.spec(base_image, one), "environmentVariables": {"STAGE": "one"}})
    first = wait_version(kube, namespace, "fresh", 1)["status"]

    # A new build and a new variable at once: pods must not get the new variable with the old image.
    edit(kube, namespace, "fresh", {**gate.spec(base_image, two), "environmentVariables": {"STAGE": "two"}})
    wait_phase(kube, namespace, "fresh", {"Building"}, timeout=60)
    assert ready_condition(kube, namespace, "fresh")["status"] == "False"  # new pods would wait: not Ready
    waiting = create_pod(kube, namespace, pod("waiting", {"kenv.dev/environment": "fresh"}, command=REPORT))
    assert {"name": "kenv.dev/image"} in waiting["spec"]["schedulingGates"]
    pinned = create_pod(kube, namespace, pod("pinned", {"kenv.dev/environment": "fresh"},
                                             {"kenv.dev/version": "1"}, command=REPORT))
    assert pinned["spec"]["containers"][0]["image"] == first["image"]
    assert reported(kube, namespace, "pinned") == ["one", "1", first["image"]]  # version 1 whole: its variables

    wait_for(lambda: gate.waiting(two), 120, "the build to reach the gated step")
    operator.kill()  # the operator dies with a pod gated and a build running; nothing may be lost
    gate.release(two)
    operator.wait_ready()
    second = wait_version(kube, namespace, "fresh", 2)["status"]
    assert second["image"] != first["image"]
    assert reported(kube, namespace, "waiting") == ["two", "2", second["image"]]
    assert [v["spec"]["version"] for v in env_versions(kube, namespace, "fresh")] == [1, 2]  # no duplicate
    latest = create_pod(kube, namespace, pod("latest", {"kenv.dev/environment": "fresh"}, command=REPORT))
    assert latest["spec"]["containers"][0]["image"] == second["image"]


def test_failed_build_refuses_new_pods_with_the_pin_and_never_hands_out_the_old_image(
        kube, namespace, base_image, gate):
    good = f"good-{namespace}"
    gate.release(good)
    create_env(kube, namespace, "breaks", {**gate.spec(base_image, good), "environmentVariables": {"STAGE": "ok"}})
    first = wait_version(kube, namespace, "breaks", 1)["status"]
    bad = f"bad-{namespace}"
    dockerfile = f"FROM {base_image}\n{gate.run_step(bad)}\nRUN exit 3\n"
    edit(kube, namespace, "breaks", {"docker": {"dockerfile": dockerfile}, "environmentVariables": {"STAGE": "x"}})
    wait_phase(kube, namespace, "breaks", {"Building"}, timeout=60)
    create_pod(kube, namespace, pod("early", {"kenv.dev/environment": "breaks"}, command=REPORT))
    assert gated(kube, namespace, "early")
    gate.release(bad)
    wait_phase(kube, namespace, "breaks", {"Failed"}, timeout=300)

    message = refused(kube, namespace, pod("late", {"kenv.dev/environment": "breaks"}, command=REPORT))
    assert f"Environment {namespace}/breaks failed to build its latest definition" in message
    assert 'annotate the pod with kenv.dev/version: \\"1\\"' in message  # the exact pin, JSON-escaped
    wait_for(lambda: any(e["reason"] == "EnvironmentBuildFailed"
                         for e in events_for(kube, namespace, "early")), 60, "a Warning Event on the gated pod")
    assert gated(kube, namespace, "early")  # still waiting, never given version 1's image
    create_pod(kube, namespace, pod("pinned", {"kenv.dev/environment": "breaks"}, {"kenv.dev/version": "1"},
                                    command=REPORT))
    assert reported(kube, namespace, "pinned") == ["ok", "1", first["image"]]


def test_numbers_are_never_reused_and_pruning_keeps_versions_in_use(kube, cluster, namespace, base_image,
                                                                     operator):
    spec = {"docker": {"baseImage": base_image}, "python": {"userManagedDependencies": True}}
    create_env(kube, namespace, "numbered", {**spec, "environmentVariables": {"STAGE": "a"}})
    image = wait_version(kube, namespace, "numbered", 1)["status"]["image"]
    digest = image.split("@")[1]
    started = time.monotonic()
    edit(kube, namespace, "numbered", {"environmentVariables": {"STAGE": "b"}})
    wait_version(kube, namespace, "numbered", 2, timeout=60)
    print(f"\nvariable-only edit to a new version Ready (no build): {time.monotonic() - started:.1f}s")
    edit(kube, namespace, "numbered", {"environmentVariables": {"STAGE": "a"}})  # back to A: a new number
    wait_version(kube, namespace, "numbered", 3, timeout=60)
    versions = env_versions(kube, namespace, "numbered")
    assert [(v["spec"]["version"], v["spec"]["definition"]["environmentVariables"]["STAGE"]) for v in versions] \
        == [(1, "a"), (2, "b"), (3, "a")]
    assert {v["spec"]["image"] for v in versions} == {image}  # variables only: one image, no build

    table = kenv_cli(cluster, "versions", "numbered", "-n", namespace).splitlines()
    assert table[0].split()[:5] == ["VERSION", "CREATED", "HASH", "DIGEST", "REASON"]
    rows = [line.split() for line in table[1:] if line[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "2", "3*"] and rows[1][4] == "DefinitionChanged"
    assert any(line.endswith("changed environmentVariables.STAGE: a -> b") for line in table)
    assert "-    STAGE: a\n+    STAGE: b\n" in kenv_cli(cluster, "diff", "numbered", "1", "2", "-n", namespace)

    # Version 1 is in use by a running pod; the session operator keeps 3 versions (historyLimit).
    create_pod(kube, namespace, pod("long", {"kenv.dev/environment": "numbered"}, {"kenv.dev/version": "1"},
                                    command=["sleep", "600"]))
    wait_for(lambda: kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/long")["status"].get("phase")
             == "Running", 120, "the pinned pod to run")
    for number, stage in ((4, "c"), (5, "d")):
        edit(kube, namespace, "numbered", {"environmentVariables": {"STAGE": stage}})
        wait_version(kube, namespace, "numbered", number, timeout=60)
    kept = wait_for(lambda: (n := [v["spec"]["version"] for v in env_versions(kube, namespace, "numbered")])
                    == [1, 3, 4, 5] and n, 30, "version 2 pruned, version 1 kept for its pod")
    assert kept == [1, 3, 4, 5]
    assert registry_digest(cluster.registry, REPOSITORY, f"{namespace}.numbered-v2") is None  # its tag is gone
    assert registry_digest(cluster.registry, REPOSITORY, f"{namespace}.numbered-v1") == digest  # still pullable
    create_pod(kube, namespace, pod("again", {"kenv.dev/environment": "numbered"}, {"kenv.dev/version": "1"},
                                    command=REPORT))
    assert reported(kube, namespace, "again") == ["a", "1", image]

    kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/long", {"gracePeriodSeconds": 0})
    kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/again")
    wait_for(lambda: not [p for p in kube.request("GET", f"/api/v1/namespaces/{namespace}/pods")["items"]
                          if p["metadata"]["name"] in ("long", "again")], 60, "the pods to go")
    edit(kube, namespace, "numbered", {"environmentVariables": {"STAGE": "e"}})
    wait_version(kube, namespace, "numbered", 6, timeout=60)
    assert [v["spec"]["version"] for v in env_versions(kube, namespace, "numbered")] == [4, 5, 6]
    assert registry_digest(cluster.registry, REPOSITORY, f"{namespace}.numbered-v1") is None


def test_status_history_of_the_previous_release_becomes_version_objects(kube, cluster, namespace, base_image):
    spec = {"docker": {"baseImage": base_image}, "python": {"userManagedDependencies": True},
            "environmentVariables": {"STAGE": "now"}}
    create_env(kube, namespace, "legacy", spec)
    current = wait_version(kube, namespace, "legacy", 1)["status"]
    base_repository, base_tag = base_image.split("/", 1)[1].rsplit(":", 1)
    older = f"{cluster.registry}/{base_repository}@{registry_digest(cluster.registry, base_repository, base_tag)}"
    path = f"{GROUP_PATH}/namespaces/{namespace}/environments/legacy"
    with session_operator_paused(cluster):
        for version in env_versions(kube, namespace, "legacy"):
            kube.request("DELETE", f"{GROUP_PATH}/namespaces/{namespace}/environmentversions/"
                         f"{version['metadata']['name']}")
        history = [{"version": 1, "hash": "0" * 64, "image": older, "created": "2026-01-01T00:00:00Z"},
                   {"version": 2, "hash": current["hash"], "image": current["image"],
                    "created": "2026-02-01T00:00:00Z"}]
        legacy = {key: value for key, value in current.items() if key != "runtimeHash"}
        kube.request("PUT", f"{path}/status", {**get_env(kube, namespace, "legacy"),
                                              "status": {**legacy, "version": 2, "history": history}})
    started = time.monotonic()
    migrated = wait_for(lambda: (s := get_env(kube, namespace, "legacy")["status"]).get("runtimeHash") and s,
                        180, "the restarted operator to migrate status.history")
    print(f"\nmigrated {time.monotonic() - started:.1f}s after the operator was scaled back")
    assert migrated["version"] == 2 and migrated["image"] == current["image"] and "history" not in migrated
    versions = {v["spec"]["version"]: v["spec"] for v in env_versions(kube, namespace, "legacy")}
    assert sorted(versions) == [1, 2] and {v["reason"] for v in versions.values()} == {"Migrated"}
    assert versions[1]["image"] == older and "definition" not in versions[1]
    assert versions[2]["definition"]["environmentVariables"] == {"STAGE": "now"}
    assert registry_digest(cluster.registry, base_repository, f"{namespace}.legacy-v1") == older.split("@")[1]
    pinned = create_pod(kube, namespace, pod("old", {"kenv.dev/environment": "legacy"}, {"kenv.dev/version": "1"},
                                             command=["true"]))
    assert pinned["spec"]["containers"][0]["image"] == older
    edit(kube, namespace, "legacy", {"environmentVariables": {"STAGE": "next"}})
    assert wait_version(kube, namespace, "legacy", 3, timeout=60)["status"]["image"] == current["image"]
