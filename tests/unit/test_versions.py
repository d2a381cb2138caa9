"""kenv.versions: what makes a new version, numbers, names, tags, changes and retention (pure)."""

from __future__ import annotations

import re

import pytest

from kenv.crd import build_crd
from kenv.models import EnvironmentSpec
from kenv.refs import EnvironmentRef
from kenv.versionmodels import EnvironmentVersionSpec
from kenv.versions import (
    Snapshot,
    describe_changes,
    diff,
    in_use,
    needs_new_version,
    next_number,
    object_name,
    prunable,
    runtime_hash,
    version_tag,
)

IMAGE = "r.local/kenv/envs@sha256:" + "a" * 64
OTHER = "r.local/kenv/envs@sha256:" + "b" * 64
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
ENV = EnvironmentRef("Environment", "team-a", "torch")
CLUSTER = EnvironmentRef("ClusterEnvironment", None, "torch")


def spec(**fields: object) -> EnvironmentSpec:
    return EnvironmentSpec.model_validate(fields)


@pytest.mark.parametrize("change", [
    {"environmentVariables": {"A": "2"}},
    {"secretEnv": [{"name": "T", "secretKeyRef": {"name": "s", "key": "k"}}]},
    {"secretEnvFrom": [{"secretName": "s"}]},
    {"bootstrap": {"script": "echo hi"}},
    {"docker": {"shmSize": "2Gi"}},
    {"python": {"interpreterPath": "/usr/bin/python3.12"}},
])
def test_runtime_hash_moves_with_everything_a_pod_receives(change):
    base = {"environmentVariables": {"A": "1"}, "pip": {"packages": ["six"]}}
    assert runtime_hash(spec(**base)) != runtime_hash(spec(**(base | change)))


def test_runtime_hash_ignores_what_only_the_image_holds():
    base = runtime_hash(spec(pip={"packages": ["six"]}))
    assert runtime_hash(spec(pip={"packages": ["six", "numpy"]})) == base
    assert runtime_hash(spec(pip={"packages": ["six"]}, build={"builder": "buildah"})) == base


def test_new_version_when_image_runtime_or_a_rebuild_changes():
    status = {"version": 2, "image": IMAGE, "runtimeHash": "r1"}
    assert not needs_new_version(status, IMAGE, "r1", rebuilt=False)
    assert needs_new_version(status, OTHER, "r1", rebuilt=False)
    assert needs_new_version(status, IMAGE, "r2", rebuilt=False)
    assert needs_new_version(status, IMAGE, "r1", rebuilt=True)  # a rebuild is a version even if identical
    assert needs_new_version({}, IMAGE, "r1", rebuilt=False)


def test_numbers_only_grow():
    assert next_number([]) == 1
    assert next_number([1, None, 3, 2]) == 4


def test_names_and_tags_are_valid_and_distinct():
    assert object_name(ENV, 3) == "torch-v3" and object_name(CLUSTER, 3) == "cenv.torch-v3"
    assert version_tag(ENV, 3) == "team-a.torch-v3" and version_tag(CLUSTER, 3) == "_cluster.torch-v3"
    long = EnvironmentRef("Environment", "n" * 63, "e" * 253)
    assert len(object_name(long, 12345)) <= 253 and object_name(long, 1) != object_name(long, 2)
    assert TAG.match(version_tag(long, 12345)) and version_tag(long, 1) != version_tag(long, 2)
    assert TAG.match(version_tag(CLUSTER, 1))
    assert version_tag(EnvironmentRef("Environment", "cluster", "torch"), 1) != version_tag(CLUSTER, 1)
    other = EnvironmentRef("Environment", "n" * 63, "e" * 252 + "f")
    assert version_tag(long, 1) != version_tag(other, 1)


def test_changes_name_fields_and_the_image():
    previous = Snapshot(1, IMAGE, definition={"environmentVariables": {"A": "1"}, "pip": {"packages": ["six"]}})
    definition = {"environmentVariables": {"A": "2", "B": "x"}, "pip": {"packages": ["six", "numpy"]}}
    lines = describe_changes(previous, definition, OTHER, "BuildSucceeded")
    assert lines == ['changed environmentVariables.A: 1 -> 2', 'added environmentVariables.B: x',
                     'changed pip.packages: ["six"] -> ["six", "numpy"]',
                     "new image (BuildSucceeded)"]
    assert describe_changes(None, definition, IMAGE, "ImageFound") == ["first version"]
    assert describe_changes(previous, previous.definition or {}, IMAGE, "Rebuilt") == ["same definition (Rebuilt)"]
    migrated = Snapshot(1, IMAGE)
    assert "was migrated" in describe_changes(migrated, definition, IMAGE, "DefinitionChanged")[0]


def pod(number: str, environment: str = "team-a/torch", phase: str = "Running") -> dict:
    return {"metadata": {"annotations": {"kenv.dev/injected-environment": environment,
                                         "kenv.dev/injected-version": number}},
            "status": {"phase": phase}}


def test_in_use_counts_live_pods_of_this_environment_only():
    pods = [pod("1"), pod("2", phase="Succeeded"), pod("3", environment="team-a/other"), pod("4", phase="Pending"),
            {"metadata": {"annotations": {"kenv.dev/awaiting-image": "true"}}}]
    assert in_use(pods, ENV) == {1, 4}


def test_prune_keeps_the_newest_the_current_and_those_in_use():
    assert prunable([1, 2, 3, 4, 5], current=5, limit=2, used={1}) == [2, 3]
    assert prunable([1, 2, 3], current=3, limit=20, used=set()) == []
    assert prunable([1, 2, 3], current=1, limit=1, used=set()) == [2]  # current kept even if not newest


def test_diff_shows_image_and_definition_changes():
    a = Snapshot(1, IMAGE, definition={"environmentVariables": {"A": "1"}})
    b = Snapshot(2, OTHER, definition={"environmentVariables": {"A": "2"}})
    text = diff(a, b)
    assert text.startswith("--- version 1\n+++ version 2\n")
    assert "-    A: '1'\n+    A: '2'\n" in text and f"-image: {IMAGE}\n+image: {OTHER}\n" in text
    assert diff(a, a) == ""


def test_version_crd_is_immutable_and_embeds_the_environment_schema():
    crd = build_crd("EnvironmentVersion")
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert schema["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    assert "environmentVariables" in schema["properties"]["definition"]["properties"]
    assert [c["name"] for c in version["additionalPrinterColumns"][:5]] == [
        "Environment", "Version", "Image", "Hash", "Age"]
    assert EnvironmentVersionSpec.model_validate({
        "environment": {"kind": "Environment", "name": "e", "namespace": "n", "uid": "u"}, "version": 1,
        "image": IMAGE, "digest": "sha256:" + "a" * 64, "hash": "h", "reason": "ImageFound"}).version == 1


def test_pods_of_an_environment_are_found_by_its_label_and_namespaces():
    assert (ENV.pod_label, ENV.pod_namespaces(["x"])) == ("kenv.dev/environment", ["team-a"])
    assert (CLUSTER.pod_label, CLUSTER.pod_namespaces(["x", "y"])) == ("kenv.dev/cluster-environment", ["x", "y"])
    assert CLUSTER.pod_namespaces([]) == [None]  # watching every namespace: list them all
