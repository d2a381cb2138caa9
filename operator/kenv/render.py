"""Render an Environment's build context (Dockerfile, requirements.txt, environment.yml) and its content hash.

Pure functions: whatever lives outside the spec (a Dockerfile or CA bundle in a ConfigMap) is read by the caller
and passed in as `Externals`, so the same spec renders the same bytes on a laptop (`kenv render`) and in the
operator. Values from the spec only ever land in data files or in validated image references: no field can add
a Dockerfile instruction (see tests/unit/test_render_properties.py).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources

import jinja2
import yaml

from kenv import validation
from kenv.conda_installer import split_dependencies
from kenv.errors import SpecError
from kenv.models import EnvironmentSpec, PipInstaller

# Bump when the templates or the rendering change what an image contains: every hash moves and images are
# rebuilt. 2: canonical files (whitespace-only edits, YAML comments and key order no longer move the hash).
# 3: package caches through build args (below), spec.pip.installer. 4: the package lock in the last layer.
RECIPE_VERSION = "4"
DEFAULT_MICROMAMBA_IMAGE = "mambaorg/micromamba:2.0.5"
DEFAULT_CONDA_INSTALLER_IMAGE = "python:3.11-slim-bookworm"
RATTLER = "rattler"
MICROMAMBA = "micromamba"
# What the rattler stage installs from PyPI when its image lacks them (hack/images/conda-installer.Dockerfile
# bakes the same pins in); part of the Dockerfile, so a new pin rebuilds conda environments.
INSTALLER_REQUIREMENTS = ("py-rattler==0.28.0", "PyYAML==6.0.3")
INSTALLER_SCRIPT = "kenv-conda.py"  # kenv/conda_installer.py, copied into the context
CONDA_PIP_FILE = "conda-requirements.txt"  # the environment file's pip list, installed in the image itself
# The package lock: kenv/lock_script.py, copied into the context, writes it in the image's last layer.
LOCK_SCRIPT = "kenv-lock.py"
LOCK_FILE = "/etc/kenv/lock.json"
LOCK_FALLBACK = "/tmp/kenv-lock.json"  # where a build whose Dockerfile's USER cannot write /etc/kenv puts it
# Package caches. The Dockerfile declares one ARG per installer whose default keeps that installer's cache out of
# the image; Kaniko build pods with a cache volume (KENV_PACKAGE_CACHE_DIR) override them with --build-arg so pip,
# uv and rattler keep their downloads on the volume, which Kaniko leaves out of every snapshot. Build args are not
# in the context: the content hash, and what the image holds, are the same with or without a cache.
CACHE_MOUNT = "/kaniko/kenv-cache"  # where build pods mount the cache: Kaniko never snapshots /kaniko
CACHE_ARGS: dict[str, tuple[str, str]] = {  # ARG: (default, with a cache at {dir})
    "KENV_PIP_CACHE": ("--no-cache-dir", "--cache-dir={dir}/pip"),
    "KENV_UV_CACHE": ("--no-cache", "--cache-dir={dir}/uv"),
    "KENV_CONDA_CACHE": ("--no-cache", "--cache-dir={dir}/rattler"),
}
# spec.pip.installer uv: this uv is pip-installed into a folder for the install step only (a new pin rebuilds).
UV_REQUIREMENT = "uv==0.13.9"
UV_FILE = "uv-requirements.txt"  # the pin, after the requirements' own index options
# glibc 2.28 (Debian 10, RHEL 8, Ubuntu 20.04 have it or newer): conda-forge's current baseline, not the glibc of
# whatever image the installer stage runs.
DEFAULT_CONDA_GLIBC = "2.28"
# A user Dockerfile's COPY --from=N / RUN --mount=...,from=N: the installer stage ahead of it would shift N.
NUMBERED_STAGE = re.compile(r"\bfrom=[0-9]+\b")
CONDA_PREFIX = "/opt/kenv/env"
DEFAULT_BASE_IMAGE = "python:3.11-slim-bookworm"
TAG_PREFIX = "kenv-"
CA_FILE = "kenv-ca.crt"
# Exactly the ARGs of templates/Dockerfile.j2: pip, requests, OpenSSL users and conda trust the CA bundle.
CA_VARIABLES = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CONDA_SSL_VERIFY")
# Conda's own resolution falls back to its default channels; ours is conda-forge, added last unless the file
# names it already or opts out with conda's `nodefaults` pseudo-channel (dropped from the rendered file).
IMPLICIT_CHANNEL = "conda-forge"
NO_DEFAULTS = "nodefaults"


def cache_build_args(directory: str) -> dict[str, str]:
    """The --build-arg values that point every installer at a package cache in `directory`."""
    return {name: with_cache.format(dir=directory) for name, (_, with_cache) in CACHE_ARGS.items()}


@dataclass(frozen=True)
class Externals:
    """Inputs the spec refers to but does not contain, resolved by the caller."""

    dockerfile: str | None = None  # text of spec.docker.dockerfileFrom
    ca_bundle: str | None = None  # text of spec.build.caBundle
    micromamba_image: str = DEFAULT_MICROMAMBA_IMAGE
    default_base_image: str = DEFAULT_BASE_IMAGE
    conda_installer: str = RATTLER  # or MICROMAMBA (config.CondaInstaller)
    conda_installer_image: str = DEFAULT_CONDA_INSTALLER_IMAGE
    conda_glibc: str = DEFAULT_CONDA_GLIBC  # what conda packages are solved for (the base image's, or older)
    conda_cuda: str | None = None  # a CUDA driver version to solve for; build pods see no GPU


@dataclass(frozen=True)
class BuildContext:
    files: dict[str, str] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        return content_hash(hashed_files(self.files))

    @property
    def tag(self) -> str:
        return TAG_PREFIX + self.hash[:40]


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("kenv", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # noqa: S701 - renders Dockerfiles and YAML, never HTML
)


def render_template(template: str, **values: object) -> str:
    return _env.get_template(template).render(**values)


def content_hash(files: dict[str, str]) -> str:
    """sha256 over the sorted file names and contents (NUL-separated so no two contexts collide)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return digest.hexdigest()


def hashed_files(files: dict[str, str]) -> dict[str, str]:
    """What identifies an image: every file but the CA bundle's content. The CA is build-time trust (how pip
    and the builder reach the indexes), not content: rotating a proxy's CA must not rebuild every Environment.
    Whether a CA is configured still counts, since the Dockerfile copies it."""
    if CA_FILE not in files:
        return files
    return {**files, CA_FILE: "(CA bundle: build-time trust, not content)"}


def build_channels(channels: list[str]) -> list[str]:
    """The channels the build solves with: the user's, in order, then conda-forge unless present or opted out
    with `nodefaults`. A file listing only `pytorch` still finds numpy, as conda's own default order would."""
    if NO_DEFAULTS in channels:
        return [channel for channel in channels if channel != NO_DEFAULTS]
    if any(channel.rstrip("/").rsplit("/", 1)[-1] == IMPLICIT_CHANNEL for channel in channels):
        return list(channels)
    return [*channels, IMPLICIT_CHANNEL]


def uses_conda(spec: EnvironmentSpec) -> bool:
    return spec.conda is not None or (spec.python.version is not None and not spec.python.user_managed_dependencies)


def requirements_txt(spec: EnvironmentSpec) -> str | None:
    """Index options, then the requirements body as pip reads it (continuations joined, lines stripped, blank
    lines dropped), then the packages: a whitespace-only edit renders the same file."""
    pip = spec.pip
    if pip is None or not (pip.requirements or pip.packages):
        return None
    lines = []
    if pip.index_url:
        lines.append(f"--index-url {pip.index_url}")
    lines += [f"--extra-index-url {url}" for url in pip.extra_index_urls]
    if pip.requirements:
        lines += validation.canonical_requirements(pip.requirements)
    lines += [package.strip() for package in pip.packages]
    if len(lines) == len(pip.extra_index_urls) + bool(pip.index_url):
        return None  # only blank lines: nothing to install, same as no pip section
    return "\n".join(lines) + "\n"


def canonical_yaml(document: object) -> str:
    """One serialisation per document: sorted keys, block style, no line folding."""
    return yaml.safe_dump(document, sort_keys=True, default_flow_style=False, width=1_000_000)


def environment_document(spec: EnvironmentSpec) -> dict[str, object]:
    """The conda environment as data: the parsed environmentYaml, or built from the structured fields."""
    conda = spec.conda
    if conda is not None and conda.environment_yaml:
        try:  # validated by the model already; checked again for specs built without validation
            return validation.parse_environment_yaml(conda.environment_yaml, "spec.conda.environmentYaml")
        except ValueError as error:
            raise SpecError(str(error)) from None
    dependencies: list[object] = []
    if spec.python.version:
        dependencies.append(f"python={spec.python.version}")
    if conda is not None:
        dependencies += [package.strip() for package in conda.packages]
        if conda.pip_packages:
            dependencies += ["pip", {"pip": [package.strip() for package in conda.pip_packages]}]
    channels = list(conda.channels) if conda is not None and conda.channels else ["conda-forge"]
    return {"name": "kenv", "channels": channels, "dependencies": dependencies}


def environment_yml(spec: EnvironmentSpec) -> str:
    """The environment file as the user wrote it (environmentYaml verbatim, comments kept), for export."""
    conda = spec.conda
    document = environment_document(spec)  # raises SpecError for a bad environmentYaml
    if conda is not None and conda.environment_yaml:
        return conda.environment_yaml if conda.environment_yaml.endswith("\n") else conda.environment_yaml + "\n"
    return yaml.safe_dump(document, sort_keys=False)


def canonical_environment_yml(spec: EnvironmentSpec) -> str:
    """The environment.yml of the build context: comments, whitespace and key order do not matter; the
    channel list is the one the build solves with (see `build_channels`)."""
    document = environment_document(spec)
    channels = document.get("channels") or []
    assert isinstance(channels, list)  # checked by validation.parse_environment_yaml
    return canonical_yaml({**document, "channels": build_channels([str(c) for c in channels])})


def base_dockerfile(spec: EnvironmentSpec, externals: Externals) -> str | None:
    """The user's Dockerfile with trailing whitespace and blank lines dropped (heredoc bodies kept as is)."""
    text = spec.docker.dockerfile
    if not text and spec.docker.dockerfile_from:
        if externals.dockerfile is None:
            ref = spec.docker.dockerfile_from
            raise SpecError(f"spec.docker.dockerfileFrom: ConfigMap {ref.name} key {ref.key} was not resolved")
        text = externals.dockerfile
    return validation.canonical_dockerfile(text) if text else None


def installer_script() -> str:
    return resources.files("kenv").joinpath("conda_installer.py").read_text(encoding="utf-8")


def lock_script() -> str:
    return resources.files("kenv").joinpath("lock_script.py").read_text(encoding="utf-8")


def split_global_args(dockerfile: str) -> tuple[str, str]:
    """(lines before the first FROM, the rest). A stage rendered before the user's Dockerfile must come after
    its global ARGs, or `FROM ${BASE}` would lose them (an ARG after a FROM belongs to that stage)."""
    lines = dockerfile.splitlines()
    first_from = next((i for i, line in enumerate(lines) if re.match(r"\s*FROM\s", line, re.IGNORECASE)), 0)
    return "\n".join(lines[:first_from]), "\n".join(lines[first_from:])


def check_stage_names(spec: EnvironmentSpec, dockerfile: str) -> None:
    match = NUMBERED_STAGE.search(dockerfile)
    if match:
        field_name = "spec.docker.dockerfile" if spec.docker.dockerfile else "spec.docker.dockerfileFrom"
        raise SpecError(f"{field_name}: `{match.group(0)}` names a stage by number, and kenv adds its conda "
                        "installer stage ahead of yours, which would shift the numbers: name the stage instead "
                        "(FROM … AS build, then --from=build)")


def conda_pip_requirements(spec: EnvironmentSpec) -> str | None:
    """The environment file's pip list as a requirements file (None without one)."""
    _, _, lines = split_dependencies(environment_document(spec))
    return "\n".join(lines) + "\n" if lines else None


def uv_requirements(requirements: str) -> str:
    """The uv pin, fetched from wherever the requirements say packages come from (a private index)."""
    sources = [f"{name} {value}" for line in requirements.splitlines() for name, value in validation.options(line)
               if name in validation.INDEX_OPTIONS]
    return "\n".join([*sources, UV_REQUIREMENT]) + "\n"


def python_command(spec: EnvironmentSpec) -> str:
    if uses_conda(spec):
        return f"{CONDA_PREFIX}/bin/python"
    return spec.python.interpreter_path or "python3"


def lock_arguments(spec: EnvironmentSpec) -> list[str]:
    """kenv-lock.py's arguments: where it writes the lock, where if it cannot, the conda prefix it lists."""
    return [LOCK_FILE, LOCK_FALLBACK] + ([CONDA_PREFIX] if uses_conda(spec) else [])


def render_context(spec: EnvironmentSpec, externals: Externals | None = None) -> BuildContext:
    """The files of the build context. Injection-only fields (variables, secrets, bootstrap, shm) are not in it,
    so editing them never changes the hash and never builds."""
    externals = externals or Externals()
    files: dict[str, str] = {}
    requirements = None if spec.python.user_managed_dependencies else requirements_txt(spec)
    conda = uses_conda(spec)
    rattler = conda and externals.conda_installer == RATTLER
    if conda:
        files["environment.yml"] = canonical_environment_yml(spec)
    conda_pip = conda_pip_requirements(spec) if rattler else None
    if rattler:
        files[INSTALLER_SCRIPT] = installer_script()
    if conda_pip:
        files[CONDA_PIP_FILE] = conda_pip
    uv = requirements is not None and spec.pip is not None and spec.pip.installer is PipInstaller.UV
    if requirements:
        files["requirements.txt"] = requirements
    if requirements and uv:  # `requirements and`: for the type checker, `uv` implies it
        files[UV_FILE] = uv_requirements(requirements)
    installs = conda or requirements is not None
    user_dockerfile = base_dockerfile(spec, externals)
    global_args = ""
    if rattler and user_dockerfile:
        check_stage_names(spec, user_dockerfile)
        global_args, user_dockerfile = split_global_args(user_dockerfile)
    if externals.ca_bundle and installs:
        files[CA_FILE] = externals.ca_bundle
    if installs:  # an image kenv installs nothing into may have no shell or python to write a lock with
        files[LOCK_SCRIPT] = lock_script()
    files["Dockerfile"] = render_template(
        "Dockerfile.j2",
        recipe_version=RECIPE_VERSION,
        global_args=global_args,
        base_dockerfile=user_dockerfile,
        base_image=spec.docker.resolved_base_image or externals.default_base_image,
        ca_bundle=CA_FILE in files,
        conda=conda,
        rattler=rattler,
        installer_image=externals.conda_installer_image,
        installer_requirements=" ".join(INSTALLER_REQUIREMENTS),
        installer_script=INSTALLER_SCRIPT,
        installer_target=f"--glibc {externals.conda_glibc}" + (
            f" --cuda {externals.conda_cuda}" if externals.conda_cuda else ""),
        conda_pip=CONDA_PIP_FILE if conda_pip else None,
        prefix=CONDA_PREFIX,
        pip=requirements is not None,
        uv_file=UV_FILE if uv else None,
        cache_args={name: default for name, (default, _) in CACHE_ARGS.items()},
        cache_mount=CACHE_MOUNT,
        python=python_command(spec),
        micromamba_image=externals.micromamba_image,
        lock={"script": LOCK_SCRIPT, "args": " ".join(lock_arguments(spec)),
              "pythons": " ".join(dict.fromkeys([python_command(spec), "python3"]))} if installs else None,
    )
    return BuildContext(files)
