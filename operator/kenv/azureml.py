"""Bring Azure ML environments into kenv: `kenv import-azureml` (kenv.azureml_export is the way back).

Inputs: an SDK v1 folder (`Environment.save_to_directory`: azureml_environment.json, conda_dependencies.yml,
BaseDockerfile), a CLI/SDK v2 environment YAML (image / conda_file / build), or a bare conda env.yml or
requirements.txt (`from_conda_specification` / `from_pip_requirements`). Everything is pure except the
reads and writes at the edge. Whatever cannot be carried over is returned as a warning, never dropped
silently. A registry password is left out by default (the output is what people save and commit): the
Environment names a Secret and a warning gives the `kubectl create secret` command, with a placeholder for the
password. Only when asked (include_secret) is the password emitted, in a separate Secret manifest.

A conda part is reviewed (`review_conda`): a note says what it builds, warnings flag a python past its end of
life and channels under Anaconda's terms of service. When it is only python, pip and a pip list, `pip_only`
(`--pip-only`) imports the pip list as spec.pip instead, installed with the base image's python3.
"""

from __future__ import annotations

import json
import re
import shlex
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from kenv import validation
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
from kenv.conda_installer import split_dependencies
from kenv.errors import SpecError
from kenv.models import API_VERSION, EnvironmentSpec, registry_host
from kenv.render import (
    CONDA_PREFIX,
    DEFAULT_BASE_IMAGE,
    NO_DEFAULTS,
    build_channels,
    environment_document,
    uses_conda,
)

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
# CPython's end of life per minor version (https://devguide.python.org/versions/): the day of the last release
# for versions already gone when this was written, the end of the scheduled month for the others.
PYTHON_END_OF_LIFE = {
    "3.0": date(2009, 6, 27), "3.1": date(2012, 4, 9), "3.2": date(2016, 2, 20), "3.3": date(2017, 9, 29),
    "3.4": date(2019, 3, 18), "3.5": date(2020, 9, 30), "3.6": date(2021, 12, 23), "3.7": date(2023, 6, 27),
    "3.8": date(2024, 10, 7), "3.9": date(2025, 10, 31), "3.10": date(2026, 10, 31), "3.11": date(2027, 10, 31),
    "3.12": date(2028, 10, 31), "3.13": date(2029, 10, 31), "3.14": date(2030, 10, 31),
    "3.15": date(2031, 10, 31),
}
# Channels Anaconda, Inc. serves under its terms of service: `defaults` (main, r, msys2; free and pro of old)
# and `anaconda`, the same packages on anaconda.org; by name, by URL, or as a package's `channel::` prefix.
ANACONDA_CHANNELS = {"anaconda", "defaults", "main", "r", "msys2", "free", "pro"}
ANACONDA_HOSTS = {"repo.anaconda.com", "repo.anaconda.cloud", "repo.continuum.io"}
# What --pip-only carries over from a conda file besides the pip list (`name` and `prefix` are conda's own).
_PIP_ONLY_PACKAGES, _PIP_ONLY_KEYS = {"python", "pip"}, {"name", "prefix", "channels", "dependencies"}
_PYTHON_PIN = re.compile(r"python\s*(?:==?|\s)\s*(3(?:\.\d+){0,2})(?:\.\*)?")
_INDEX_LINE = re.compile(r"(-i|--index-url|--extra-index-url)(?:\s+|=)(\S+)")


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
        match = _PYTHON_PIN.fullmatch(str(dep).strip())
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
            "spec": spec, "registry": _registry(doc, base_image, label), "annotations": {}, "label": label,
            "conda_label": conda_label}


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
    conda_label = conda_file if isinstance(conda_file, str) else f"{label}: conda_file"
    if conda_file is not None:
        text = (yaml.safe_dump(conda_file, sort_keys=False) if isinstance(conda_file, dict)
                else _read(base / conda_file, conda_file))
        version = _conda(text, conda_label)
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
            "spec": spec, "registry": None, "annotations": annotations, "label": label, "conda_label": conda_label}


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
            "annotations": {}, "label": label, "conda_label": label}


def python_end_of_life(version: str, today: date) -> date | None:
    """The day python `version` (`3.8`, `3.8.13`) reached its end of life, if it has by `today`; None while it is
    supported, and for a version not in PYTHON_END_OF_LIFE or naming no minor version (`3`)."""
    end = PYTHON_END_OF_LIFE.get(".".join(version.split(".")[:2]))
    return end if end is not None and end <= today else None


def _oldest_supported(today: date) -> str | None:
    return next((version for version, end in PYTHON_END_OF_LIFE.items() if end > today), None)


def anaconda_channel(channel: str) -> bool:
    """Whether a conda channel (a name or a URL) is served under Anaconda's terms of service."""
    text = channel.strip().rstrip("/").lower()
    match = re.fullmatch(r"https?://([^/:]+)(?::\d+)?(?:/(.*))?", text)
    if match is None:
        return text.removeprefix("pkgs/") in ANACONDA_CHANNELS
    host, path = match.group(1), (match.group(2) or "").split("/")
    return host in ANACONDA_HOSTS or (host == "conda.anaconda.org" and path[0] in ANACONDA_CHANNELS)


def _bare(dep: str) -> str:
    """A match spec without its `channel::` prefix."""
    return dep.rsplit("::", 1)[-1].strip()


def _package_name(dep: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+", _bare(dep))
    return (match.group(0) if match else _bare(dep)).lower()


def _python_spec(specs: list[str]) -> str | None:
    """The python match spec if it pins something (`python=3.8.13`, `python>=3.10`), else None."""
    return next((s for s in specs if _package_name(s) == "python" and _bare(s).lower() != "python"), None)


def _installer(spec: EnvironmentSpec) -> str:
    """The python that installs pip packages without conda, and where it has to come from."""
    python = spec.python.interpreter_path or "python3"
    if spec.docker.dockerfile or spec.docker.dockerfile_from:
        return f"{python} of the image the base Dockerfile builds"
    if image := spec.docker.resolved_base_image:
        return f"{python} of the base image {image}"
    return (f"{python} of kenv's default base image ({DEFAULT_BASE_IMAGE} unless the operator's "
            "KENV_DEFAULT_BASE_IMAGE says otherwise)")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def review_conda(spec: EnvironmentSpec, label: str, today: date) -> tuple[list[str], list[str]]:
    """Notes on what an imported Environment's conda part builds (and, when it is only python, pip and a pip
    list, that --pip-only applies) and warnings on what deserves a look: a python past its end of life on
    `today`, channels under Anaconda's terms of service. Nothing for an Environment without conda."""
    if not uses_conda(spec):
        return [], []
    document = environment_document(spec)
    channels, specs, pip = split_dependencies(document)
    used = build_channels(channels)
    if NO_DEFAULTS in channels:
        how = " (`nodefaults`: no channel added)"
    elif used != channels:
        how = " (conda-forge added last by kenv)"
    else:
        how = ""
    python = _python_spec(specs)
    others = len(specs) - any(_package_name(s) == "python" for s in specs)
    packages = sum(1 for line in pip if not line.startswith("-"))
    notes = [f"{label}: the Environment builds a conda environment in {CONDA_PREFIX} from "
             f"{'channel' if len(used) == 1 else 'channels'} {', '.join(used) or '(none)'}{how}, with "
             f"{python or 'python unpinned'}, {_plural(others, 'other conda package')} and "
             f"{_plural(packages, 'pip package')} installed by the environment's own pip"]
    warnings = []
    pin = _PYTHON_PIN.fullmatch(_bare(python)) if python else None
    version = pin.group(1) if pin else None if python else spec.python.version
    if version and (end := python_end_of_life(version, today)):
        newer = _oldest_supported(today)
        warnings.append(f"{label}: {python or 'python=' + version} pins python "
                        f"{'.'.join(version.split('.')[:2])}, end-of-life since {end.isoformat()} (no more "
                        f"security fixes){f': pin {newer} or later' if newer else ''}")
    flagged = [f"channel {channel}" for channel in channels if anaconda_channel(channel)]
    flagged += [f"package {s}" for s in specs if "::" in s and anaconda_channel(s.split("::", 1)[0])]
    if flagged:
        warnings.append(f"{label}: {', '.join(flagged)}: subject to Anaconda's terms of service; use conda-forge "
                        "or your mirror")
    if pip and not _pip_only_blockers(document):
        notes.append(f"{label}: the conda part is only python, pip and a pip list: --pip-only would import the pip "
                     f"list as spec.pip, installed with {_installer(spec)} instead of a conda environment (it warns "
                     "what changes)")
    return notes, warnings


def _pip_only_blockers(document: dict[str, Any]) -> list[str]:
    """What keeps a conda file from being only python, pip and a pip list: other packages, other keys."""
    _, specs, _ = split_dependencies(document)
    packages = [s for s in specs if _package_name(s) not in _PIP_ONLY_PACKAGES]
    keys = sorted(str(key) for key in document if key not in _PIP_ONLY_KEYS)
    found = []
    if packages:
        found.append(f"conda package{'s' if len(packages) > 1 else ''} {', '.join(packages)}")
    if keys:
        found.append(f"{'keys' if len(keys) > 1 else 'key'} {', '.join(keys)}")
    return found


def _pip_section(lines: list[str]) -> dict[str, Any]:
    """A conda pip list as spec.pip: one --index-url as indexUrl, --extra-index-url as extraIndexUrls, the other
    lines as packages when all are plain requirements, else as a requirements body (options, --hash, ...)."""
    matches = [_INDEX_LINE.fullmatch(line) for line in lines]
    indexes = sum(1 for match in matches if match and match.group(1) != "--extra-index-url")
    section: dict[str, Any] = {}
    rest = []
    for line, match in zip(lines, matches, strict=True):
        if match and match.group(1) == "--extra-index-url":
            section.setdefault("extraIndexUrls", []).append(match.group(2))
        elif match and indexes == 1:
            section["indexUrl"] = match.group(2)
        else:
            rest.append(line)
    if any(validation.requirement_problem(line) for line in rest):
        section["requirements"] = "\n".join(rest) + "\n"
    elif rest:
        section["packages"] = rest
    return section


def _pip_only(spec: dict[str, Any], label: str, conda_label: str, warnings: list[str],
              notes: list[str]) -> dict[str, Any]:
    """The spec with its conda part (only python, pip and a pip list) turned into spec.pip, installed by the
    base image's python3; a conda part with anything else is refused."""
    if "conda" not in spec:
        notes.append(f"--pip-only: {label} imports no conda environment; nothing to translate")
        return spec
    model = _validate(spec, label)
    document = environment_document(model)
    if blockers := _pip_only_blockers(document):
        raise SpecError(f"{conda_label}: --pip-only takes a conda part of only python, pip and a pip list; this one "
                        f"also has {' and '.join(blockers)}: drop --pip-only to build the conda environment")
    channels, specs, pip = split_dependencies(document)
    translated = {key: value for key, value in spec.items() if key != "conda"}
    python = {key: value for key, value in spec.get("python", {}).items() if key != "version"}
    translated.pop("python", None)
    if python:  # never python.version: alone it means "conda solves this python" (render.uses_conda)
        translated["python"] = python
    if section := _pip_section(pip):
        translated["pip"] = section
    pins = [s for s in specs if _bare(s).lower() not in _PIP_ONLY_PACKAGES]
    dropped = (f"{' and '.join(pins)} {'are' if len(pins) > 1 else 'is'} dropped" if pins
               else "no conda environment is built")
    python_pin = _python_spec(specs)
    written = f" (written for {python_pin})" if python_pin else ""
    if section:
        installer = _installer(_validate(translated, label))
        warnings.append(f"{conda_label}: --pip-only: {dropped}: the build installs the pip list with {installer}, "
                        f"which must exist there, have pip and be compatible with the pins{written}; kenv cannot "
                        "inspect the image at import time")
    else:
        warnings.append(f"{conda_label}: --pip-only: {dropped} and the pip list is empty: nothing is installed")
    if channels:
        warnings.append(f"{conda_label}: --pip-only: {'channels' if len(channels) > 1 else 'channel'} "
                        f"{', '.join(channels)} not used (no conda environment is built)")
    return translated


def secret_command(secret: str, registry: dict[str, str]) -> str:
    """The kubectl command creating the registry Secret, with a placeholder where the password goes (never the
    password itself: this text lands in terminals and logs)."""
    username = shlex.quote(registry["username"]) if "username" in registry else "<username>"
    return (f"kubectl create secret docker-registry {secret} --docker-server={shlex.quote(registry['address'])} "
            f"--docker-username={username} --docker-password=<password>")


def import_azureml(path: str | Path, name: str | None = None, include_secret: bool = False, pip_only: bool = False,
                   today: date | None = None, notes: list[str] | None = None) -> tuple[list[dict], list[str]]:
    """Manifests ([Secret], Environment) for an Azure ML environment, and warnings about what did not map or
    deserves a look (review_conda, as of `today`). The Secret holding a registry password is only emitted with
    include_secret; otherwise a warning gives the command that creates it. pip_only turns a conda part of only
    python, pip and a pip list into spec.pip (and refuses any other). Notes (what the conda part builds, and
    whether pip_only applies) are appended to `notes` when given."""
    notes = [] if notes is None else notes
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
    conda_label = imported.get("conda_label") or label
    if pip_only:
        spec = _pip_only(spec, label, conda_label, warnings, notes)
    model = _validate(spec, label)
    review_notes, review_warnings = review_conda(model, conda_label, today or date.today())
    notes += review_notes
    warnings += review_warnings
    body = model.model_dump(by_alias=True, exclude_defaults=True, mode="json")
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
