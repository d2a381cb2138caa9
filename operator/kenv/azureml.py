"""Bring Azure ML environments into kenv: `kenv import-azureml` (kenv.azureml_export is the way back).

Inputs: an SDK v1 folder (`Environment.save_to_directory`: azureml_environment.json, conda_dependencies.yml,
BaseDockerfile), a CLI/SDK v2 environment YAML (image / conda_file / build), or a bare conda env.yml or
requirements.txt (`from_conda_specification` / `from_pip_requirements`). Everything is pure except the
reads and writes at the edge. Whatever cannot be carried over is returned as a warning, never dropped
silently. A registry password is left out by default (the output is what people save and commit): the
Environment names a Secret and a warning gives the `kubectl create secret` command, with a placeholder for the
password. Only when asked (include_secret) is the password emitted, in a separate Secret manifest.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from kenv.azureml_common import (
    NAME_ANNOTATION,
    TAGS_ANNOTATION,
    V1_CONDA,
    V1_DEFINITION,
    V1_DOCKERFILE,
    VERSION_ANNOTATION,
    _show,
    _validate,
    shm_to_quantity,
)
from kenv.errors import SpecError
from kenv.models import API_VERSION, registry_host

MAX_FILE_BYTES = 1024 * 1024
PLACEHOLDER_VARS = {"EXAMPLE_ENV_VAR": "EXAMPLE_VALUE"}  # what every SDK v1 Environment() starts with
_KIND_NAMES = {bool: "a boolean", str: "a string", dict: "a mapping", list: "a list", int: "a number"}
# v1 fields mapped, or meaningless on Kubernetes (docker.enabled: pods always run in containers; assetId:
# workspace bookkeeping); anything else that is set to a non-default value is reported as not imported.
_V1_MAPPED = {
    "name", "version", "environmentVariables", "assetId", "python.userManagedDependencies",
    "python.interpreterPath", "python.condaDependencies", "docker.baseImage", "docker.baseDockerfile",
    "docker.shmSize", "docker.enabled", "spark.precachePackages", "docker.baseImageRegistry.address",
    "docker.baseImageRegistry.username", "docker.baseImageRegistry.password",
}
_V1_DEFAULTS: dict[str, Any] = {
    "docker.sharedVolumes": True, "docker.gpuSupport": False,
    "docker.platform": {"os": "Linux", "architecture": "amd64"},
}
_V2_KNOWN = {"$schema", "name", "version", "description", "tags", "image", "conda_file", "build", "os_type"}


def _read(path: Path, label: str) -> str:
    if not path.is_file():
        raise SpecError(f"{label}: file not found ({path})")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise SpecError(f"{label}: {size} bytes is larger than the 1 MiB limit")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(f"{label}: not UTF-8 text (byte {error.start})") from None


def _load_yaml(text: str, label: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise SpecError(f"{label}: not valid YAML{where}") from None


def _field(doc: dict[str, Any], dotted: str, kind: type | tuple[type, ...], label: str) -> Any:
    """doc[a][b]... or None; a wrong type raises a one-line SpecError naming file and field."""
    value: Any = doc
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if value is None or (isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))):
        return value
    expected = " or ".join(_KIND_NAMES[k] for k in kinds)
    raise SpecError(f"{label}: {dotted} must be {expected}, got {_show(value)}")


def k8s_name(name: str) -> str:
    """An Azure ML name as a DNS-1123 label (it is also a label value, hence 63 characters)."""
    cleaned = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]+", "-", name.lower()))
    return cleaned.strip("-")[:63].strip("-")


def _conda(text: str, label: str) -> str | None:
    """Check a conda environment file; return the python version it pins, if any."""
    doc = _load_yaml(text, label)
    if not isinstance(doc, dict):
        raise SpecError(f"{label}: must be a conda environment mapping, got {_show(doc)}")
    _field(doc, "channels", list, label)
    deps = _field(doc, "dependencies", list, label) or []
    for dep in deps:
        match = re.fullmatch(r"python\s*(?:==?|\s)\s*(3(?:\.\d+){0,2})(?:\.\*)?", str(dep).strip())
        if isinstance(dep, str) and match:
            return match.group(1)
    return None


def _unsupported(doc: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of v1 values kenv does not map (unset, empty and default values are not reported)."""
    found = []
    for key, value in doc.items():
        path = prefix + key
        if path in _V1_MAPPED or value in (None, "", [], {}) or _V1_DEFAULTS.get(path, ...) == value:
            continue
        if isinstance(value, dict) and path not in _V1_DEFAULTS:
            found += _unsupported(value, path + ".")
        else:
            found.append(path)
    return found


def _registry(doc: dict[str, Any], base_image: str | None, label: str) -> dict[str, str] | None:
    keys = ("address", "username", "password")
    fields = {k: _field(doc, f"docker.baseImageRegistry.{k}", str, label) for k in keys}
    if not any(fields.values()):
        return None
    address = fields["address"] or registry_host(base_image or "")
    if not address:
        raise SpecError(f"{label}: docker.baseImageRegistry.address is required with username/password")
    fields["address"] = re.sub(r"^https?://", "", address).rstrip("/")
    return {k: v for k, v in fields.items() if v}


def _import_v1(folder: Path, warnings: list[str]) -> dict[str, Any]:
    label = V1_DEFINITION
    text = _read(folder / V1_DEFINITION, label)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as error:
        raise SpecError(f"{label}: not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{label}: must be a JSON object, got {_show(doc)}")
    _field(doc, "python", dict, label)
    docker = _field(doc, "docker", dict, label) or {}
    variables = _field(doc, "environmentVariables", dict, label) or {}
    for key, value in variables.items():
        if not isinstance(value, str):
            raise SpecError(f"{label}: environmentVariables.{key} must be a string, got {_show(value)}")
    if variables == PLACEHOLDER_VARS:
        warnings.append(f"{label}: dropped the SDK's placeholder variable EXAMPLE_ENV_VAR=EXAMPLE_VALUE")
        variables = {}
    spec: dict[str, Any] = {"environmentVariables": variables} if variables else {}
    py: dict[str, Any] = {}
    user_managed = _field(doc, "python.userManagedDependencies", bool, label)
    interpreter = _field(doc, "python.interpreterPath", str, label)
    if user_managed:
        py["userManagedDependencies"] = True
    if interpreter and interpreter != "python":
        if interpreter.startswith("/"):
            py["interpreterPath"] = interpreter
        else:
            warnings.append(f"{label}: python.interpreterPath {interpreter!r} is not absolute; not imported")
    conda_label, conda_text = V1_CONDA, None
    if (folder / V1_CONDA).exists():
        conda_text = _read(folder / V1_CONDA, V1_CONDA)
    elif inline := _field(doc, "python.condaDependencies", dict, label):
        conda_label = f"{label}: python.condaDependencies"
        conda_text = yaml.safe_dump(inline, sort_keys=False)
    if conda_text and user_managed:
        warnings.append(f"{conda_label}: ignored as python.userManagedDependencies is true (as in Azure ML)")
    elif conda_text:
        spec["conda"] = {"environmentYaml": conda_text}
        if version := _conda(conda_text, conda_label):
            py["version"] = version
    if py:
        spec["python"] = py
    base_image = _field(doc, "docker.baseImage", str, label)
    if (folder / V1_DOCKERFILE).exists():
        dockerfile: str | None = _read(folder / V1_DOCKERFILE, V1_DOCKERFILE)
    else:
        dockerfile = _field(doc, "docker.baseDockerfile", str, label)
    section: dict[str, Any] = {}
    if dockerfile:
        section["dockerfile"] = dockerfile
        if base_image:
            warnings.append(f"{label}: docker.baseImage {base_image!r} ignored: the base Dockerfile wins")
    elif base_image:
        # Kept as written, even `team/img:1.2` or `/team/img:1.2` relative to docker.baseImageRegistry.address:
        # kenv's API joins them the way Azure ML does (DockerSection.resolved_base_image), so the build pulls
        # from the address either way, and the manifest reads like the Azure ML definition and exports back
        # to the same one.
        section["baseImage"] = base_image
    if docker.get("shmSize") is not None:
        section["shmSize"] = shm_to_quantity(docker["shmSize"], label)
    _field(doc, "docker.baseImageRegistry", dict, label)
    if section:
        spec["docker"] = section
    warnings += [f"{label}: {path} is not supported by kenv, not imported" for path in _unsupported(doc)]
    return {"name": _field(doc, "name", str, label), "version": _field(doc, "version", (str, int), label),
            "spec": spec, "registry": _registry(doc, base_image, label), "annotations": {}, "label": label}


def _import_v2(path: Path, doc: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    label, base = path.name, path.parent
    spec: dict[str, Any] = {}
    annotations = {}
    if description := _field(doc, "description", str, label):
        spec["description"] = description
    if tags := _field(doc, "tags", dict, label):
        annotations[TAGS_ANNOTATION] = json.dumps(tags, sort_keys=True, default=str)
    image, build = _field(doc, "image", str, label), _field(doc, "build", dict, label)
    conda_file = _field(doc, "conda_file", (str, dict), label)
    if build and (image or conda_file):
        raise SpecError(f"{label}: build cannot be combined with image or conda_file (as in Azure ML)")
    if not image and not build:
        raise SpecError(f"{label}: needs image or build")
    if str(_field(doc, "os_type", str, label) or "linux").lower() != "linux":
        raise SpecError(f"{label}: os_type {doc['os_type']!r} is not supported: kenv builds Linux images")
    if image:
        spec["docker"] = {"baseImage": image}
    if conda_file is not None:
        text = (yaml.safe_dump(conda_file, sort_keys=False) if isinstance(conda_file, dict)
                else _read(base / conda_file, conda_file))
        version = _conda(text, conda_file if isinstance(conda_file, str) else f"{label}: conda_file")
        spec["conda"] = {"environmentYaml": text}
        if version:
            spec["python"] = {"version": version}
    if build:
        context = _field(doc, "build.path", str, label)
        if not context:
            raise SpecError(f"{label}: build.path is required")
        if re.match(r"^([a-z][a-z0-9+.-]*://|git@)", context):
            raise SpecError(f"{label}: build.path {context!r} is remote; clone it and use the local folder")
        dockerfile_path = _field(doc, "build.dockerfile_path", str, label) or "Dockerfile"
        dockerfile = base / context / dockerfile_path
        spec["docker"] = {"dockerfile": _read(dockerfile, f"{context}/{dockerfile_path}")}
        others = sorted(p.relative_to(base / context).as_posix() for p in (base / context).rglob("*")
                        if p.is_file() and p != dockerfile)
        if others:
            warnings.append(f"{label}: build context files {', '.join(others[:5])} are not carried over: "
                            "kenv builds from the Dockerfile text alone, so COPY/ADD of them will fail")
        warnings += [f"{label}: build.{k} is not supported by kenv, not imported"
                     for k in build if k not in ("path", "dockerfile_path")]
    warnings += [f"{label}: {k} is not supported by kenv, not imported" for k in doc if k not in _V2_KNOWN]
    return {"name": _field(doc, "name", str, label), "version": _field(doc, "version", (str, int), label),
            "spec": spec, "registry": None, "annotations": annotations, "label": label}


def _looks_v2(doc: Any) -> bool:
    markers = ("image", "build", "conda_file")
    if not isinstance(doc, dict):
        return False
    return "environment.schema" in str(doc.get("$schema")) or any(k in doc for k in markers)


def _import_file(path: Path, warnings: list[str]) -> dict[str, Any]:
    label = path.name
    if path.name == V1_DEFINITION:
        return _import_v1(path.parent, warnings)
    text = _read(path, label)
    if path.suffix == ".txt":
        return {"name": None, "version": None, "spec": {"pip": {"requirements": text}}, "registry": None,
                "annotations": {}, "label": label}
    doc = _load_yaml(text, label)
    if _looks_v2(doc):
        return _import_v2(path, doc, warnings)
    if not isinstance(doc, dict) or "dependencies" not in doc:
        raise SpecError(f"{label}: neither an Azure ML v2 environment (image/build) nor a conda environment "
                        "(dependencies)")
    version = _conda(text, label)
    spec: dict[str, Any] = {"conda": {"environmentYaml": text}}
    if version:
        spec["python"] = {"version": version}
    return {"name": _field(doc, "name", str, label), "version": None, "spec": spec, "registry": None,
            "annotations": {}, "label": label}


def secret_command(secret: str, registry: dict[str, str]) -> str:
    """The kubectl command creating the registry Secret, with a placeholder where the password goes (never the
    password itself: this text lands in terminals and logs)."""
    username = shlex.quote(registry["username"]) if "username" in registry else "<username>"
    return (f"kubectl create secret docker-registry {secret} --docker-server={shlex.quote(registry['address'])} "
            f"--docker-username={username} --docker-password=<password>")


def import_azureml(path: str | Path, name: str | None = None,
                   include_secret: bool = False) -> tuple[list[dict], list[str]]:
    """Manifests ([Secret], Environment) for an Azure ML environment, and warnings about what did not map.
    The Secret holding a registry password is only emitted with include_secret; otherwise a warning gives the
    command that creates it."""
    source, warnings = Path(path), list[str]()
    if source.is_dir():
        if (source / V1_DEFINITION).is_file():
            imported = _import_v1(source, warnings)
        else:
            found = [f for f in sorted(source.glob("*.y*ml"))
                     if _looks_v2(_load_yaml(_read(f, f.name), f.name))]
            if len(found) != 1:
                raise SpecError(f"{source}: expected {V1_DEFINITION} or one Azure ML v2 environment YAML, "
                                f"found {len(found)}")
            imported = _import_file(found[0], warnings)
    elif source.exists():
        imported = _import_file(source, warnings)
    else:
        raise SpecError(f"{source}: no such file or directory")
    label, azure_name = imported["label"], name or imported["name"]
    if not azure_name:
        raise SpecError(f"{label}: no environment name in the file; pass one (--name)")
    metadata_name = k8s_name(azure_name)
    if not metadata_name:
        raise SpecError(f"{label}: name {azure_name!r} has no letters or digits for a Kubernetes name")
    annotations = {NAME_ANNOTATION: azure_name, **imported["annotations"]}
    if imported["version"] is not None:
        annotations[VERSION_ANNOTATION] = str(imported["version"])
    spec, manifests = imported["spec"], []
    if registry := imported["registry"]:
        secret = f"{metadata_name}-registry"
        docker = spec.setdefault("docker", {})
        docker["baseImageRegistry"] = {"address": registry["address"], "secretName": secret}
        if "password" in registry and include_secret:
            credentials = {k: registry[k] for k in ("username", "password") if k in registry}
            manifests.append({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
                              "metadata": {"name": secret, "annotations": {NAME_ANNOTATION: azure_name}},
                              "stringData": credentials})
            warnings.append(f"emitted Secret {secret} holding the password for {registry['address']}: "
                            "keep the output out of version control")
        else:
            why = ("the password is not printed (--include-secret prints it as a Secret manifest)"
                   if "password" in registry else f"no password in {label}")
            warnings.append(f"docker.baseImageRegistry: {why}; before applying, create Secret {secret} in the "
                            f"Environment's namespace: {secret_command(secret, registry)}")
    body = _validate(spec, label).model_dump(by_alias=True, exclude_defaults=True, mode="json")
    manifests.append({"apiVersion": API_VERSION, "kind": "Environment",
                      "metadata": {"name": metadata_name, "annotations": annotations}, "spec": body})
    return manifests, warnings


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (environmentYaml, dockerfile) as `|` blocks so the output stays readable."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and not re.search(r"[ \t]\n|[^\S\n]$", value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _represent_str)


def dump_manifests(manifests: list[dict]) -> str:
    """The manifests as one multi-document YAML stream (what `kenv import-azureml` prints)."""
    return "---\n".join(yaml.dump(m, Dumper=_LiteralDumper, sort_keys=False) for m in manifests)
