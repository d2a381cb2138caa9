"""The CRDs in crds/ are generated from the pydantic models and must be structural schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kenv.crd import CRD_KINDS, KINDS, build_crd, crd_file_name, render_crd_yaml

ROOT = Path(__file__).resolve().parents[2]


def walk(node: Any, path: str = ""):
    """Yield (path, schema node) for every schema node below `node`."""
    if not isinstance(node, dict):
        return
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def schema(kind: str) -> dict[str, Any]:
    return build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("kind", CRD_KINDS)
def test_checked_in_crd_matches_models(kind):
    path = ROOT / "crds" / crd_file_name(kind)
    assert path.exists(), f"{path} missing: run `kenv crd` to generate it"
    assert path.read_text() == render_crd_yaml(kind), (
        f"{path.name} drifted from operator/kenv/models.py: regenerate it with `kenv crd`"
    )


@pytest.mark.parametrize("kind", CRD_KINDS)
def test_rendered_yaml_round_trips(kind):
    assert yaml.safe_load(render_crd_yaml(kind)) == build_crd(kind)


@pytest.mark.parametrize("kind", CRD_KINDS)
def test_schema_is_structural(kind):
    forbidden = {"$ref", "anyOf", "allOf", "oneOf", "title", "$defs", "definitions"}
    for path, node in walk(schema(kind)):
        assert not forbidden & node.keys(), f"{path}: {forbidden & node.keys()}"
        assert (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ), f"{path or '<root>'} has no type"
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, f"{path}: int-or-string nodes must not also declare a type"


@pytest.mark.parametrize("kind", CRD_KINDS)
def test_every_spec_property_is_described(kind):
    spec = schema(kind)["properties"]["spec"]
    assert spec.get("description")
    for parent_path, parent in walk(spec, "spec"):
        for name, sub in (parent.get("properties") or {}).items():
            assert sub.get("description"), (
                f"{parent_path}.{name} has no description (kubectl explain shows it)"
            )


def test_no_schema_key_anywhere_in_the_yaml_text():
    text = render_crd_yaml("Environment")
    for key in ("$ref", "anyOf", "title:"):
        assert key not in text


def test_known_fields_have_the_expected_shapes():
    spec = schema("Environment")["properties"]["spec"]["properties"]
    assert spec["docker"]["properties"]["shmSize"] == {
        "x-kubernetes-int-or-string": True,
        "description": spec["docker"]["properties"]["shmSize"]["description"],
    }
    assert spec["environmentVariables"]["type"] == "object"
    assert spec["environmentVariables"]["additionalProperties"]["type"] == "string"
    assert spec["pip"]["properties"]["packages"]["items"]["type"] == "string"
    assert spec["build"]["properties"]["builder"]["enum"] == ["kaniko", "buildah", "buildkit"]
    assert spec["build"]["properties"]["builder"]["type"] == "string"
    rules = [v["rule"] for v in schema("Environment")["properties"]["spec"]["x-kubernetes-validations"]]
    assert any("dockerfileFrom" in rule for rule in rules)
    assert any("userManagedDependencies" in rule for rule in rules)


@pytest.mark.parametrize(
    ("kind", "short", "scope"),
    [("Environment", "env", "Namespaced"), ("ClusterEnvironment", "cenv", "Cluster")],
)
def test_names_scope_columns_and_status(kind, short, scope):
    crd = build_crd(kind)
    assert crd["spec"]["names"]["shortNames"] == [short]
    assert crd["spec"]["scope"] == scope
    assert crd["metadata"]["name"] == f"{KINDS[kind]['plural']}.kenv.dev"
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Version", "Image", "Age"} <= columns.keys()
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Age"]["type"] == "date"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert "required" not in status
    assert status["properties"]["phase"]["enum"] == ["Pending", "Queued", "Building", "Ready", "Failed"]
