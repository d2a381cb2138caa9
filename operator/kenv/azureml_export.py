"""Write a kenv Environment as an Azure ML environment: `kenv export-azureml` (kenv.azureml is the way in).

Output: a CLI/SDK v2 environment YAML (with conda.yml or a docker-context folder) or an SDK v1 folder
(`Environment.load_from_directory`). Whatever cannot be carried over is returned as a warning, never dropped
silently, and registry credentials are never written out.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from kenv.azureml_common import (
    NAME_ANNOTATION,
    TAGS_ANNOTATION,
    V1_CONDA,
    V1_DEFINITION,
    V1_DOCKERFILE,
    V2_CONDA,
    V2_CONTEXT,
    V2_FILE,
    V2_SCHEMA,
    VERSION_ANNOTATION,
    _validate,
    quantity_to_shm,
)
from kenv.errors import SpecError
from kenv.models import EnvironmentSpec
from kenv.render import DEFAULT_BASE_IMAGE, environment_yml, render_context, uses_conda


def _pip_lines(spec: EnvironmentSpec) -> list[str]:
    """spec.pip as items of a conda `pip:` list (comments dropped, continuations joined)."""
    pip = spec.pip
    if pip is None or spec.python.user_managed_dependencies:
        return []
    lines = [f"--index-url {pip.index_url}"] if pip.index_url else []
    lines += [f"--extra-index-url {url}" for url in pip.extra_index_urls]
    joined = re.sub(r"\\\r?\n", " ", pip.requirements or "")
    for line in joined.splitlines():
        line = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()
        if line:
            lines.append(line)
    return lines + list(pip.packages)


def _export_conda(spec: EnvironmentSpec, warnings: list[str]) -> str | None:
    text = environment_yml(spec) if uses_conda(spec) else None
    pip = _pip_lines(spec)
    if not pip:
        return text
    python = f"python={spec.python.version}" if spec.python.version else "python"
    fresh = {"name": "project_environment", "channels": ["conda-forge"], "dependencies": [python, "pip"]}
    doc: dict[str, Any] = yaml.safe_load(text) if text else fresh
    deps: list[Any] = doc.setdefault("dependencies", [])
    entry = next((d for d in deps if isinstance(d, dict) and "pip" in d), None)
    if entry is None:
        entry = {"pip": []}
        deps.append(entry)
    entry["pip"] = list(entry["pip"] or []) + pip
    warnings.append("spec.pip: exported into the pip list of the conda file (Azure ML installs pip packages "
                    "inside conda); importing it back gives spec.conda")
    return yaml.safe_dump(doc, sort_keys=False)


def _unexportable(spec: EnvironmentSpec, fmt: str) -> list[str]:
    out = [f"spec.secretEnv {v.name} (Secret {v.secret_key_ref.name}) cannot be exported"
           for v in spec.secret_env]
    out += [f"spec.secretEnvFrom Secret {v.secret_name} cannot be exported" for v in spec.secret_env_from]
    if spec.bootstrap:
        out.append("spec.bootstrap has no Azure ML equivalent and was not exported")
    if spec.build.model_dump() != type(spec.build)().model_dump():
        out.append("spec.build settings are kenv-only and were not exported")
    if ref := spec.docker.dockerfile_from:
        out.append(f"spec.docker.dockerfileFrom (ConfigMap {ref.name} key {ref.key}) cannot be read offline")
    if fmt == "v2":
        if spec.environment_variables:
            out.append("spec.environmentVariables " + ", ".join(spec.environment_variables) + ": Azure ML v2 "
                       "environments have no variables; set them on the job")
        if spec.docker.shm_size is not None:
            out.append(f"spec.docker.shmSize {spec.docker.shm_size}: set shm_size on the Azure ML v2 job")
        if spec.python.interpreter_path:
            out.append("spec.python.interpreterPath has no Azure ML v2 equivalent and was not exported")
    elif spec.description:
        out.append("spec.description has no Azure ML v1 field and was not exported")
    if registry := spec.docker.base_image_registry:
        out.append(f"spec.docker.baseImageRegistry: credentials (Secret {registry.secret_name}) are not "
                   "exported; configure registry access in Azure ML")
    return out


def export_azureml(manifest: dict, out_dir: str | Path, fmt: str = "v2") -> list[str]:
    """Write an Environment manifest as an Azure ML v2 environment YAML or a v1 folder; return warnings."""
    if fmt not in ("v1", "v2"):
        raise SpecError(f"export format must be v1 or v2, got {fmt!r}")
    if not isinstance(manifest, dict) or manifest.get("kind") not in ("Environment", "ClusterEnvironment"):
        raise SpecError("manifest: kind must be Environment or ClusterEnvironment")
    spec = _validate(manifest.get("spec") or {}, "manifest")
    metadata = manifest.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    name = annotations.get(NAME_ANNOTATION) or metadata.get("name")
    version = annotations.get(VERSION_ANNOTATION)
    if not name:
        raise SpecError("manifest: metadata.name is required")
    warnings = _unexportable(spec, fmt)
    conda = _export_conda(spec, warnings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image = spec.docker.base_image
    if not image and not spec.docker.dockerfile:
        image = DEFAULT_BASE_IMAGE
        warnings.append(f"no base image in the spec: exported kenv's default {DEFAULT_BASE_IMAGE}")
    if fmt == "v1":
        docker: dict[str, Any] = {"enabled": False, "baseImage": None if spec.docker.dockerfile else image,
                                  "sharedVolumes": True, "shmSize": None, "arguments": [],
                                  "baseImageRegistry": {"address": None, "username": None, "password": None},
                                  "platform": {"os": "Linux", "architecture": "amd64"}}
        if spec.docker.shm_size is not None:
            docker["shmSize"] = quantity_to_shm(spec.docker.shm_size)
        if spec.docker.base_image_registry:
            docker["baseImageRegistry"]["address"] = spec.docker.base_image_registry.address
        if spec.docker.dockerfile:
            (out / V1_DOCKERFILE).write_text(spec.docker.dockerfile, encoding="utf-8")
        if conda:
            (out / V1_CONDA).write_text(conda, encoding="utf-8")
        definition = {"name": name, "version": version,
                      "environmentVariables": dict(spec.environment_variables),
                      "python": {"userManagedDependencies": spec.python.user_managed_dependencies,
                                 "interpreterPath": spec.python.interpreter_path or "python",
                                 "condaDependenciesFile": None, "baseCondaEnvironment": None},
                      "docker": docker,
                      "spark": {"repositories": [], "packages": [], "precachePackages": True},
                      "r": None, "inferencingStackVersion": None}
        (out / V1_DEFINITION).write_text(json.dumps(definition, indent=4) + "\n", encoding="utf-8")
        return warnings
    document: dict[str, Any] = {"$schema": V2_SCHEMA, "name": name}
    if version:
        document["version"] = str(version)
    if spec.description:
        document["description"] = spec.description
    if TAGS_ANNOTATION in annotations:
        document["tags"] = json.loads(annotations[TAGS_ANNOTATION])
    if spec.docker.dockerfile:
        (out / V2_CONTEXT).mkdir(exist_ok=True)
        files = render_context(spec).files if conda else {"Dockerfile": spec.docker.dockerfile}
        if conda:
            warnings.append("Azure ML v2 cannot combine build with conda_file: exported kenv's rendered "
                            "build context; importing it back gives a Dockerfile-only environment")
        for file_name, content in files.items():
            (out / V2_CONTEXT / file_name).write_text(content, encoding="utf-8")
        document["build"] = {"path": V2_CONTEXT, "dockerfile_path": "Dockerfile"}
    else:
        document["image"] = image
        if conda:
            (out / V2_CONDA).write_text(conda, encoding="utf-8")
            document["conda_file"] = V2_CONDA
    (out / V2_FILE).write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return warnings
