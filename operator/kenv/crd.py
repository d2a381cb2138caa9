"""Generate the CustomResourceDefinitions from the pydantic models (pure; `kenv crd` prints them).

pydantic emits JSON Schema with $refs, anyOf-null for optionals and titles; Kubernetes wants a structural schema:
everything inlined, one type per node, no titles. `structural()` does that translation.
"""

from __future__ import annotations

from typing import Any

import yaml

from kenv import versionmodels
from kenv.models import GROUP, VERSION, EnvironmentSpec
from kenv.statusmodels import EnvironmentStatus

KINDS = {
    "Environment": {"plural": "environments", "short": "env", "scope": "Namespaced"},
    "ClusterEnvironment": {"plural": "clusterenvironments", "short": "cenv", "scope": "Cluster"},
}
CRD_KINDS = [*KINDS, versionmodels.KIND]  # every CRD kenv installs; KINDS are the ones users write


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline $refs and turn pydantic's JSON Schema into a Kubernetes structural schema node."""
    if "$ref" in schema:
        target = defs[schema["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        if len(options) == 1:
            return structural({**options[0], **rest}, defs)
        if {o.get("type") for o in options} == {"integer", "string"}:
            return structural({**rest, "x-kubernetes-int-or-string": True}, defs)
        raise ValueError(f"cannot express anyOf {options} structurally")
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("title", "$defs"):
            continue
        if key == "default" and value is None:
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = structural(value, defs)
        elif key == "additionalProperties" and value is False:
            continue  # structural schemas prune unknown fields already
        else:
            out[key] = value
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    elif "type" not in out and ("properties" in out or "additionalProperties" in out):
        out["type"] = "object"
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def model_schema(model: type, mode: str) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode=mode)  # type: ignore[attr-defined]
    return structural(raw, raw.get("$defs", {}))


def build_crd(kind: str) -> dict[str, Any]:
    if kind == versionmodels.KIND:
        return build_version_crd()
    names = KINDS[kind]
    spec_schema = model_schema(EnvironmentSpec, "validation")
    status_schema = model_schema(EnvironmentStatus, "serialization")
    status_schema.pop("required", None)
    for field in status_schema["properties"].values():
        field.pop("default", None)
    scope_note = (
        "namespaced: usable by pods in its own namespace"
        if names["scope"] == "Namespaced"
        else "cluster-scoped and curated: usable by pods in every namespace; Secrets it names are read from "
        "the pod's namespace"
    )
    return custom_resource_definition(kind, names["plural"], names["scope"], [names["short"]], {
        "subresources": {"status": {}},
        "additionalPrinterColumns": [
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Version", "type": "integer", "jsonPath": ".status.version"},
            {"name": "Image", "type": "string", "jsonPath": ".status.digest",
             "description": "Digest of the current image"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            {"name": "Ready", "type": "string", "priority": 1,
             "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
            {"name": "Reason", "type": "string", "priority": 1,
             "jsonPath": ".status.conditions[?(@.type==\"Ready\")].reason"},
            {"name": "Full-Image", "type": "string", "priority": 1, "jsonPath": ".status.image"},
        ],
        "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "description": f"{kind}: an Azure ML-style training environment, {scope_note}. "
                "The operator builds its image and the admission webhook injects it into pods "
                f"labelled kenv.dev/{'environment' if kind == 'Environment' else 'cluster-environment'}.",
                "properties": {
                    "apiVersion": {"type": "string", "description": "API version: kenv.dev/v1alpha1."},
                    "kind": {"type": "string", "description": f"Kind: {kind}."},
                    "metadata": {"type": "object"},
                    "spec": {**spec_schema, "description": spec_schema.get("description", "")},
                    "status": {**status_schema, "description": "Observed state, written by the operator."},
                },
                "required": ["spec"],
            }
        },
    })


def custom_resource_definition(kind: str, plural: str, scope: str, short_names: list[str],
                               version: dict[str, Any]) -> dict[str, Any]:
    """The CRD skeleton every kenv kind shares; `version` holds the schema, columns and subresources."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": short_names, "categories": ["kenv"]},
            "versions": [{"name": VERSION, "served": True, "storage": True, **version}],
        },
    }


def build_version_crd() -> dict[str, Any]:
    """EnvironmentVersion: read-only snapshots the operator writes; the API server refuses edits of spec."""
    spec_schema = model_schema(versionmodels.EnvironmentVersionSpec, "validation")
    spec_schema["x-kubernetes-validations"] = [{
        "rule": "self == oldSelf",
        "message": "an EnvironmentVersion is immutable; edit its Environment to make a new version"}]
    return custom_resource_definition(
        versionmodels.KIND, versionmodels.PLURAL, "Namespaced", ["envversion", "envv"], {
        "additionalPrinterColumns": [
            {"name": "Environment", "type": "string", "jsonPath": ".spec.environment.name"},
            {"name": "Version", "type": "integer", "jsonPath": ".spec.version"},
            {"name": "Image", "type": "string", "jsonPath": ".spec.digest"},
            {"name": "Hash", "type": "string", "jsonPath": ".spec.hash"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            {"name": "Reason", "type": "string", "priority": 1, "jsonPath": ".spec.reason"},
            {"name": "Full-Image", "type": "string", "priority": 1, "jsonPath": ".spec.image"},
        ],
        "schema": {"openAPIV3Schema": {
            "type": "object",
            "description": "EnvironmentVersion: an immutable snapshot of what pods of one version of an "
            "Environment (or ClusterEnvironment) receive: image digest, variables, secret references, "
            "bootstrap and shm. Written by the operator, owned by the environment; pods pin one with "
            "the annotation kenv.dev/version. A ClusterEnvironment's versions live in the operator's "
            "build namespace.",
            "properties": {
                "apiVersion": {"type": "string", "description": "API version: kenv.dev/v1alpha1."},
                "kind": {"type": "string", "description": f"Kind: {versionmodels.KIND}."},
                "metadata": {"type": "object"},
                "spec": {**spec_schema, "description": "The snapshot (immutable)."},
            },
            "required": ["spec"],
        }},
    })


def crd_file_name(kind: str) -> str:
    plural = versionmodels.PLURAL if kind == versionmodels.KIND else KINDS[kind]["plural"]
    return f"{GROUP}_{plural}.yaml"


def render_crd_yaml(kind: str) -> str:
    header = "# Generated by `kenv crd` from operator/kenv/models.py. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(kind), sort_keys=False, width=120)
