"""kenv.injection: every mutation is applied as JSON Patch to the pod and the result inspected; the bootstrap
wrapper runs for real under /bin/sh, after the same $(VAR) expansion the kubelet does."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kenv.injection import (
    EnvironmentView,
    InjectionRefusal,
    InjectionRefused,
    InjectionSettings,
    VersionChoice,
    build_pod_mutation,
    build_ungate_patch,
    choose_version,
    framework_rank_zero,
    pod_is_awaiting_image,
    render_bootstrap,
)
from kenv.models import EnvironmentSpec
from kenv.versions import Snapshot, runtime_hash

REPO = "registry.local:5000/kenv/envs"
IMAGES = {n: f"{REPO}@sha256:{str(n) * 64}" for n in (1, 2, 3)}
READY = {
    "phase": "Ready", "image": IMAGES[3], "digest": "sha256:" + "3" * 64, "version": 3,
    "history": [{"version": n, "hash": f"h{n}", "image": IMAGES[n], "created": "2024-01-01T00:00:00Z"}
                for n in (1, 2, 3)],
}
BUILDING = {"phase": "Building", "conditions": []}
GATE = InjectionSettings(pull_secret=None, pending_image_policy="gate")


# --- JSON Patch (RFC 6902) applier used to check patches against real documents -------------------

def _parts(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def apply_patch(doc: dict, patch: list[dict]) -> dict:
    """Strict RFC 6902 subset (add/remove/replace/test): a missing parent or member raises, as the API server
    would refuse the patch."""
    doc = copy.deepcopy(doc)
    for op in patch:
        *parents, last = _parts(op["path"])
        parent = _walk(doc, parents)
        kind = op["op"]
        if kind == "test":
            assert _walk(parent, [last]) == op["value"], f"test failed: {op}"
        elif isinstance(parent, list):
            if kind == "add":
                parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
            elif kind == "remove":
                del parent[int(last)]
            else:
                parent[int(last)] = copy.deepcopy(op["value"])
        elif kind == "add":
            parent[last] = copy.deepcopy(op["value"])
        elif kind in ("remove", "replace"):
            if last not in parent:
                raise KeyError(f"{kind} of missing member {op['path']}")
            if kind == "remove":
                del parent[last]
            else:
                parent[last] = copy.deepcopy(op["value"])
        else:
            raise ValueError(f"unsupported op {kind}")
    return doc


def make_env(spec: dict | None = None, status: dict | None = None, **kw: Any) -> EnvironmentView:
    values: dict[str, Any] = {"kind": "Environment", "name": "torch", "namespace": "team-a"} | kw
    return EnvironmentView(spec=EnvironmentSpec.model_validate(spec or {}),
                           status=READY if status is None else status, **values)


def make_pod(annotations: dict | None = None, **container: Any) -> dict:
    main = {"name": "train", "image": "placeholder:latest", "command": ["python", "train.py"]} | container
    metadata = {"name": "p", "namespace": "team-a"}
    pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
                           "spec": {"containers": [main]}}
    if annotations is not None:
        pod["metadata"]["annotations"] = annotations
    return pod


def mutate(pod: dict, env: EnvironmentView, settings: InjectionSettings = GATE) -> tuple[dict, Any]:
    mutation = build_pod_mutation(pod, env, settings)
    return apply_patch(pod, mutation.patch), mutation


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def refusal(pod: dict, env: EnvironmentView, settings: InjectionSettings = GATE) -> str:
    with pytest.raises(InjectionRefused) as caught:
        build_pod_mutation(pod, env, settings)
    return caught.value.message


# --- the patch applier itself ---------------------------------------------------------------------

def test_apply_patch_is_strict_and_agrees_with_jsonpatch():
    with pytest.raises(KeyError):
        apply_patch({"a": {}}, [{"op": "add", "path": "/a/b/-", "value": 1}])
    pod = make_pod({"x/y": "1"}, env=[{"name": "A", "value": "1"}], args=["a"])
    env = make_env({"environmentVariables": {"B": "2"}, "docker": {"shmSize": "1Gi"},
                    "bootstrap": {"script": "true"}})
    patch = build_pod_mutation(pod, env, InjectionSettings(pull_secret="pull")).patch
    jsonpatch = pytest.importorskip("jsonpatch")
    assert apply_patch(pod, patch) == jsonpatch.apply_patch(pod, patch)
    bare = make_pod()
    del bare["metadata"]
    assert apply_patch(bare, build_pod_mutation(bare, env, GATE).patch) == jsonpatch.apply_patch(
        bare, build_pod_mutation(bare, env, GATE).patch)


# --- choose_version: one whole version per pod ----------------------------------------------------

OLD_DEFINITION = {"environmentVariables": {"STAGE": "old"}, "docker": {"shmSize": "1Gi"},
                  "bootstrap": {"script": "echo old"}}


def snapshot(number: int, definition: dict | None = None, runtime: str | None = None) -> Snapshot:
    return Snapshot(number=number, image=IMAGES[number], definition=definition, runtime_hash=runtime)


def test_choose_current_and_pinned_versions():
    env = make_env({"environmentVariables": {"STAGE": "new"}}, versions={1: snapshot(1, OLD_DEFINITION)})
    current = choose_version(env, None)
    assert isinstance(current, VersionChoice) and (current.version, current.image) == (3, IMAGES[3])
    assert current.spec is env.spec and not current.pinned and not current.warnings
    pinned = choose_version(env, " 1 ")
    assert isinstance(pinned, VersionChoice) and (pinned.version, pinned.image, pinned.pinned) == (1, IMAGES[1], True)
    assert pinned.spec.environment_variables == {"STAGE": "old"} and pinned.spec.docker.shm_size == "1Gi"
    assert pinned.spec.bootstrap is not None and pinned.spec.bootstrap.script == "echo old"


def test_version_migrated_from_status_history_keeps_its_image_with_a_warning():
    legacy = choose_version(make_env({"environmentVariables": {"STAGE": "new"}}), "2")
    assert isinstance(legacy, VersionChoice) and legacy.image == IMAGES[2]
    assert legacy.spec.environment_variables == {"STAGE": "new"}
    assert "recorded before kenv kept whole definitions" in legacy.warnings[0]


def test_unknown_or_bad_version_is_refused_with_the_known_ones():
    result = choose_version(make_env(), "7")
    assert result == InjectionRefusal("Environment team-a/torch has no version 7 (known: 1, 2, 3); "
                                      "see kenv versions torch -n team-a")
    bad = choose_version(make_env(), "latest")
    assert isinstance(bad, InjectionRefusal) and "has no version 'latest' (known: 1, 2, 3)" in bad.message
    cluster = choose_version(make_env(kind="ClusterEnvironment", name="base", namespace=None), "9")
    assert isinstance(cluster, InjectionRefusal)
    assert cluster.message == ("ClusterEnvironment base has no version 9 (known: 1, 2, 3); "
                               "see kenv versions base --cluster")
    assert "known: none yet" in choose_version(make_env(status=BUILDING), "1").message  # type: ignore[union-attr]


def test_a_newer_definition_not_ready_gates_instead_of_serving_the_old_image():
    edited = make_env({"environmentVariables": {"STAGE": "new"}}, status=dict(READY, observedGeneration=1),
                      generation=2)
    assert choose_version(edited, None) == VersionChoice(version=None, image=None, spec=edited.spec)
    rebuilding = make_env(rebuild_token="again")  # a rebuild asked for and not Ready yet
    assert choose_version(rebuilding, None) == VersionChoice(version=None, image=None, spec=rebuilding.spec)
    assert choose_version(make_env(status=BUILDING), None).image is None  # type: ignore[union-attr]
    assert choose_version(make_env(status={}), None).image is None  # type: ignore[union-attr]
    done = make_env(rebuild_token="again", status=dict(READY, rebuildToken="again"))
    assert choose_version(done, None).image == IMAGES[3]  # type: ignore[union-attr]


def test_reject_policy_names_the_pin_of_the_last_ready_version():
    building = make_env(status=dict(READY, phase="Building", observedGeneration=2), generation=2)
    refused = choose_version(building, None, "reject")
    assert isinstance(refused, InjectionRefusal)
    assert "still building its latest definition (phase Building)" in refused.message
    assert refused.message.endswith('annotate the pod with kenv.dev/version: "3"')


def test_last_ready_policy_gives_the_last_version_whole_with_a_warning():
    building = make_env({"environmentVariables": {"STAGE": "new"}}, generation=2,
                        status=dict(READY, phase="Building", observedGeneration=2),
                        versions={3: snapshot(3, OLD_DEFINITION)})
    choice = choose_version(building, None, "last-ready")
    assert isinstance(choice, VersionChoice) and (choice.version, choice.image) == (3, IMAGES[3])
    assert choice.spec.environment_variables == {"STAGE": "old"}
    assert "this pod gets version 3 (pending image policy last-ready)" in choice.warnings[0]
    nothing_yet = choose_version(make_env(status=BUILDING), None, "last-ready")
    assert isinstance(nothing_yet, VersionChoice) and nothing_yet.image is None  # gated: no version to give


def test_failed_latest_build_is_refused_with_the_reason_and_the_pin():
    conditions = [{"type": "Built", "status": "False", "message": "pip: No matching distribution for nope\nmore"}]
    failed = make_env(generation=4, status=dict(READY, phase="Failed", observedGeneration=4, conditions=conditions))
    refused = choose_version(failed, None)
    assert isinstance(refused, InjectionRefusal)
    assert "failed to build its latest definition: pip: No matching distribution for nope;" in refused.message
    assert "see `kenv logs torch -n team-a`" in refused.message
    assert refused.message.endswith('annotate the pod with kenv.dev/version: "3"')
    pinned = choose_version(failed, "3")
    assert isinstance(pinned, VersionChoice) and pinned.image == IMAGES[3]
    first = choose_version(make_env(generation=1, status={"phase": "Failed", "observedGeneration": 1}), None)
    assert isinstance(first, InjectionRefusal) and "kenv.dev/version" not in first.message
    # Failed for an older generation: the operator has not looked at this edit yet, so the pod waits.
    stale = make_env(generation=5, status=dict(READY, phase="Failed", observedGeneration=4))
    assert choose_version(stale, None).image is None  # type: ignore[union-attr]


def test_tag_only_image_is_refused():
    tagged = choose_version(make_env(status={"phase": "Ready", "image": f"{REPO}:kenv-abc", "version": 1}), None)
    assert isinstance(tagged, InjectionRefusal) and "not pinned by digest" in tagged.message


# --- basic injection ------------------------------------------------------------------------------

def test_injects_image_variables_and_annotations():
    env = make_env({"environmentVariables": {"OMP_NUM_THREADS": "4", "LITERAL": "a$$b $(HOME)"}})
    pod = make_pod({"team": "x"}, env=[{"name": "USER_VAR", "value": "u"}])
    result, mutation = mutate(pod, env)
    container = result["spec"]["containers"][0]
    assert container["image"] == IMAGES[3]
    names = [e["name"] for e in container["env"]]
    assert names[0] == "USER_VAR" and names[1:] == ["KENV_ENVIRONMENT", "KENV_VERSION", "KENV_IMAGE",
                                                      "KENV_PYTHON", "OMP_NUM_THREADS", "LITERAL"]
    values = {e["name"]: e.get("value") for e in container["env"]}
    assert values["KENV_ENVIRONMENT"] == "team-a/torch"
    assert values["KENV_VERSION"] == "3" and values["KENV_IMAGE"] == IMAGES[3]
    assert values["LITERAL"] == "a$$$$b $$(HOME)"  # the kubelet turns it back into the literal value
    assert result["metadata"]["annotations"] == {
        "team": "x", "kenv.dev/injected-environment": "team-a/torch", "kenv.dev/injected-version": "3",
        "kenv.dev/injected-image": IMAGES[3], "kenv.dev/injected": "true"}
    assert mutation.annotations["kenv.dev/injected"] == "true"
    assert not mutation.gated and not mutation.warnings
    assert "imagePullSecrets" not in result["spec"] and "volumes" not in result["spec"]


def test_patch_creates_missing_lists_and_maps():
    pod = make_pod()  # no annotations, no env
    result, _ = mutate(pod, make_env({"environmentVariables": {"A": "1"}}))
    assert env_of(result["spec"]["containers"][0])["A"]["value"] == "1"
    assert result["metadata"]["annotations"]["kenv.dev/injected"] == "true"
    del pod["metadata"]
    assert mutate(pod, make_env())[0]["metadata"]["annotations"]["kenv.dev/injected-version"] == "3"


def test_annotation_keys_are_escaped_in_paths():
    _, mutation = mutate(make_pod({"a": "b"}), make_env())
    paths = [op["path"] for op in mutation.patch if op["path"].startswith("/metadata")]
    assert "/metadata/annotations/kenv.dev~1injected" in paths
    assert all(p.count("/") == 3 for p in paths)


def test_cluster_environment_is_named_cluster_slash_name():
    result, _ = mutate(make_pod(), make_env(kind="ClusterEnvironment", name="base", namespace=None))
    assert result["metadata"]["annotations"]["kenv.dev/injected-environment"] == "cluster/base"
    assert env_of(result["spec"]["containers"][0])["KENV_ENVIRONMENT"]["value"] == "cluster/base"


def test_already_injected_pod_gets_an_empty_patch():
    env = make_env({"environmentVariables": {"A": "1"}, "bootstrap": {"script": "true"}})
    once, _ = mutate(make_pod(), env)
    again = build_pod_mutation(once, env, GATE)
    assert again.patch == [] and not again.warnings
    assert build_pod_mutation(make_pod({"kenv.dev/injected": "true"}), env, GATE).patch == []


# --- container choice and versions ----------------------------------------------------------------

def test_container_annotation_picks_the_target():
    pod = make_pod({"kenv.dev/container": "worker"})
    pod["spec"]["containers"].append({"name": "worker", "image": "w"})
    result, _ = mutate(pod, make_env())
    first, worker = result["spec"]["containers"]
    assert first["image"] == "placeholder:latest" and "env" not in first
    assert worker["image"] == IMAGES[3] and "KENV_IMAGE" in env_of(worker)


def test_unknown_container_is_refused_with_the_names():
    pod = make_pod({"kenv.dev/container": "nope"})
    pod["spec"]["containers"].append({"name": "sidecar", "image": "s"})
    message = refusal(pod, make_env())
    assert "kenv.dev/container" in message and "'nope'" in message and "train, sidecar" in message


def test_version_annotation_pins_an_older_image_even_while_building():
    status = dict(READY, phase="Building")
    result, mutation = mutate(make_pod({"kenv.dev/version": "1"}), make_env(status=status))
    assert result["spec"]["containers"][0]["image"] == IMAGES[1]
    assert result["metadata"]["annotations"]["kenv.dev/injected-version"] == "1"
    assert env_of(result["spec"]["containers"][0])["KENV_VERSION"]["value"] == "1"
    assert not mutation.gated


def test_pin_restores_the_whole_version_not_only_its_image():
    env = make_env({"environmentVariables": {"STAGE": "new"}}, versions={1: snapshot(1, OLD_DEFINITION)})
    result, mutation = mutate(make_pod({"kenv.dev/version": "1"}), env)
    container = result["spec"]["containers"][0]
    assert container["image"] == IMAGES[1] and env_of(container)["STAGE"]["value"] == "old"
    assert env_of(container)["KENV_BOOTSTRAP_SCRIPT"]["value"] == "echo old"
    assert result["spec"]["volumes"][0]["emptyDir"]["sizeLimit"] == "1Gi"
    current, _ = mutate(make_pod(), env)
    assert env_of(current["spec"]["containers"][0])["STAGE"]["value"] == "new"
    assert "volumes" not in current["spec"] and not mutation.warnings


def test_unknown_version_annotation_is_refused():
    message = refusal(make_pod({"kenv.dev/version": "7"}), make_env())
    assert message == ("Environment team-a/torch has no version 7 (known: 1, 2, 3); "
                       "see kenv versions torch -n team-a")


def test_tag_only_status_image_is_refused():
    message = refusal(make_pod(), make_env(status={"phase": "Ready", "image": f"{REPO}:v1", "version": 1}))
    assert "not pinned by digest" in message


# --- no image yet: gate or reject -----------------------------------------------------------------

@pytest.mark.parametrize("phase", ["Pending", "Queued", "Building"])
def test_gate_policy_admits_gated_pod_with_everything_else(phase):
    env = make_env({"environmentVariables": {"A": "1"}, "docker": {"shmSize": "2Gi"}},
                   status={"phase": phase})
    pod = make_pod()
    pod["spec"]["schedulingGates"] = [{"name": "other.io/gate"}]
    result, mutation = mutate(pod, env, InjectionSettings(pull_secret="regcred"))
    assert mutation.gated
    spec = result["spec"]
    assert spec["schedulingGates"] == [{"name": "other.io/gate"}, {"name": "kenv.dev/image"}]
    container = spec["containers"][0]
    assert container["image"] == "placeholder:latest"
    env_vars = env_of(container)
    assert env_vars["A"]["value"] == "1"
    assert env_vars["KENV_IMAGE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['kenv.dev/injected-image']"}}
    assert env_vars["KENV_VERSION"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['kenv.dev/injected-version']"}}
    assert spec["imagePullSecrets"] == [{"name": "regcred"}] and spec["volumes"][0]["name"] == "kenv-dshm"
    annotations = result["metadata"]["annotations"]
    assert annotations["kenv.dev/awaiting-image"] == "true" and annotations["kenv.dev/injected"] == "true"
    assert annotations["kenv.dev/awaiting-runtime"] == runtime_hash(env.spec)
    assert "kenv.dev/injected-image" not in annotations and "kenv.dev/injected-version" not in annotations
    assert pod_is_awaiting_image(result) and not pod_is_awaiting_image(pod)
    # the label the reconciler's watch selects gated pods by (gatewatch.py), beside the pod's own labels
    assert result["metadata"]["labels"] == {"kenv.dev/awaiting-image": "true"}
    labelled = make_pod()
    labelled["metadata"]["labels"] = {"kenv.dev/environment": "e"}
    assert mutate(labelled, env)[0]["metadata"]["labels"] == {"kenv.dev/environment": "e",
                                                              "kenv.dev/awaiting-image": "true"}


def test_gated_container_without_image_gets_a_placeholder():
    pod = make_pod()
    del pod["spec"]["containers"][0]["image"]
    result, _ = mutate(pod, make_env(status=BUILDING))
    assert result["spec"]["containers"][0]["image"].startswith("kenv.invalid/")


def test_custom_gate_name():
    result, _ = mutate(make_pod(), make_env(status=BUILDING), InjectionSettings(gate_name="x.io/wait"))
    assert result["spec"]["schedulingGates"] == [{"name": "x.io/wait"}]
    assert pod_is_awaiting_image(result, gate_name="x.io/wait") and not pod_is_awaiting_image(result)


def test_reject_policy_refuses_with_kubectl_wait():
    reject = InjectionSettings(pending_image_policy="reject")
    message = refusal(make_pod(), make_env(status=BUILDING), reject)
    assert "Environment team-a/torch is still building its latest definition (phase Building)" in message
    assert "kubectl wait --for=condition=Ready env/torch -n team-a" in message
    failed = refusal(make_pod(), make_env(status={"phase": "Failed"}, kind="ClusterEnvironment", name="b",
                                          namespace=None), reject)
    assert "failed to build" in failed and "kenv logs b --cluster" in failed
    assert mutate(make_pod(), make_env(), reject)[0]["spec"]["containers"][0]["image"] == IMAGES[3]


# --- variables, secrets, clashes ------------------------------------------------------------------

def test_secret_references_by_name_never_values():
    spec = {"secretEnv": [{"name": "TOKEN", "secretKeyRef": {"name": "hf", "key": "token"}},
                          {"name": "OPT", "secretKeyRef": {"name": "x", "key": "k", "optional": True}}],
            "secretEnvFrom": [{"secretName": "aws", "prefix": "AWS_"},
                              {"secretName": "misc", "optional": True}]}
    pod = make_pod(envFrom=[{"configMapRef": {"name": "cm"}}])
    result, _ = mutate(pod, make_env(spec))
    container = result["spec"]["containers"][0]
    variables = env_of(container)
    token_ref = {"name": "hf", "key": "token", "optional": False}
    assert variables["TOKEN"] == {"name": "TOKEN", "valueFrom": {"secretKeyRef": token_ref}}
    assert variables["OPT"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert container["envFrom"] == [{"configMapRef": {"name": "cm"}},
                                    {"secretRef": {"name": "aws", "optional": False}, "prefix": "AWS_"},
                                    {"secretRef": {"name": "misc", "optional": True}}]
    assert "namespace" not in json.dumps(container)  # the pod's own namespace, always
    fresh, _ = mutate(make_pod(), make_env({"secretEnvFrom": [{"secretName": "aws"}]}))
    assert fresh["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "aws", "optional": False}}]


def test_container_env_wins_and_the_clash_is_reported():
    spec = {"environmentVariables": {"A": "env", "B": "env", "C": "env"},
            "secretEnv": [{"name": "D", "secretKeyRef": {"name": "s", "key": "k"}}]}
    pod = make_pod(env=[{"name": "A", "value": "pod"}, {"name": "D", "value": "pod"},
                        {"name": "KENV_PYTHON", "value": "/my/python"}])
    result, mutation = mutate(pod, make_env(spec))
    variables = env_of(result["spec"]["containers"][0])
    assert variables["A"]["value"] == "pod" and variables["D"] == {"name": "D", "value": "pod"}
    assert variables["KENV_PYTHON"]["value"] == "/my/python"
    assert variables["B"]["value"] == "env"
    assert [e["name"] for e in result["spec"]["containers"][0]["env"]].count("A") == 1
    assert result["metadata"]["annotations"]["kenv.dev/overridden-env"] == "KENV_PYTHON,A,D"
    assert len(mutation.warnings) == 1 and "KENV_PYTHON, A, D" in mutation.warnings[0]


def test_environment_duplicate_keeps_the_first_and_warns():
    secret = {"name": "X", "secretKeyRef": {"name": "s", "key": "k"}}
    spec = {"environmentVariables": {"X": "plain"}, "secretEnv": [secret]}
    result, mutation = mutate(make_pod(), make_env(spec))
    assert env_of(result["spec"]["containers"][0])["X"]["value"] == "plain"
    assert any("defines X twice" in w for w in mutation.warnings)


@pytest.mark.parametrize(("spec", "expected"), [
    ({"python": {"interpreterPath": "/usr/local/bin/python3.12"}}, "/usr/local/bin/python3.12"),
    ({"conda": {"packages": ["numpy"]}}, "/opt/kenv/env/bin/python"),
    ({"python": {"version": "3.11"}}, "/opt/kenv/env/bin/python"),
    ({"pip": {"packages": ["requests"]}}, "python3"),
    ({}, "python3"),
])
def test_kenv_python(spec, expected):
    result, _ = mutate(make_pod(), make_env(spec))
    assert env_of(result["spec"]["containers"][0])["KENV_PYTHON"]["value"] == expected


def test_pull_secret_added_once():
    settings = InjectionSettings(pull_secret="regcred")
    result, _ = mutate(make_pod(), make_env(), settings)
    assert result["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    pod = make_pod()
    pod["spec"]["imagePullSecrets"] = [{"name": "mine"}]
    assert mutate(pod, make_env(), settings)[0]["spec"]["imagePullSecrets"] == [{"name": "mine"},
                                                                                 {"name": "regcred"}]
    pod["spec"]["imagePullSecrets"] = [{"name": "regcred"}]
    assert mutate(pod, make_env(), settings)[0]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


# --- shm ------------------------------------------------------------------------------------------

def test_shm_size_mounts_a_memory_empty_dir():
    pod = make_pod(volumeMounts=[{"name": "data", "mountPath": "/data"}])
    pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    result, mutation = mutate(pod, make_env({"docker": {"shmSize": "8Gi"}}))
    assert result["spec"]["volumes"][1] == {"name": "kenv-dshm", "emptyDir": {"medium": "Memory",
                                                                               "sizeLimit": "8Gi"}}
    mounts = result["spec"]["containers"][0]["volumeMounts"]
    assert mounts == [{"name": "data", "mountPath": "/data"}, {"name": "kenv-dshm", "mountPath": "/dev/shm"}]
    assert not mutation.warnings
    fresh, _ = mutate(make_pod(), make_env({"docker": {"shmSize": "1Gi"}}))
    assert fresh["spec"]["containers"][0]["volumeMounts"] == [{"name": "kenv-dshm", "mountPath": "/dev/shm"}]


def test_existing_dev_shm_mount_is_kept_with_a_warning():
    pod = make_pod(volumeMounts=[{"name": "mine", "mountPath": "/dev/shm/"}])
    pod["spec"]["volumes"] = [{"name": "mine", "emptyDir": {"medium": "Memory"}}]
    result, mutation = mutate(pod, make_env({"docker": {"shmSize": "8Gi"}}))
    assert result["spec"]["volumes"] == pod["spec"]["volumes"]
    assert result["spec"]["containers"][0]["volumeMounts"] == pod["spec"]["containers"][0]["volumeMounts"]
    assert any("/dev/shm" in w for w in mutation.warnings)


# --- bootstrap: admission checks ------------------------------------------------------------------

def test_bootstrap_needs_an_explicit_command():
    pod = make_pod()
    del pod["spec"]["containers"][0]["command"]
    message = refusal(pod, make_env({"bootstrap": {"script": "echo hi"}}))
    assert ("pods using a bootstrap script must set command: the image's ENTRYPOINT is not visible at "
            "admission") in message


def test_bootstrap_wraps_command_and_args():
    env = make_env({"bootstrap": {"script": "echo SCRIPT-TEXT"}})
    result, _ = mutate(make_pod(command=["python"], args=["train.py", "--lr", "0.1"]), env)
    container = result["spec"]["containers"][0]
    assert "args" not in container
    assert container["command"][:2] == ["/bin/sh", "-c"]
    assert container["command"][3:] == ["kenv-bootstrap", "python", "train.py", "--lr", "0.1"]
    assert "SCRIPT-TEXT" not in container["command"][2]  # the script is data, not part of the wrapper
    assert env_of(container)["KENV_BOOTSTRAP_SCRIPT"]["value"] == "echo SCRIPT-TEXT"


def test_reserved_bootstrap_variable_is_refused():
    pod = make_pod(env=[{"name": "KENV_BOOTSTRAP_SCRIPT", "value": "x"}])
    assert "KENV_BOOTSTRAP_SCRIPT" in refusal(pod, make_env({"bootstrap": {"script": "true"}}))


def test_bootstrap_writes_failures_to_the_containers_termination_message_path():
    env = make_env({"bootstrap": {"script": "true"}})
    default = env_of(mutate(make_pod(), env)[0]["spec"]["containers"][0])
    assert default["KENV_TERMINATION_MESSAGE_PATH"]["value"] == "/dev/termination-log"  # Kubernetes' default
    own = make_pod(terminationMessagePath="/var/log/$(why)")
    assert env_of(mutate(own, env)[0]["spec"]["containers"][0])["KENV_TERMINATION_MESSAGE_PATH"]["value"] == \
        "/var/log/$$(why)"
    pod = make_pod(env=[{"name": "KENV_TERMINATION_MESSAGE_PATH", "value": "/x"}])
    assert "KENV_TERMINATION_MESSAGE_PATH" in refusal(pod, env)


def test_rank_zero_needs_a_mounted_marker_dir():
    env = make_env({"bootstrap": {"script": "true", "mode": "RankZero", "markerDir": "/shared/kenv"}})
    message = refusal(make_pod(volumeMounts=[{"name": "d", "mountPath": "/sharedx"}]), env)
    assert "mount" in message and "/shared/kenv" in message and "shared by all ranks" in message
    pod = make_pod(volumeMounts=[{"name": "d", "mountPath": "/shared"}])
    pod["spec"]["volumes"] = [{"name": "d", "persistentVolumeClaim": {"claimName": "rwx"}}]
    result, mutation = mutate(pod, env)
    variables = env_of(result["spec"]["containers"][0])
    assert variables["KENV_BOOTSTRAP_MARKER_DIR"]["value"] == "/shared/kenv"
    assert variables["KENV_JOB_NAME"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}}
    assert not mutation.warnings
    pod["spec"]["volumes"] = [{"name": "d", "emptyDir": {}}]
    assert any("emptyDir" in w for w in mutate(pod, env)[1].warnings)
    all_mode = make_env({"bootstrap": {"script": "true"}})  # All mode needs no marker volume
    assert "KENV_BOOTSTRAP_MARKER_DIR" not in env_of(mutate(make_pod(), all_mode)[0]["spec"]["containers"][0])


def test_wrapper_is_posix_sh():
    for mode in ("All", "RankZero"):
        script = render_bootstrap(EnvironmentSpec.model_validate(
            {"bootstrap": {"script": "true", "mode": mode, "rankVariable": "OMPI_COMM_WORLD_RANK"}}))
        for bashism in ("[[", "function ", "==", "local ", "$'", "<<<", "pipefail", "source "):
            assert bashism not in script, (mode, bashism)
        subprocess.run(["/bin/sh", "-n", "-c", script], check=True)


# --- bootstrap: the wrapper run for real ----------------------------------------------------------

def kubelet_expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion: $$ -> $, $(NAME) -> value of an earlier variable, else unchanged."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", replace, text)


def run_container(pod: dict, extra: dict[str, str], background: bool = False) -> Any:
    """Start the mutated pod's container like the kubelet would (env in order, fieldRefs, $(VAR))."""
    container = pod["spec"]["containers"][0]
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = kubelet_expand(entry["value"], env)
        elif "fieldRef" in entry.get("valueFrom", {}):
            kind, key = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]",
                                     entry["valueFrom"]["fieldRef"]["fieldPath"]).groups()  # type: ignore[union-attr]
            env[entry["name"]] = pod["metadata"].get(kind, {}).get(key, "")
    argv = [kubelet_expand(part, env) for part in container["command"]] + container.get("args", [])
    process_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")} | env | extra
    # the kubelet mounts a file of the container's own there; never write this machine's /dev
    assert not process_env.get("KENV_TERMINATION_MESSAGE_PATH", "").startswith("/dev/"), process_env
    if background:
        return subprocess.Popen(argv, env=process_env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(argv, env=process_env, capture_output=True, text=True, timeout=60)


ARGS = ["a b", 'c"d', "e'f", "$x", "", "  two  spaces ", "\\n", "*", "--flag=1 2"]
PRINT_ARGS = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"]


def bootstrapped(tmp_path: Path, script: str, **bootstrap: Any) -> dict:
    spec = {"bootstrap": {"script": script, **bootstrap}, "environmentVariables": {"OUT": str(tmp_path)}}
    pod = make_pod(command=PRINT_ARGS[:2], args=PRINT_ARGS[2:] + ARGS,
                   volumeMounts=[{"name": "shared", "mountPath": str(tmp_path)}],
                   terminationMessagePath=str(tmp_path / "termination-log"))  # the API server's default is /dev/..
    pod["metadata"]["labels"] = {"batch.kubernetes.io/job-name": "job-1"}
    return mutate(pod, make_env(spec))[0]


def test_all_mode_runs_script_then_exec_with_exact_args(tmp_path):
    script = "echo '$(KENV_PYTHON) $$ $HOME' > \"$OUT/ran\"; test \"$KENV_VERSION\" = 3"
    done = run_container(bootstrapped(tmp_path, script), {})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == ARGS
    # literal: neither the kubelet's $(VAR)/$$ expansion nor the wrapper's shell rewrote the script
    assert (tmp_path / "ran").read_text() == "$(KENV_PYTHON) $$ $HOME\n"


def test_all_mode_script_failure_propagates_exit_code(tmp_path):
    done = run_container(bootstrapped(tmp_path, "echo boom >&2; exit 7"), {})
    assert done.returncode == 7
    assert "kenv: bootstrap script failed with exit code 7" in done.stderr
    assert done.stdout == "boom\n"  # the script's output (stdout and stderr) streamed; the command never ran
    assert (tmp_path / "termination-log").read_text() == "kenv: bootstrap script failed with exit code 7\nboom\n"


def test_rank_zero_runs_script_and_writes_done_marker(tmp_path):
    pod = bootstrapped(tmp_path, 'touch "$OUT/ran"', mode="RankZero", markerDir=str(tmp_path))
    done = run_container(pod, {"RANK": "0"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ran").exists() and (tmp_path / "kenv-bootstrap-job-1.done").exists()
    assert json.loads(done.stdout.splitlines()[-1]) == ARGS


def test_other_rank_waits_for_marker_then_runs(tmp_path):
    pod = bootstrapped(tmp_path, 'touch "$OUT/ran-by-rank1"', mode="RankZero", markerDir=str(tmp_path))
    process = run_container(pod, {"RANK": "1"}, background=True)
    try:
        time.sleep(1.0)
        assert process.poll() is None  # still waiting
        (tmp_path / "kenv-bootstrap-job-1.done").write_text("0\n")
        stdout, stderr = process.communicate(timeout=15)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert json.loads(stdout.splitlines()[-1]) == ARGS
    assert not (tmp_path / "ran-by-rank1").exists()  # only rank 0 runs the script


def test_other_rank_stops_on_failed_marker(tmp_path):
    (tmp_path / "kenv-bootstrap-job-1.failed").write_text("3\n")
    pod = bootstrapped(tmp_path, "true", mode="RankZero", markerDir=str(tmp_path))
    done = run_container(pod, {"JOB_COMPLETION_INDEX": "2"})
    assert done.returncode == 1 and "kenv: rank 0 bootstrap failed (see its log)" in done.stderr
    assert done.stdout == ""
    assert (tmp_path / "termination-log").read_text() == "kenv: rank 0 bootstrap failed (see its log)\n"


def test_other_rank_times_out(tmp_path):
    pod = bootstrapped(tmp_path, "true", mode="RankZero", markerDir=str(tmp_path), timeoutSeconds=1)
    started = time.monotonic()
    done = run_container(pod, {"RANK": "1"})
    assert time.monotonic() - started < 10
    assert done.returncode == 1 and done.stdout == ""
    assert (f"kenv: waited 1s for rank 0's bootstrap marker in {tmp_path}; "
            f"is {tmp_path} a volume shared by all ranks?") in done.stderr


def test_rank_zero_failure_writes_failed_marker(tmp_path):
    pod = bootstrapped(tmp_path, "exit 5", mode="RankZero", markerDir=str(tmp_path))
    done = run_container(pod, {})  # no rank variable at all: rank 0
    assert done.returncode == 5 and "exit code 5" in done.stderr
    assert (tmp_path / "kenv-bootstrap-job-1.failed").read_text().strip() == "5"
    assert not (tmp_path / "kenv-bootstrap-job-1.done").exists()
    assert (tmp_path / "termination-log").read_text() == "kenv: bootstrap script failed with exit code 5\n"


def test_rank_variable_and_run_id(tmp_path):
    pod = bootstrapped(tmp_path, "true", mode="RankZero", markerDir=str(tmp_path),
                       rankVariable="OMPI_COMM_WORLD_RANK", timeoutSeconds=1)
    waiting = run_container(pod, {"OMPI_COMM_WORLD_RANK": "1", "RANK": "0"})  # the configured one wins
    assert waiting.returncode == 1 and "waited 1s" in waiting.stderr
    done = run_container(pod, {"OMPI_COMM_WORLD_RANK": "0", "KENV_RUN_ID": "run-42"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "kenv-bootstrap-run-42.done").exists()
    bad = run_container(pod, {"RANK": "one"})
    assert bad.returncode == 1 and "is not a non-negative integer" in bad.stderr


# --- bootstrap: which shell, errexit, failures visible ---------------------------------------------

GUIDE_SCRIPT = """\
if [[ -n "$OUT" && "${LOCAL_RANK:-0}" == 0 ]]; then
  echo "prepared by ${BASH_VERSION:+bash}" > "$OUT/prepared"
fi
"""  # the Azure ML guide's style: under dash, `[[` is "not found", the `if` false and the bootstrap skipped


def tool_dir(tmp_path: Path, name: str, tools: dict[str, str]) -> str:
    """A directory of symlinks name -> real program, for a PATH holding only those."""
    directory = tmp_path / name
    directory.mkdir()
    for tool, target in tools.items():
        (directory / tool).symlink_to(target)
    return str(directory)


@pytest.fixture
def path_without_bash(tmp_path: Path) -> str:
    """A PATH with sh (dash here) and the few utilities the wrapper and the scripts use, but no bash."""
    sh = os.path.realpath("/bin/sh")
    assert os.path.basename(sh) != "bash", "this machine's /bin/sh is bash: the sh fallback cannot be tested"
    tools = {"sh": sh, os.path.basename(sh): sh}
    for tool in ("tee", "tail", "mkfifo", "mkdir", "chmod", "rm", "mv", "sleep", "cat", "touch"):
        found = shutil.which(tool)
        assert found, tool
        tools[tool] = found
    return tool_dir(tmp_path, "no-bash-bin", tools)


def termination_message(tmp_path: Path) -> str:
    return (tmp_path / "termination-log").read_text()


def ran_command(done: Any) -> bool:
    """Whether the training command ran: its last line is the JSON of its exact args."""
    return bool(done.stdout) and done.stdout.splitlines()[-1] == json.dumps(ARGS)


def test_shebang_bash_script_runs_with_bash(tmp_path):
    script = '#!/bin/bash\nif [[ -n "$OUT" ]]; then echo "$0 ${BASH_VERSINFO[0]}" > "$OUT/ran"; fi\n'
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    done = run_container(bootstrapped(tmp_path, script), {"TMPDIR": str(scratch)})
    assert done.returncode == 0, done.stderr
    assert ran_command(done)
    path, major = (tmp_path / "ran").read_text().split()
    assert Path(path).parent.parent == scratch and major.isdigit()  # run as a file under $TMPDIR, by bash
    assert list(scratch.iterdir()) == []  # and removed before the command starts


def test_script_without_shebang_runs_with_bash_when_the_image_has_it(tmp_path):
    assert shutil.which("bash"), "bash is on this machine's PATH"
    done = run_container(bootstrapped(tmp_path, GUIDE_SCRIPT), {})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "prepared").read_text() == "prepared by bash\n"
    assert ran_command(done) and "not found" not in done.stderr


def test_script_without_shebang_stops_at_its_first_failing_command(tmp_path):
    done = run_container(bootstrapped(tmp_path, 'echo one\nfalse\necho two\ntouch "$OUT/after"\n'), {})
    assert done.returncode == 1
    assert done.stdout == "one\n" and not (tmp_path / "after").exists()  # errexit: and no command
    assert termination_message(tmp_path) == "kenv: bootstrap script failed with exit code 1\none\n"


def test_without_bash_the_script_runs_with_sh(tmp_path, path_without_bash):
    script = 'echo "shell: ${BASH_VERSION:-sh}" > "$OUT/shell"\n'
    done = run_container(bootstrapped(tmp_path, script), {"PATH": path_without_bash})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "shell").read_text() == "shell: sh\n"
    assert "kenv: no bash in this image; the bootstrap script runs with /bin/sh -e" in done.stderr
    assert ran_command(done)
    failing = run_container(bootstrapped(tmp_path, 'false\ntouch "$OUT/after"\n'), {"PATH": path_without_bash})
    assert failing.returncode == 1 and not (tmp_path / "after").exists()  # -e under sh too
    assert not ran_command(failing)


def test_without_bash_a_double_bracket_script_fails_instead_of_being_skipped(tmp_path, path_without_bash):
    if subprocess.run(["/bin/sh", "-c", "[[ 1 ]]"], capture_output=True).returncode == 0:
        pytest.skip("this machine's /bin/sh understands [[")
    done = run_container(bootstrapped(tmp_path, GUIDE_SCRIPT), {"PATH": path_without_bash})
    message = ("kenv: the bootstrap script uses [[ ... ]], but this image has no bash and its /bin/sh lacks [[; "
               "install bash in the image, or start the script with #!/bin/sh to run it with sh as it is")
    assert done.returncode == 127 and message in done.stderr.splitlines()
    assert termination_message(tmp_path) == message + "\n"
    assert not (tmp_path / "prepared").exists() and not ran_command(done)


def test_without_bash_a_posix_character_class_is_not_taken_for_double_brackets(tmp_path, path_without_bash):
    script = 'case abc in *[[:alpha:]]*) : > "$OUT/prepared" ;; esac\n'
    done = run_container(bootstrapped(tmp_path, script), {"PATH": path_without_bash})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "prepared").exists() and ran_command(done)


def test_failure_exit_code_and_last_lines_in_the_termination_message(tmp_path):
    script = ('i=1; while [ $i -le 30 ]; do echo "step $i"; i=$((i + 1)); done\n'
              'echo "fatal: dataset server unreachable" >&2\n(exit 42)\necho never\n')
    done = run_container(bootstrapped(tmp_path, script), {})
    assert done.returncode == 42
    expected = [f"step {i}" for i in range(1, 31)] + ["fatal: dataset server unreachable"]
    assert done.stdout.splitlines() == expected  # the whole output streamed to the log, in order
    assert done.stderr.splitlines()[-1] == "kenv: bootstrap script failed with exit code 42"
    assert termination_message(tmp_path).splitlines() == [
        "kenv: bootstrap script failed with exit code 42", *expected[-20:]]


def test_termination_message_keeps_at_most_2_kib_of_output(tmp_path):
    script = 'for c in a b c d e f; do printf "%0500d\\n" 0 | tr 0 "$c"; done; exit 3\n'
    done = run_container(bootstrapped(tmp_path, script), {})
    assert done.returncode == 3, done.stderr
    output = "".join(c * 500 + "\n" for c in "abcdef")
    assert done.stdout == output
    assert termination_message(tmp_path) == "kenv: bootstrap script failed with exit code 3\n" + output[-2048:]


def test_python_shebang_script_runs_with_python(tmp_path):
    bin_dir = tool_dir(tmp_path, "python-bin", {"python3": sys.executable})
    path = f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    script = ('#!/usr/bin/env python3\nimport os, sys\n'
              'open(os.path.join(os.environ["OUT"], "py"), "w").write("%d.%d" % sys.version_info[:2])\n')
    done = run_container(bootstrapped(tmp_path, script), {"PATH": path})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "py").read_text() == "{}.{}".format(*sys.version_info[:2]) and ran_command(done)
    failing = '#!/usr/bin/env python3\nprint("loading the model", flush=True)\nraise RuntimeError("no GPU found")\n'
    done = run_container(bootstrapped(tmp_path, failing), {"PATH": path})
    assert done.returncode == 1 and not ran_command(done)
    lines = termination_message(tmp_path).splitlines()
    assert lines[:2] == ["kenv: bootstrap script failed with exit code 1", "loading the model"]
    assert lines[-1] == "RuntimeError: no GPU found"


def test_shebang_script_without_a_writable_tmpdir_fails_clearly(tmp_path):
    missing = tmp_path / "missing"
    done = run_container(bootstrapped(tmp_path, '#!/bin/sh\ntouch "$OUT/ran"\n'), {"TMPDIR": str(missing)})
    message = (f"kenv: cannot write the bootstrap script to a file in {missing}, which a script starting with #! "
               f"needs; make {missing} writable (e.g. an emptyDir volume) or set TMPDIR to a writable directory")
    assert done.returncode == 1 and message in done.stderr.splitlines()
    assert termination_message(tmp_path) == message + "\n"
    assert not (tmp_path / "ran").exists() and not ran_command(done)
    # a script without #! needs no file: it runs, only its output is not kept for the termination message
    done = run_container(bootstrapped(tmp_path, 'touch "$OUT/ran"; exit 4'), {"TMPDIR": str(missing)})
    assert done.returncode == 4 and (tmp_path / "ran").exists()
    assert termination_message(tmp_path) == "kenv: bootstrap script failed with exit code 4\n"


def test_rank_zero_shebang_failure_writes_failed_marker_and_message(tmp_path):
    script = "#!/bin/bash\necho 'pip: no matching distribution' >&2\nexit 9\n"
    pod = bootstrapped(tmp_path, script, mode="RankZero", markerDir=str(tmp_path))
    done = run_container(pod, {"RANK": "0"})
    assert done.returncode == 9 and not ran_command(done)
    assert (tmp_path / "kenv-bootstrap-job-1.failed").read_text() == "9\n"
    assert termination_message(tmp_path) == ("kenv: bootstrap script failed with exit code 9\n"
                                             "pip: no matching distribution\n")
    other = run_container(pod, {"RANK": "1"})
    assert other.returncode == 1 and "kenv: rank 0 bootstrap failed (see its log)" in other.stderr


def test_a_process_left_in_the_background_does_not_hold_up_the_command(tmp_path):
    script = 'sleep 20 &\necho $! > "$OUT/background.pid"\necho started\n'
    log = tmp_path / "log"
    started = time.monotonic()
    try:
        with log.open("w") as out:  # a file, not a pipe: the background sleep keeps its copy open
            pod = bootstrapped(tmp_path, script)
            container = pod["spec"]["containers"][0]
            env = {e["name"]: kubelet_expand(e["value"], {}) for e in container["env"] if "value" in e}
            argv = [kubelet_expand(part, env) for part in container["command"]]
            done = subprocess.run(argv, env={"PATH": os.environ["PATH"]} | env, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=15)
        assert done.returncode == 0
        assert time.monotonic() - started < 10  # at most ~2s waiting for the output to drain
        assert log.read_text().splitlines() == ["started", json.dumps(ARGS)]
    finally:
        if (tmp_path / "background.pid").exists():  # else the assertion above says what went wrong
            os.kill(int((tmp_path / "background.pid").read_text()), signal.SIGKILL)


# --- un-gating ------------------------------------------------------------------------------------

def test_ungate_sets_image_and_lifts_only_kenv_gate():
    pod = make_pod()
    pod["spec"]["schedulingGates"] = [{"name": "a.io/x"}]
    gated, _ = mutate(pod, make_env(status=BUILDING))
    gated["spec"]["schedulingGates"].append({"name": "b.io/y"})
    assert pod_is_awaiting_image(gated)
    result = apply_patch(gated, build_ungate_patch(gated, IMAGES[2], version=2))
    assert result["spec"]["containers"][0]["image"] == IMAGES[2]
    assert result["spec"]["schedulingGates"] == [{"name": "a.io/x"}, {"name": "b.io/y"}]
    annotations = result["metadata"]["annotations"]
    assert annotations["kenv.dev/injected-image"] == IMAGES[2]
    assert annotations["kenv.dev/injected-version"] == "2"
    assert "kenv.dev/awaiting-image" not in annotations
    assert result["metadata"]["labels"] == {}  # the gated pods' label is gone too
    assert not pod_is_awaiting_image(result)


def test_ungate_targets_named_container_and_refuses_tags():
    pod = make_pod({"kenv.dev/container": "worker"})
    pod["spec"]["containers"].append({"name": "worker", "image": "w"})
    gated, _ = mutate(pod, make_env(status=BUILDING))
    result = apply_patch(gated, build_ungate_patch(gated, IMAGES[1]))
    assert [c["image"] for c in result["spec"]["containers"]] == ["placeholder:latest", IMAGES[1]]
    assert "schedulingGates" in result["spec"] and result["spec"]["schedulingGates"] == []
    explicit = apply_patch(gated, build_ungate_patch(gated, IMAGES[1], "train"))
    assert explicit["spec"]["containers"][0]["image"] == IMAGES[1]
    with pytest.raises(InjectionRefused):
        build_ungate_patch(gated, f"{REPO}:latest")


def test_ungate_patch_fails_on_a_changed_pod():
    gated, _ = mutate(make_pod(), make_env(status=BUILDING))
    patch = build_ungate_patch(gated, IMAGES[1])
    changed = copy.deepcopy(gated)
    changed["spec"]["schedulingGates"] = [{"name": "someone.else/gate"}]
    with pytest.raises(AssertionError, match="test failed"):
        apply_patch(changed, patch)


def test_a_status_only_version_is_never_paired_with_a_newer_spec():
    # Version 3 is in the status but its object has not reached the index, and the spec moved on: its
    # definition is unknown, so neither last-ready nor a pin may give its image with the new variables.
    status = {"phase": "Building", "image": IMAGES[3], "version": 3, "observedGeneration": 2}
    env = make_env({"environmentVariables": {"STAGE": "new"}}, status=status, generation=2)
    assert choose_version(env, None, "last-ready").image is None  # type: ignore[union-attr]
    assert isinstance(choose_version(env, "3"), InjectionRefusal)
    with_object = make_env({"environmentVariables": {"STAGE": "new"}}, status=status, generation=2,
                           versions={3: snapshot(3, OLD_DEFINITION)})
    pinned = choose_version(with_object, "3")
    assert isinstance(pinned, VersionChoice) and pinned.spec.environment_variables == {"STAGE": "old"}


def test_the_webhook_uses_only_versions_of_the_same_environment_object():
    from kenv.admission import lookup

    entry = {"spec": EnvironmentSpec(), "status": READY, "generation": None, "rebuild": None, "uid": "new-uid"}
    stale = Snapshot(number=1, image=IMAGES[2], definition=OLD_DEFINITION, uid="old-uid")
    mine = Snapshot(number=2, image=IMAGES[2], definition=OLD_DEFINITION, uid="new-uid")
    view = lookup("Environment", "team-a", "torch", {("team-a", "torch"): [entry]},
                  {("Environment", "team-a", "torch"): [stale, mine]})
    assert list(view.versions) == [2]


# --- image followers: containers sharing the target's image (KubeRay's wait-gcs-ready, its autoscaler) ----

RAY_START = ["ulimit -n 65536; ray start --block --address=rc-head-svc.team-a.svc.cluster.local:6379"]


def ray_pod(node_type: str, image: str | None = "placeholder:latest") -> dict:
    """A pod as KubeRay v1.5 builds it from a RayCluster's group template, before any webhook: its Ray container
    first, the head with the autoscaler sidecar and a worker with the wait-gcs-ready init container, both given
    the Ray container's image."""
    name = "ray-head" if node_type == "head" else "ray-worker"
    pod = make_pod(name=name, command=["/bin/bash", "-c", "--"], args=RAY_START,
                   volumeMounts=[{"name": "shared", "mountPath": "/shared"}])
    pod["metadata"]["labels"] = {"ray.io/cluster": "rc", "ray.io/node-type": node_type,
                                 "ray.io/group": "headgroup" if node_type == "head" else "workers",
                                 "kenv.dev/environment": "torch"}
    copied = {"image": image} if image is not None else {}
    if node_type == "head":
        pod["spec"]["containers"].append({"name": "autoscaler", "command": ["ray"], "args": ["kuberay-autoscaler"]}
                                         | copied)
    else:
        pod["spec"]["initContainers"] = [{"name": "wait-gcs-ready", "command": ["/bin/bash", "-c", "--"],
                                          "args": ["until ray health-check; do sleep 5; done"]} | copied]
    if image is None:
        del pod["spec"]["containers"][0]["image"]
    else:
        pod["spec"]["containers"][0]["image"] = image
    pod["spec"]["volumes"] = [{"name": "shared", "persistentVolumeClaim": {"claimName": "rwx"}}]
    return pod


def images(pod: dict) -> dict[str, str | None]:
    spec = pod["spec"]
    return {c["name"]: c.get("image") for c in spec["containers"] + spec.get("initContainers", [])}


def test_containers_sharing_the_targets_image_follow_it_and_only_in_their_image():
    worker = ray_pod("worker")
    worker["spec"]["initContainers"].append({"name": "fetch", "image": "busybox:1.36"})
    env = make_env({"environmentVariables": {"A": "1"}, "bootstrap": {"script": "true"}})
    patch = build_pod_mutation(worker, env, GATE).patch
    result = apply_patch(worker, patch)
    jsonpatch = pytest.importorskip("jsonpatch")
    assert result == jsonpatch.apply_patch(worker, patch)
    assert images(result) == {"ray-worker": IMAGES[3], "wait-gcs-ready": IMAGES[3], "fetch": "busybox:1.36"}
    assert result["spec"]["initContainers"][0] == worker["spec"]["initContainers"][0] | {"image": IMAGES[3]}
    head, _ = mutate(ray_pod("head"), env)
    assert images(head) == {"ray-head": IMAGES[3], "autoscaler": IMAGES[3]}
    assert "env" not in head["spec"]["containers"][1]  # no variables, no command wrapping
    assert head["spec"]["containers"][1]["command"] == ["ray"]


def test_followers_are_relative_to_the_named_target_and_ignore_ephemeral_containers():
    pod = make_pod({"kenv.dev/container": "worker"})
    pod["spec"]["containers"].append({"name": "worker", "image": "w", "command": ["run"]})
    pod["spec"]["initContainers"] = [{"name": "copy", "image": "w"}]
    pod["spec"]["ephemeralContainers"] = [{"name": "debug", "image": "w"}]
    result, _ = mutate(pod, make_env())
    assert images(result) == {"train": "placeholder:latest", "worker": IMAGES[3], "copy": IMAGES[3]}
    assert result["spec"]["ephemeralContainers"][0]["image"] == "w"


def test_without_any_image_followers_get_the_image_or_the_gated_placeholder():
    for pod in (ray_pod("worker", image=None), ray_pod("head", image="")):
        assert set(images(mutate(pod, make_env())[0]).values()) == {IMAGES[3]}
        gated, mutation = mutate(pod, make_env(status=BUILDING))
        assert mutation.gated and set(images(gated).values()) == {"kenv.invalid/awaiting-environment-image"}
        ready = apply_patch(gated, build_ungate_patch(gated, IMAGES[2]))
        assert set(images(ready).values()) == {IMAGES[2]}


def test_ungating_sets_the_followers_image_and_fails_if_one_changed():
    worker = ray_pod("worker")
    worker["spec"]["containers"].append({"name": "log-shipper", "image": "fluent-bit:3"})
    gated, _ = mutate(worker, make_env(status=BUILDING))
    assert images(gated) == images(worker)  # gated: the pod keeps its own image until un-gating
    patch = build_ungate_patch(gated, IMAGES[2], version=2)
    assert {"op": "test", "path": "/spec/initContainers/0/image", "value": "placeholder:latest"} in patch
    ready = apply_patch(gated, patch)
    assert images(ready) == {"ray-worker": IMAGES[2], "wait-gcs-ready": IMAGES[2], "log-shipper": "fluent-bit:3"}
    changed = copy.deepcopy(gated)
    changed["spec"]["initContainers"][0]["image"] = "someone/else:1"
    with pytest.raises(AssertionError, match="test failed"):
        apply_patch(changed, patch)


# --- framework rank signals for RankZero (KubeRay, JobSet) ----------------------------------------

JS, JOB = "jobset.sigs.k8s.io/", "batch.kubernetes.io/"


def jobset_pod(global_index: int, completion_index: int | None, attempt: int = 0) -> dict:
    """A pod of JobSet `js` as its child Job's controller creates it: JobSet's labels and annotations on the
    template, the Job controller's completion index (Indexed Jobs only) and job name."""
    pod = make_pod(env=[{"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
        "fieldPath": f"metadata.annotations['{JOB}job-completion-index']"}}}] if completion_index is not None else [])
    child = f"js-workers-{global_index}"
    jobset = {f"{JS}jobset-name": "js", f"{JS}replicatedjob-name": "workers", f"{JS}job-index": str(global_index),
              f"{JS}job-global-index": str(global_index), f"{JS}restart-attempt": str(attempt)}
    pod["metadata"]["labels"] = jobset | {f"{JOB}job-name": child, "job-name": child}
    pod["metadata"]["annotations"] = dict(jobset)
    if completion_index is not None:
        pod["metadata"]["annotations"][f"{JOB}job-completion-index"] = str(completion_index)
    return pod


def pytorch_pod(replica_type: str, index: int, master: bool = True) -> dict:
    """A PyTorchJob v1.9 pod: with a Master replica, the training operator sets RANK (master 0, workers index +
    1); job-role=master is on the master, or on worker 0 of a job without one (which gets no RANK)."""
    rank = 0 if replica_type == "master" else index + 1
    env = [{"name": "MASTER_PORT", "value": "23456"}, {"name": "RANK", "value": str(rank)}] if master else []
    pod = make_pod(env=env)
    pod["metadata"]["labels"] = {"training.kubeflow.org/job-name": "pt", "training.kubeflow.org/replica-type":
                                 replica_type, "training.kubeflow.org/replica-index": str(index)}
    if replica_type == "master" or (not master and index == 0):
        pod["metadata"]["labels"]["training.kubeflow.org/job-role"] = "master"
    return pod


def with_metadata(kind: str, values: dict) -> dict:
    pod = make_pod()
    pod["metadata"][kind] = values
    return pod


@pytest.mark.parametrize(("pod", "expected"), [
    (ray_pod("head"), ("label ray.io/node-type=head", True)),
    (ray_pod("worker"), ("label ray.io/node-type=worker", False)),
    (jobset_pod(0, 0), (f"label {JS}job-global-index=0, annotation {JOB}job-completion-index=0", True)),
    (jobset_pod(0, 1), (f"label {JS}job-global-index=0, annotation {JOB}job-completion-index=1", False)),
    (jobset_pod(2, 0), (f"label {JS}job-global-index=2, annotation {JOB}job-completion-index=0", False)),
    (jobset_pod(0, None), (f"label {JS}job-global-index=0", True)),  # a non-Indexed child Job: one pod
    (jobset_pod(1, None), (f"label {JS}job-global-index=1", False)),
    (with_metadata("annotations", {f"{JS}job-global-index": "0"}), (f"annotation {JS}job-global-index=0", True)),
    (with_metadata("labels", {f"{JS}job-global-index": "x"}), None),  # malformed: the rank variables decide
    (pytorch_pod("master", 0), ("label training.kubeflow.org/job-role=master", True)),
    (pytorch_pod("worker", 0), ("label training.kubeflow.org/replica-type=worker without "
                                "training.kubeflow.org/job-role", False)),
    (pytorch_pod("worker", 0, master=False), ("label training.kubeflow.org/job-role=master", True)),  # no RANK
    (pytorch_pod("worker", 1, master=False), ("label training.kubeflow.org/replica-type=worker without "
                                              "training.kubeflow.org/job-role", False)),
    (make_pod(), None),
])
def test_framework_rank_zero(pod, expected):
    assert framework_rank_zero(pod) == expected


RANK_ZERO = {"bootstrap": {"script": "true", "mode": "RankZero", "markerDir": "/shared"}}


def injected_env(pod: dict, spec: dict = RANK_ZERO) -> dict[str, dict]:
    """The target's variables once `pod`, given the shared volume RankZero needs, is injected."""
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "shared", "mountPath": "/shared"}]
    return env_of(mutate(pod, make_env(spec))[0]["spec"]["containers"][0])


def run_label(variables: dict[str, dict]) -> str:
    return variables["KENV_JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]


def test_rank_zero_mode_injects_the_signal_and_names_the_run_by_its_framework():
    worker = injected_env(ray_pod("worker"))
    assert worker["KENV_RANK_ZERO"]["value"] == "false"
    assert worker["KENV_RANK_SOURCE"]["value"] == "label ray.io/node-type=worker"
    assert run_label(worker) == "metadata.labels['ray.io/cluster']"
    jobset_rank0 = injected_env(jobset_pod(0, 0))
    assert jobset_rank0["KENV_RANK_ZERO"]["value"] == "true"
    assert run_label(jobset_rank0) == f"metadata.labels['{JS}jobset-name']"  # not the child Job's name
    master_env = injected_env(pytorch_pod("master", 0))
    assert master_env["KENV_RANK_ZERO"]["value"] == "true" and master_env["RANK"]["value"] == "0"  # they agree
    masterless = injected_env(pytorch_pod("worker", 0, master=False))  # no RANK: only the label says rank 0
    assert masterless["KENV_RANK_ZERO"]["value"] == "true" and "RANK" not in masterless
    assert run_label(master_env) == "metadata.labels['training.kubeflow.org/job-name']"
    all_mode = injected_env(ray_pod("head"), {"bootstrap": {"script": "true"}})
    assert "KENV_RANK_ZERO" not in all_mode and "KENV_JOB_NAME" not in all_mode


def test_a_containers_own_kenv_rank_zero_wins_without_kenvs_source():
    pod = ray_pod("worker")
    pod["spec"]["containers"][0]["env"] = [{"name": "KENV_RANK_ZERO", "value": "true"}]
    variables = injected_env(pod)
    assert variables["KENV_RANK_ZERO"]["value"] == "true" and "KENV_RANK_SOURCE" not in variables


def framework_bootstrapped(tmp_path: Path, pod: dict, script: str = 'touch "$OUT/ran"', **bootstrap: Any) -> dict:
    """`pod` injected with a RankZero bootstrap whose marker dir is tmp_path, ready for run_container."""
    container = pod["spec"]["containers"][0]
    container.update(command=PRINT_ARGS[:2], args=PRINT_ARGS[2:] + ARGS,
                     volumeMounts=[{"name": "shared", "mountPath": str(tmp_path)}],
                     terminationMessagePath=str(tmp_path / "termination-log"))
    spec = {"bootstrap": {"script": script, "mode": "RankZero", "markerDir": str(tmp_path), **bootstrap},
            "environmentVariables": {"OUT": str(tmp_path)}}
    return mutate(pod, make_env(spec))[0]


def test_jobset_has_one_rank_zero_and_one_marker_across_its_child_jobs(tmp_path):
    other_job = framework_bootstrapped(tmp_path, jobset_pod(1, 0), timeoutSeconds=1)
    waiting = run_container(other_job, {"JOB_COMPLETION_INDEX": "0"})  # index 0 of the second child Job
    assert waiting.returncode == 1 and not (tmp_path / "ran").exists()
    assert (f"kenv: rank other than 0 (from label {JS}job-global-index=1, annotation {JOB}job-completion-index=0) "
            f"waits for rank 0's bootstrap marker {tmp_path}/kenv-bootstrap-js-attempt-0.done") in waiting.stderr
    done = run_container(framework_bootstrapped(tmp_path, jobset_pod(0, 0)), {"JOB_COMPLETION_INDEX": "0"})
    assert done.returncode == 0, done.stderr
    assert (f"kenv: rank 0 (from label {JS}job-global-index=0, annotation {JOB}job-completion-index=0) runs the "
            "bootstrap script") in done.stderr
    assert (tmp_path / "ran").exists() and ran_command(done)
    assert (tmp_path / "kenv-bootstrap-js-attempt-0.done").exists()
    (tmp_path / "ran").unlink()
    follows = run_container(other_job, {"JOB_COMPLETION_INDEX": "0"})
    assert follows.returncode == 0 and ran_command(follows) and not (tmp_path / "ran").exists()
    # after a JobSet restart, attempt 0's marker does not count: the new attempt's replicas wait for its rank 0
    restarted = run_container(framework_bootstrapped(tmp_path, jobset_pod(1, 0, attempt=1), timeoutSeconds=1),
                              {"JOB_COMPLETION_INDEX": "0"})
    assert restarted.returncode == 1 and f"{tmp_path}/kenv-bootstrap-js-attempt-1.done" in restarted.stderr


def test_ray_head_is_rank_zero_and_precedence(tmp_path):
    worker = framework_bootstrapped(tmp_path, ray_pod("worker"), timeoutSeconds=1)
    waiting = run_container(worker, {"RANK": "0", "JOB_COMPLETION_INDEX": "0"})  # the signal beats both
    assert waiting.returncode == 1 and "rank other than 0 (from label ray.io/node-type=worker)" in waiting.stderr
    assert "kenv-bootstrap-rc.done" in waiting.stderr
    head = run_container(framework_bootstrapped(tmp_path, ray_pod("head")), {"RANK": "3"})
    assert head.returncode == 0 and (tmp_path / "ran").exists() and ran_command(head)
    assert "kenv: rank 0 (from label ray.io/node-type=head) runs the bootstrap script" in head.stderr
    (tmp_path / "ran").unlink()
    (tmp_path / "kenv-bootstrap-rc.done").unlink()
    explicit = framework_bootstrapped(tmp_path, ray_pod("worker"), rankVariable="RANK")
    done = run_container(explicit, {"RANK": "0"})  # bootstrap.rankVariable beats the signal
    assert done.returncode == 0 and (tmp_path / "ran").exists(), done.stderr
    assert "kenv: rank 0 (from RANK) runs the bootstrap script" in done.stderr
    fallback = run_container(explicit, {"RANK": ""})  # empty: the signal decides
    assert fallback.returncode == 0 and "rank other than 0" in fallback.stderr and ran_command(fallback)


def test_invalid_kenv_rank_zero_fails_clearly(tmp_path):
    pod = ray_pod("head")
    pod["spec"]["containers"][0]["env"] = [{"name": "KENV_RANK_ZERO", "value": "yes"}]
    done = run_container(framework_bootstrapped(tmp_path, pod), {})
    message = "kenv: KENV_RANK_ZERO 'yes' (from KENV_RANK_ZERO) is neither true nor false"
    assert done.returncode == 1 and message in done.stderr.splitlines() and not ran_command(done)
    assert termination_message(tmp_path) == message + "\n"
    assert not (tmp_path / "ran").exists()


# --- Kueue's pod integration --------------------------------------------------------------------------------

def queued(pod: dict, owner: bool = False) -> dict:
    pod["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team"}
    if owner:
        pod["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "u",
                                               "controller": True}]
    return pod


def test_a_pod_kueue_queues_itself_is_refused_while_building_not_gated():
    # Kueue compares a queued pod's containers with its Workload: the image set on un-gating would make it delete
    # the pod. So such a pod is refused, with what to do instead.
    with pytest.raises(InjectionRefused) as refused:
        build_pod_mutation(queued(make_pod()), make_env(status=BUILDING), GATE)
    assert "Kueue's pod integration (kueue.x-k8s.io/queue-name, or a LocalQueue named default)" in refused.value.message
    assert "`kubectl wait env/torch -n team-a --for=condition=Built`" in refused.value.message


def test_kueue_queued_pods_are_injected_when_ready_and_job_pods_may_wait_gated():
    ready, _ = mutate(queued(make_pod()), make_env())
    assert ready["spec"]["containers"][0]["image"] == IMAGES[3] and "schedulingGates" not in ready["spec"]
    job_pod, mutation = mutate(queued(make_pod(), owner=True), make_env(status=BUILDING))
    assert mutation.gated and [g["name"] for g in job_pod["spec"]["schedulingGates"]] == ["kenv.dev/image"]


def test_a_pod_owned_but_not_controlled_is_still_kueues_own():
    pod = queued(make_pod())
    pod["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "u"}]
    with pytest.raises(InjectionRefused):
        build_pod_mutation(pod, make_env(status=BUILDING), GATE)


def test_re_invoked_after_kueue_queued_a_gated_pod_refuses_it():
    # kenv runs first and gates the pod; Kueue's webhook then queues it (a LocalQueue named `default`: no label
    # when kenv saw it) and adds its gate; the API server calls kenv again (reinvocationPolicy IfNeeded).
    gated, mutation = mutate(make_pod(), make_env(status=BUILDING))
    assert mutation.gated
    gated["metadata"].setdefault("labels", {})["kueue.x-k8s.io/queue-name"] = "default"
    gated["spec"]["schedulingGates"].append({"name": "kueue.x-k8s.io/admission"})
    with pytest.raises(InjectionRefused) as refused:
        build_pod_mutation(gated, make_env(status=BUILDING), GATE)
    assert "Kueue's pod integration" in refused.value.message
    # re-invoked for any other change, or once the pod has its image: nothing to do
    other = copy.deepcopy(gated)
    other["spec"]["schedulingGates"] = [{"name": "kenv.dev/image"}, {"name": "someone.else/gate"}]
    assert build_pod_mutation(other, make_env(status=BUILDING), GATE).patch == []
    ready, _ = mutate(queued(make_pod()), make_env())
    ready["spec"]["schedulingGates"] = [{"name": "kueue.x-k8s.io/admission"}]
    assert build_pod_mutation(ready, make_env(), GATE).patch == []
