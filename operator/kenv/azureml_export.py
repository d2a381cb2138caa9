"""Write a kenv Environment as an Azure ML environment: `kenv export-azureml` (kenv.azureml is the way in).

Output: a CLI/SDK v2 environment YAML (with conda.yml or a docker-context folder) or an SDK v1 folder
(`Environment.load_from_directory`). Whatever cannot be carried over is returned as a warning, never dropped
silently, and registry credentials are never written out.

The output folder: files an earlier export (kenv's, or the SDK's save_to_directory) left under the names kenv
writes are removed first, because Azure ML reads whatever it finds under them: `load_from_directory` takes a
stale BaseDockerfile over the exported base image and a stale conda_dependencies.yml as the conda file. Any other
file is kept, since kenv cannot know it is disposable: it is reported, and the export is refused when it would
overwrite such a file or build with it (Azure ML uploads docker-context whole). See `_clear_folder`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from kenv.azureml import _looks_v2
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
from kenv.models import EnvironmentSpec, PipInstaller
from kenv.render import (
    CONDA_PIP_FILE,
    DEFAULT_BASE_IMAGE,
    INSTALLER_SCRIPT,
    LOCK_SCRIPT,
    environment_yml,
    render_context,
    uses_conda,
)

# Every name kenv's exporter writes, in either format: a v2 export into a former v1 folder must not leave the
# azureml_environment.json that `kenv import-azureml` and the SDK would read instead of it.
V1_FILES = (V1_DEFINITION, V1_CONDA, V1_DOCKERFILE)
V2_FILES = (V2_FILE, V2_CONDA)
# What render_context writes into docker-context (never the CA bundle: exports render without externals).
OWNED_CONTEXT_FILES = ("Dockerfile", "requirements.txt", "environment.yml", INSTALLER_SCRIPT, CONDA_PIP_FILE,
                       LOCK_SCRIPT)
COMMENT = r"(?:^|\s)#"  # where pip and YAML comments start


def _pip_lines(spec: EnvironmentSpec) -> list[str]:
    """spec.pip as items of a conda `pip:` list (comments dropped, continuations joined)."""
    pip = spec.pip
    if pip is None or spec.python.user_managed_dependencies:
        return []
    lines = [f"--index-url {pip.index_url}"] if pip.index_url else []
    lines += [f"--extra-index-url {url}" for url in pip.extra_index_urls]
    joined = re.sub(r"\\\r?\n", " ", pip.requirements or "")
    for line in joined.splitlines():
        line = re.split(COMMENT, line, maxsplit=1)[0].strip()
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
    bodies = {"spec.conda.environmentYaml": spec.conda.environment_yaml if spec.conda else None,
              "spec.pip.requirements": spec.pip.requirements if spec.pip else None}
    commented = [field for field, body in bodies.items() if body and re.search(COMMENT, body, re.MULTILINE)]
    if commented:  # the conda file is parsed and dumped again to add the pip list
        warnings.append(f"{' and '.join(commented)}: comments are not kept in the exported conda file")
    return yaml.safe_dump(doc, sort_keys=False)


def _unexportable(spec: EnvironmentSpec, fmt: str, annotations: dict[str, str]) -> list[str]:
    """Warnings for every field the format cannot hold (what is only converted is warned where it happens)."""
    out = [f"spec.secretEnv {v.name} (Secret {v.secret_key_ref.name}) cannot be exported"
           for v in spec.secret_env]
    out += [f"spec.secretEnvFrom Secret {v.secret_name} cannot be exported" for v in spec.secret_env_from]
    if spec.bootstrap:
        out.append("spec.bootstrap has no Azure ML equivalent and was not exported")
    if spec.conda is not None and spec.conda.channel_credentials:
        hosts = ", ".join(c.host for c in spec.conda.channel_credentials)
        out.append(f"spec.conda.channelCredentials ({hosts}) cannot be exported: give Azure ML the channel "
                   "credentials its own way (e.g. a token in the channel URL or the workspace's connection)")
    if spec.build.model_dump() != type(spec.build)().model_dump():
        out.append("spec.build settings are kenv-only and were not exported")
    if spec.pip is not None and spec.pip.installer is not PipInstaller.PIP:
        out.append(f"spec.pip.installer {spec.pip.installer.value} is kenv-only: Azure ML installs the pip list with "
                   "pip")
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
        if spec.docker.base_image_registry and spec.docker.base_image:
            out.append(f"spec.docker.baseImageRegistry.address: Azure ML v2 environments have no registry field; "
                       f"exported the image as {spec.docker.resolved_base_image}")
        elif registry := spec.docker.base_image_registry:
            out.append(f"spec.docker.baseImageRegistry.address {registry.address} has no Azure ML v2 field and "
                       "was not exported")
    else:
        if spec.description:
            out.append("spec.description has no Azure ML v1 field and was not exported")
        if TAGS_ANNOTATION in annotations:
            out.append(f"metadata.annotations[{TAGS_ANNOTATION}]: Azure ML v1 environments have no tags; "
                       f"{annotations[TAGS_ANNOTATION]} was not exported")
        if spec.docker.shm_size is not None and quantity_to_shm(spec.docker.shm_size) is None:
            out.append(f"spec.docker.shmSize {spec.docker.shm_size} is not a size docker's shm_size can hold "
                       "and was not exported")
    if registry := spec.docker.base_image_registry:
        out.append(f"spec.docker.baseImageRegistry: credentials (Secret {registry.secret_name}) are not "
                   "exported; configure registry access in Azure ML")
    return out


def _is_v2_environment(path: Path) -> bool:
    try:
        return path.is_file() and _looks_v2(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False


def _folder_contents(out: Path) -> tuple[list[Path], list[str]]:
    """(files an earlier Azure ML export left, names of everything else) in the output folder. A name counts as
    an export's only beside the document that makes it one: the v1 files beside azureml_environment.json,
    environment.yml / conda.yml / docker-context's files only as (the files of) an Azure ML v2 environment
    document. A user's own Dockerfile or conda file elsewhere is never taken for kenv's."""
    v1_export = (out / V1_DEFINITION).is_file()
    v2_export = _is_v2_environment(out / V2_FILE)
    owned: list[Path] = []
    foreign: list[str] = []
    for entry in sorted(out.iterdir()):
        if entry.name == V2_CONTEXT and entry.is_dir():
            for item in sorted(entry.iterdir()):
                if v2_export and item.name in OWNED_CONTEXT_FILES and item.is_file():
                    owned.append(item)
                else:
                    foreign.append(f"{V2_CONTEXT}/{item.name}")
        elif entry.is_file() and ((entry.name in V1_FILES and v1_export) or (entry.name in V2_FILES and v2_export)):
            owned.append(entry)
        else:
            foreign.append(entry.name)
    return owned, foreign


def _read_names(fmt: str) -> set[str]:
    """The names Azure ML reads in a folder of this format (docker-context stands for everything under it):
    load_from_directory takes a BaseDockerfile or conda_dependencies.yml it finds, whoever wrote it."""
    return set(V1_FILES) if fmt == "v1" else {*V2_FILES, V2_CONTEXT}


def _clear_folder(out: Path, fmt: str) -> list[str]:
    """Remove what an earlier export (kenv's, or the SDK's save_to_directory) left, so Azure ML reads this export
    only. Other files are kept, and refused (SpecError, nothing removed) under a name Azure ML reads with this
    format: this export would overwrite it, or Azure ML would read it with this export (a stray BaseDockerfile
    replaces the base image; docker-context is uploaded whole as the build context). Returns warnings naming what
    was removed and what was kept."""
    owned, foreign = _folder_contents(out)
    blocking = [name for name in foreign if name.split("/")[0] in _read_names(fmt)]
    if blocking:
        raise SpecError(f"{out}: {', '.join(blocking[:5])} was not written by kenv's export, and Azure ML would read "
                        "it with this export (or it would be overwritten): export into an empty folder, or move it "
                        "away")
    for path in owned:
        path.unlink()
    context = out / V2_CONTEXT
    if context.is_dir() and not any(context.iterdir()):
        context.rmdir()
    notes = []
    if owned:
        removed = ", ".join(str(path.relative_to(out)) for path in owned)
        notes.append(f"{out}: removed {removed}, left by an earlier Azure ML export, so Azure ML reads this one only")
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        notes.append(f"{out}: kept {', '.join(foreign[:5])}{more}: not written by kenv's export (Azure ML does "
                     "not read it with this export)")
    return notes


def _tags(annotations: dict[str, str]) -> dict[str, Any] | None:
    if TAGS_ANNOTATION not in annotations:
        return None
    try:
        tags = json.loads(annotations[TAGS_ANNOTATION])
    except json.JSONDecodeError:
        tags = None
    if not isinstance(tags, dict):
        raise SpecError(f"manifest: metadata.annotations[{TAGS_ANNOTATION}] must be a JSON object (the Azure ML "
                        f"tags), got {annotations[TAGS_ANNOTATION][:60]!r}")
    return tags


def _v1_definition(spec: EnvironmentSpec, name: str, version: str | None, image: str | None) -> dict[str, Any]:
    """azureml_environment.json as `Environment.save_to_directory` writes it (conda and Dockerfile apart)."""
    docker: dict[str, Any] = {"enabled": False, "baseImage": None if spec.docker.dockerfile else image,
                              "sharedVolumes": True, "shmSize": None, "arguments": [],
                              "baseImageRegistry": {"address": None, "username": None, "password": None},
                              "platform": {"os": "Linux", "architecture": "amd64"}}
    if spec.docker.shm_size is not None:
        docker["shmSize"] = quantity_to_shm(spec.docker.shm_size)
    if spec.docker.base_image_registry:
        docker["baseImageRegistry"]["address"] = spec.docker.base_image_registry.address
    return {"name": name, "version": version,
            "environmentVariables": dict(spec.environment_variables),
            "python": {"userManagedDependencies": spec.python.user_managed_dependencies,
                       "interpreterPath": spec.python.interpreter_path or "python",
                       "condaDependenciesFile": None, "baseCondaEnvironment": None},
            "docker": docker,
            "spark": {"repositories": [], "packages": [], "precachePackages": True},
            "r": None, "inferencingStackVersion": None}


def _write_v2(out: Path, spec: EnvironmentSpec, document: dict[str, Any], image: str | None, conda: str | None,
              warnings: list[str]) -> None:
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
    tags = _tags(annotations) if fmt == "v2" else None
    warnings = _unexportable(spec, fmt, annotations)
    conda = _export_conda(spec, warnings)
    # v1 keeps baseImage as written next to docker.baseImageRegistry.address, which Azure ML joins to a relative
    # name just as kenv does; v2 has no registry field, so it gets the reference the build pulls.
    image = spec.docker.base_image if fmt == "v1" else spec.docker.resolved_base_image
    if not image and not spec.docker.dockerfile:
        image = DEFAULT_BASE_IMAGE
        warnings.append(f"no base image in the spec: exported kenv's default {DEFAULT_BASE_IMAGE}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    warnings += _clear_folder(out, fmt)
    if fmt == "v1":
        if spec.docker.dockerfile:
            (out / V1_DOCKERFILE).write_text(spec.docker.dockerfile, encoding="utf-8")
        if conda:
            (out / V1_CONDA).write_text(conda, encoding="utf-8")
        definition = _v1_definition(spec, name, version, image)
        (out / V1_DEFINITION).write_text(json.dumps(definition, indent=4) + "\n", encoding="utf-8")
        return warnings
    document: dict[str, Any] = {"$schema": V2_SCHEMA, "name": name}
    if version:
        document["version"] = str(version)
    if spec.description:
        document["description"] = spec.description
    if tags is not None:
        document["tags"] = tags
    _write_v2(out, spec, document, image, conda, warnings)
    return warnings
