"""Incremental builds (spec.build.incremental): an edit that only adds pip requirement lines, or changes a line's
version (with pip or uv, as spec.pip.installer says), or changes the conda dependencies (rattler installer), is
installed into the current version's image and pushed as layers on top of it, instead of a full build.

Pure functions: whether an edit qualifies (`increment`), the plan naming its image and Job (`plan_increment`)
and the Job (`increment_job`). The Job's init container runs the previous image itself with kenv-delta.py
(delta_script.py), which installs the requirements and writes what changed as layer tars into an emptyDir; its
main container runs the operator's image, whose `kenv append-layers` pushes them onto the previous image in the
registry (oci.ImageStore.append_layers) and writes the new digest to the termination log, as every builder does.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from kenv import builds, dockerparse
from kenv.conda_installer import split_dependencies
from kenv.config import OperatorSettings
from kenv.models import EnvironmentSpec, PipInstaller
from kenv.render import (
    CA_FILE,
    CA_VARIABLES,
    CACHE_ARGS,
    CACHE_MOUNT,
    CONDA_PIP_FILE,
    CONDA_PREFIX,
    INSTALLER_REQUIREMENTS,
    INSTALLER_SCRIPT,
    LOCK_SCRIPT,
    UV_FILE,
    BuildContext,
    cache_build_args,
    lock_arguments,
    python_command,
)
from kenv.versions import Snapshot

REQUIREMENTS = "requirements.txt"
INCREMENTAL_REASON = "IncrementalBuild"  # a version's reason (versions.Snapshot) when an incremental build made it
# ...or found its image in the registry already (the same edit of another Environment built it): a link all the same
INCREMENTAL_FOUND_REASON = "IncrementalImageFound"
CHAIN_LINKS = (INCREMENTAL_REASON, INCREMENTAL_FOUND_REASON)
SAME_IMAGE_REASON = "DefinitionChanged"  # a version of the previous one's image: only what pods receive changed
ENVIRONMENT = "environment.yml"
# ARGs kenv's Dockerfile declares, which the install container sets the same way (CA, pip's system packages) or
# needs not (the package caches' options, given to kenv-delta.py).
KENV_ARGS = frozenset({*CA_VARIABLES, *CACHE_ARGS, "PIP_BREAK_SYSTEM_PACKAGES"})
DELTA_SCRIPT = "kenv-delta.py"  # kenv/delta_script.py, added to the Job's context
OUT_DIR = "/kenv/out"
TOOLS_DIR = "/kenv/tools"  # py-rattler and PyYAML for a conda update, copied there from the conda installer image
# The tools container: the conda installer image's py-rattler and PyYAML copied into TOOLS_DIR, or installed there
# from PyPI when that image lacks them, as the Dockerfile's conda stage installs them (render.INSTALLER_REQUIREMENTS).
COPY_TOOLS = """import os, shutil, subprocess, sys
out, cache, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
try:
    import rattler, yaml
except ImportError:
    sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", cache, "--disable-pip-version-check",
                              "--no-warn-script-location", "--target", out] + wanted))
for module in (rattler, yaml):
    folder = os.path.dirname(module.__file__)
    shutil.copytree(folder, os.path.join(out, os.path.basename(folder)))
"""
# py-rattler's wheel is abi3 for CPython 3.10 and newer: the conda environment's python must be one to update it.
RATTLER_PYTHON = (3, 10)
LAYERS = ("layer.tar", "lock.tar")  # the packages' changes, then the lock alone: the image's last layer
# Incremental versions in a row on one full build before the next edit is built in full, which flattens them: each
# adds two layers, and every layer is one more lower directory each container of the image mounts (overlayfs
# stacks at most ~128 on 4 KiB pages) and one more blob each node pulls.
MAX_CHAIN = 10
DOCKER_CONFIG_DIR = "/kenv/docker"
# The push container runs the operator's image, as the operator does: not root, nothing added.
PUSH_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": 65532,  # the chart's operator user
    "runAsGroup": 65532,
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# The install container runs the previous image as its own user (the one its build's RUN steps ran as) and only
# writes files that user owns, as pip in a running environment does: no capability is needed.
INSTALL_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass(frozen=True)
class Increment:
    """An edit that qualifies: the image it is installed into (repo@digest), the requirement lines it adds or
    changes (as they are now) and the conda dependencies it adds or changes (`-spec` for one it drops); with any
    conda change the whole environment file is solved again into the image's prefix."""

    parent_image: str
    added: tuple[str, ...]
    conda: tuple[str, ...] = ()
    # the context's requirements files the install runs `pip install -r` (or uv's) on, in the Dockerfile's order
    requirements: tuple[str, ...] = (REQUIREMENTS,)
    # what installs spec.pip's requirements.txt, as in the Dockerfile (the environment file's pip list: pip)
    installer: PipInstaller = PipInstaller.PIP

    @property
    def summary(self) -> str:
        """What the increment installs, for the image's history."""
        pip = "uv pip" if self.installer is PipInstaller.UV else "pip"
        parts = ([f"conda {' '.join(self.conda)}"] if self.conda else []) + \
            ([f"{pip} install {' '.join(self.added)}"] if self.added else [])
        return "; ".join(parts)

    @property
    def parent_digest(self) -> str:
        return self.parent_image.rpartition("@")[2]


def increment(previous: BuildContext, new: BuildContext, parent_hash: str, parent_image: str,
              spec: EnvironmentSpec, destination_repo: str) -> Increment | str:
    """The increment from the current version's context to the new one, or why the edit needs a full build.

    previous: the current version's definition rendered now; it must still hash to the content its image was
    built from (parent_hash), or something outside the spec (a Dockerfile or CA in a ConfigMap) moved."""
    if parent_image.rpartition("@")[0] != destination_repo or "@sha256:" not in parent_image:
        return "the current image is not in the destination repository"
    if previous.hash != parent_hash:
        return "the current version's definition no longer renders the content its image was built from"
    steps = final_stage_steps(new.files.get("Dockerfile", ""))
    if steps:
        return f"the Dockerfile's {steps[0]} would change how pip runs, and only a full build runs it"
    conda = conda_changes(previous.files.get(ENVIRONMENT), new.files.get(ENVIRONMENT), INSTALLER_SCRIPT in new.files)
    if isinstance(conda, str):
        return conda
    if conda and spec.conda is not None and spec.conda.channel_credentials:
        return "a conda change with channelCredentials needs a full build: incremental install pods get no credentials"
    others = {name for name in set(previous.files) | set(new.files) if name not in (REQUIREMENTS, ENVIRONMENT)}
    if any(previous.files.get(name) != new.files.get(name) for name in others):
        return "more than the pip requirements and conda dependencies changed"
    old_lines = Counter(previous.files.get(REQUIREMENTS, "").splitlines())
    new_list = new.files.get(REQUIREMENTS, "").splitlines()
    new_lines = Counter(new_list)
    extra = new_lines - old_lines
    added = tuple(line for line in new_list if extra[line] > 0)
    if any(line.startswith("-") for line in added):
        return "an added line is a pip option"
    unmatched = removed_projects(list((old_lines - new_lines).elements()), added)
    if unmatched:
        return f"requirement lines were removed ({', '.join(unmatched)}), not only changed"
    if not added and not conda:
        return "no requirement line or conda dependency was added or changed"
    # After a conda update the pip steps run again, as a full build runs them after its conda stage: a conda package
    # that replaced a pip-installed one of another version is put back, a dependency one dropped comes from PyPI.
    requirements = tuple(name for name in (CONDA_PIP_FILE, REQUIREMENTS) if name in new.files and
                         (conda or name == REQUIREMENTS))
    installer = spec.pip.installer if spec.pip is not None else PipInstaller.PIP
    return Increment(parent_image=parent_image, added=added, conda=conda, requirements=requirements,
                     installer=installer)


def chain_depth(snapshots: Iterable[Snapshot], current: int) -> int:
    """How many incremental builds version `current`'s image carries on its last full build, as the versions kept
    record them: each IncrementalBuild (or IncrementalImageFound) version back from it counts, a version of the same
    image (variables, secrets changed) is passed over, any other build ends the count. A version no longer kept
    before the chain's start counts as MAX_CHAIN: with fewer versions kept than that, chains are flattened sooner,
    never later."""
    by_number = {snapshot.number: snapshot for snapshot in snapshots}
    depth, number = 0, current
    while number in by_number and by_number[number].reason in (*CHAIN_LINKS, SAME_IMAGE_REASON):
        depth += by_number[number].reason in CHAIN_LINKS
        number -= 1
    if number >= 1 and number not in by_number:  # pruned (or deleted) inside the chain: how deep is unknown, so
        return max(depth, MAX_CHAIN)  # as deep as allowed: a full build flattens it
    return depth


def conda_changes(previous: str | None, new: str | None, rattler: bool) -> tuple[str, ...] | str:
    """The conda dependencies added or changed (as they are now) and dropped (`-spec`) between two rendered
    environment files, or why the change needs a full build. Only the dependency list may change: the channels,
    the pip list (installed by the image's pip step) and anything else stay. A dropped or changed dependency is
    fine, unlike a pip line: rattler installs the solution exactly, removing what no dependency needs now."""
    if previous == new:
        return ()
    if previous is None or new is None:
        return "a conda environment was added or removed"
    if not rattler:
        return "conda environments build incrementally with the rattler installer only (KENV_CONDA_INSTALLER)"
    old_document, new_document = yaml.safe_load(previous) or {}, yaml.safe_load(new) or {}
    old_channels, old_specs, old_pip = split_dependencies(old_document)
    new_channels, new_specs, new_pip = split_dependencies(new_document)
    if old_channels != new_channels:
        return "the conda channels changed"
    if old_pip != new_pip:
        return "the environment file's pip list changed"
    if {key: value for key, value in old_document.items() if key != "dependencies"} != \
            {key: value for key, value in new_document.items() if key != "dependencies"}:
        return "more of the environment file than its dependencies changed"
    if python_specs(old_specs) != python_specs(new_specs):
        return "the conda environment's python changed"
    python = conda_python(new_specs)
    if python is None:
        return "the conda dependencies name no python to run the incremental install with"
    if python and python < RATTLER_PYTHON:
        return "the conda environment's python is older than py-rattler's 3.10, which updates it"
    gone, came = Counter(old_specs) - Counter(new_specs), Counter(new_specs) - Counter(old_specs)
    return tuple(spec for spec in new_specs if came[spec] > 0) + tuple(f"-{spec}" for spec in gone.elements())


def conda_python(specs: list[str]) -> tuple[int, ...] | None:
    """The python a conda environment's dependencies ask for: its major and minor version, () for any version or
    one the spec does not pin from below (an incremental build that finds an older one fails, and a full build
    follows), None when they name none (a conda environment without python)."""
    for spec in python_specs(specs):
        wanted = spec.rpartition("::")[2][len("python"):]
        version = re.search(r"(\d+)\.(\d+)", wanted)
        if version is None or any(operator in wanted for operator in ("<", "!", "|", ",")):
            return ()
        return int(version.group(1)), int(version.group(2))
    return None


def python_specs(specs: list[str]) -> list[str]:
    """The dependencies that name python itself (`python=3.11`, `conda-forge::python >=3.10`)."""
    return [spec for spec in specs
            if re.split(r"[\s=<>!~\[]", spec.rpartition("::")[2].strip(), maxsplit=1)[0] == "python"]


def removed_projects(gone: list[str], added: tuple[str, ...]) -> list[str]:
    """The lines gone from the requirements that no added line replaces. A line replaced by exactly one added line
    naming the same project under the same environment marker, with at least its extras, is a changed pin or
    specifier: `pip install -r` with the new file installs that project's new version over the old one (whose
    files become whiteouts). Any other removal needs a full build: pip never uninstalls what a requirement no
    longer asks for (a dropped extra's packages included)."""
    replacing: dict[tuple[str, str] | None, list[str]] = {}
    for line in added:
        replacing.setdefault(project_key(line), []).append(line)
    removed = Counter(project_key(line) for line in gone)

    def replaced(line: str) -> bool:
        key = project_key(line)
        new = replacing.get(key, [])
        return key is not None and removed[key] == 1 and len(new) == 1 and extras(line) <= extras(new[0])
    return [line for line in gone if not replaced(line)]


def project_key(line: str) -> tuple[str, str] | None:
    """The canonical project name a requirement line names by version, and its marker; None for anything else (an
    option, a hash option after it, a direct URL, which pip may leave installed when the version it names is the
    same)."""
    try:
        requirement = Requirement(line)
    except InvalidRequirement:
        return None
    return None if requirement.url else (canonicalize_name(requirement.name), str(requirement.marker or ""))


def extras(line: str) -> set[str]:
    """The extras a requirement line asks for (a line project_key named)."""
    return {canonicalize_name(extra) for extra in Requirement(line).extras}


def final_stage_steps(dockerfile: str) -> list[str]:
    """The final stage's ARG and SHELL instructions other than kenv's own (the CA and cache ARGs the install
    container sets itself): a RUN step sees them, a container running the image does not."""
    found: list[str] = []
    for instruction, arguments in dockerparse.final_stage(dockerfile):
        if instruction == "SHELL":
            found.append("SHELL")
        elif instruction == "ARG":
            found += [f"ARG {name}" for name in dockerparse.arg_names(arguments) if name not in KENV_ARGS]
    return found


def plan_increment(full: builds.BuildPlan, found: Increment) -> builds.BuildPlan:
    """The full build's plan with a tag naming the image built on too (the full tag only ever holds full builds)
    and a Job name of its own."""
    parent = found.parent_digest.partition(":")[2][:12]
    return replace(full, destination=f"{full.destination}-on-{parent}",
                   job_name=f"{full.job_name}-i{parent[:6]}")


def delta_script() -> str:
    return resources.files("kenv").joinpath("delta_script.py").read_text(encoding="utf-8")


def context_files(context: BuildContext) -> dict[str, str]:
    return {**context.files, DELTA_SCRIPT: delta_script()}


def increment_job(plan: builds.BuildPlan, found: Increment, spec: EnvironmentSpec, settings: OperatorSettings, *,
                  requested_by: str, context_files: list[str], has_docker_config: bool, has_ca: bool,
                  package_cache: bool) -> dict[str, Any]:
    """The Job of an incremental build: builds.build_job's (labels, deadline, context and credentials volumes),
    with the push container, the install container ahead of it and the layers' emptyDir."""
    if not settings.operator_image:
        raise ValueError("incremental builds need the operator's image (KENV_OPERATOR_IMAGE)")
    cache = builds.uses_package_cache(spec.build, settings, package_cache)
    out = {"name": "layers", "mountPath": OUT_DIR}
    push = {
        "image": settings.operator_image,
        "command": ["kenv", "append-layers"],
        "args": [f"--base={found.parent_image}", f"--destination={plan.destination}",
                 *[f"--layer={OUT_DIR}/{layer}" for layer in LAYERS],
                 f"--created-by=kenv incremental: {found.summary}",
                 *[f"--insecure-registry={registry}" for registry in settings.insecure_registry_list]],
        "env": [{"name": "DOCKER_CONFIG", "value": DOCKER_CONFIG_DIR}],
        "docker_config_dir": DOCKER_CONFIG_DIR, "conda_auth_dir": None,
        "security_context": PUSH_SECURITY_CONTEXT,
        # The gzipped layers are written to scratch space of their own, not the image's filesystem.
        "mounts": [{**out, "readOnly": True}, {"name": "scratch", "mountPath": "/tmp"}],
        "volumes": [{"name": "layers", "emptyDir": {}}, {"name": "scratch", "emptyDir": {}}],
    }
    job = builds.build_job(plan, spec.build, settings, requested_by=requested_by, context_files=context_files,
                           has_docker_config=has_docker_config, has_ca=has_ca, container=push)
    pod = job["spec"]["template"]["spec"]
    mount, volume = builds.package_cache_mount(settings) if cache else (None, None)
    if volume:
        pod["volumes"].append(volume)
    resources_ = pod["containers"][0]["resources"]
    pod["initContainers"] = [install_container(found, spec, settings, resources_, has_ca, mount)]
    if found.conda:
        pod["initContainers"].insert(0, tools_container(settings, resources_, has_ca, mount))
        pod["volumes"].append({"name": "tools", "emptyDir": {}})
    # The previous image is pulled with the destination's credentials, the operator's with the operator's own.
    pull_secrets = [plan.docker_config_secret] if has_docker_config else []
    pull_secrets += settings.operator_image_pull_secret_list
    if pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in pull_secrets]
    job["metadata"]["annotations"]["kenv.dev/builder"] = "incremental"
    return job


def cache_options(cache_mount: dict[str, Any] | None) -> dict[str, str]:
    """Each installer's cache option, as the Dockerfile's cache ARGs give it: the mounted package cache, or none."""
    if cache_mount:
        return cache_build_args(CACHE_MOUNT)
    return {name: without_cache for name, (without_cache, _) in CACHE_ARGS.items()}


def install_container(found: Increment, spec: EnvironmentSpec, settings: OperatorSettings,
                      resources_: dict[str, Any], has_ca: bool, cache_mount: dict[str, Any] | None) -> dict[str, Any]:
    """The container running the previous image: kenv-delta.py updates the conda environment (when the edit
    changed it), runs the image's pip steps again and writes the layers."""
    context = builds.CONTEXT_DIR
    cache = cache_options(cache_mount)
    env = [{"name": "PIP_BREAK_SYSTEM_PACKAGES", "value": "1"}]
    if has_ca:  # as the Dockerfile's ARGs: trusted by pip during the install only
        env += [{"name": name, "value": f"{context}/{CA_FILE}"}
                for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")]
    mounts = [{"name": "context", "mountPath": builds.CONTEXT_MOUNT, "readOnly": True},
              {"name": "layers", "mountPath": OUT_DIR}, *([cache_mount] if cache_mount else [])]
    arguments = [f"--out={OUT_DIR}", f"--lock-script={context}/{LOCK_SCRIPT}", f"--pip-cache={cache['KENV_PIP_CACHE']}"]
    if found.conda:
        mounts.append({"name": "tools", "mountPath": TOOLS_DIR, "readOnly": True})
        cuda = [f"--cuda={settings.conda_cuda}"] if settings.conda_cuda else []
        target = [f"--glibc={settings.conda_glibc}", *cuda]
        arguments += [f"--conda-environment={context}/{ENVIRONMENT}", f"--conda-prefix={CONDA_PREFIX}",
                      f"--conda-installer={context}/{INSTALLER_SCRIPT}", f"--conda-tools={TOOLS_DIR}",
                      *[f"--conda-option={option}" for option in [*target, cache["KENV_CONDA_CACHE"]]]]
    for name in found.requirements:  # in order; uv installs requirements.txt as the Dockerfile's uv step does
        uv = found.installer is PipInstaller.UV and name == REQUIREMENTS
        arguments.append(f"--{'uv-' if uv else ''}requirements={context}/{name}")
    if found.installer is PipInstaller.UV and REQUIREMENTS in found.requirements:
        arguments += [f"--uv-pin={context}/{UV_FILE}", f"--uv-cache={cache['KENV_UV_CACHE']}"]
    return {
        "name": "install",
        "image": found.parent_image,
        "command": [python_command(spec), f"{context}/{DELTA_SCRIPT}", *arguments, "--", *lock_arguments(spec)],
        "env": env,
        "resources": resources_,
        "securityContext": INSTALL_SECURITY_CONTEXT,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }


def tools_container(settings: OperatorSettings, resources_: dict[str, Any], has_ca: bool,
                    cache_mount: dict[str, Any] | None) -> dict[str, Any]:
    """The container putting py-rattler and PyYAML into TOOLS_DIR for the install container (COPY_TOOLS): the
    previous image has neither; the conda installer image (the full build's conda stage) has them or pip."""
    cache = cache_options(cache_mount)["KENV_PIP_CACHE"]
    env = [{"name": "PIP_BREAK_SYSTEM_PACKAGES", "value": "1"}]
    if has_ca:
        env += [{"name": name, "value": f"{builds.CONTEXT_DIR}/{CA_FILE}"} for name in ("PIP_CERT", "SSL_CERT_FILE")]
    return {
        "name": "tools",
        "image": settings.conda_installer_image,
        "command": ["python3", "-c", COPY_TOOLS, TOOLS_DIR, cache, *INSTALLER_REQUIREMENTS],
        "env": env,
        "resources": resources_,
        "securityContext": INSTALL_SECURITY_CONTEXT,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "context", "mountPath": builds.CONTEXT_MOUNT, "readOnly": True},
                         {"name": "tools", "mountPath": TOOLS_DIR}, *([cache_mount] if cache_mount else [])],
    }
