"""The Environment API: pydantic models that are the single source of truth for the CRD schema.

Field names follow Azure ML's Environment (python, docker, environmentVariables, ...) in Kubernetes camelCase.
Every field carries a description because `kubectl explain` shows it. Rules the API server can enforce are also
declared as CEL `x-kubernetes-validations` (see `crd.py`); the same rules are checked here so `kenv render` and
the operator give the same message for a file that never reached a cluster.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kenv import validation

GROUP = "kenv.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
ENVIRONMENT_LABEL = "kenv.dev/environment"  # pods opt in with it (or the ClusterEnvironment one)
CLUSTER_ENVIRONMENT_LABEL = "kenv.dev/cluster-environment"

# Conservative image reference: registry[:port]/path[:tag][@sha256:hex]. Anything with whitespace, quotes or
# newlines is refused so a base image can never smuggle an extra Dockerfile instruction.
IMAGE_REF_PATTERN = (
    r"^[a-zA-Z0-9][a-zA-Z0-9._-]*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)
# spec.docker.baseImage may also start with `/`: Azure ML's guide writes a private image relative to
# docker.base_image_registry.address that way (`/team/img:1.2`). Only valid with baseImageRegistry (checked by
# DockerSection and its CEL rules).
BASE_IMAGE_PATTERN = "^/?" + IMAGE_REF_PATTERN.removeprefix("^")
# An image without a registry host, as joined after baseImageRegistry.address: lower-case path components, then
# an optional tag and digest (so address + "/" + it is an IMAGE_REF_PATTERN reference).
RELATIVE_IMAGE_PATTERN = (
    r"^/?[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)
# Docker's rule for "the first path component is a registry host": it contains `.` or `:` or is `localhost`.
HOSTED_IMAGE_PATTERN = r"^/?(localhost|[^/]*[.:][^/]*)/"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
K8S_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# One requirement or option per line; never a line break, so a list item cannot become two lines. pip splits
# requirements files with str.splitlines(), which also breaks on \v \f \x1c-\x1e \x85 \u2028 \u2029.
# Regex escapes understood by pydantic (Rust regex) and the API server (Go RE2) alike.
LINE_BREAKS = r"\r\n\x0b\x0c\x1c\x1d\x1e\x{85}\x{2028}\x{2029}"
SingleLine = Annotated[str, StringConstraints(pattern=f"^[^{LINE_BREAKS}]+$", min_length=1, max_length=1024)]
EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN, max_length=256)]
K8sName = Annotated[str, StringConstraints(pattern=K8S_NAME_PATTERN, max_length=253)]
# Printable ASCII without spaces, quotes, backslashes or backticks: no line breaks, no look-alike hosts (IDNs
# are written in punycode).
Url = Annotated[
    str, StringConstraints(pattern=r"^https?://[\x21\x23-\x26\x28-\x5b\x5d-\x5f\x61-\x7e]+$", max_length=2048)
]
Quantity = Annotated[
    int | str,
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]


class KenvModel(BaseModel):
    """Base: camelCase aliases for the API, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ConfigMapKeyRef(KenvModel):
    name: K8sName = Field(description="Name of a ConfigMap in the Environment's namespace.")
    key: str = Field(description="Key inside the ConfigMap whose value is used.", min_length=1)


class SecretRef(KenvModel):
    name: K8sName = Field(description="Name of a Secret in the Environment's namespace.")


class SecretKeyRef(KenvModel):
    name: K8sName = Field(description="Name of a Secret in the pod's namespace.")
    key: str = Field(description="Key inside the Secret whose value becomes the variable.", min_length=1)
    optional: bool = Field(False, description="If true, a missing Secret or key leaves the variable unset.")


class PipInstaller(StrEnum):
    PIP = "pip"
    UV = "uv"


class PipSection(KenvModel):
    """pip dependencies, installed after conda (Azure ML: Environment.from_pip_requirements / add_pip_package)."""

    requirements: str | None = Field(
        None,
        description="Body of a requirements.txt: per line a PEP 508 requirement (markers, `--hash` options and "
        "comments allowed), a URL, or one of the options -i/--index-url, --extra-index-url, -f/--find-links, "
        "--trusted-host, --pre, --prefer-binary, --only-binary, --no-binary, --require-hashes. `-r`/`-c` "
        "includes are refused: the file is rendered alone into the build context.",
        max_length=262144,
    )
    packages: list[SingleLine] = Field(
        default_factory=list,
        description="Extra requirements, one PEP 508 requirement each (e.g. `torch==2.4.0`, `pkg @ https://...`).",
    )
    index_url: Url | None = Field(None, description="pip --index-url for every pip install of this build.")
    extra_index_urls: list[Url] = Field(default_factory=list, description="pip --extra-index-url values.")
    installer: PipInstaller = Field(
        PipInstaller.PIP,
        description="What installs the requirements in the build: pip (default, the image's own pip) or uv "
        "(fetched from the same indexes for the build step only, not kept in the image; faster). uv resolves "
        "across indexes as pip does and compiles bytecode as pip does, but may pick other versions where the "
        "requirements leave a choice (README, \"Caches and uv\"); it ignores --pre, --prefer-binary and "
        "--trusted-host in a requirements file, so they are refused with uv. The conda file's pip list is "
        "always installed by pip.",
    )

    @field_validator("requirements")
    @classmethod
    def _requirements_lines(cls, value: str | None) -> str | None:
        """Each line (continuations joined as pip does) is an allowed option, a PEP 508 requirement with
        optional --hash options and comment, or a URL. Includes (-r/-c) are refused."""
        if value is not None:
            validation.check_requirements_body(value, "spec.pip.requirements")
        return value

    @field_validator("packages")
    @classmethod
    def _pep508_packages(cls, value: list[str]) -> list[str]:
        return validation.check_each(value, validation.check_requirement, "spec.pip.packages")

    @model_validator(mode="after")
    def _uv_reads_the_options(self) -> PipSection:
        if self.installer is PipInstaller.UV:
            validation.check_uv_requirements(self.requirements or "", int(self.index_url is not None),
                                             "spec.pip.requirements")
        return self


class ChannelCredential(KenvModel):
    """Credentials for the conda channels of one host, written to rattler's authentication file for the build."""

    # The API server's copy of `_host_only` (a static message: CEL cannot quote the value).
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"self.host.matches('{validation.CHANNEL_HOST_PATTERN}')",
                    "message": "host: write the host name only, in lower case, without scheme, port or path "
                    "(conda.example.com), or *.example.com for every host under example.com",
                },
            ]
        }
    )

    host: str = Field(
        description="Host name of the channel server, lower case, without scheme, port or path (e.g. "
        "`conda.example.com` for https://conda.example.com:8443/team), or `*.example.com` for every host under "
        "example.com (and example.com itself). Every channel URL on that host is fetched with these credentials.",
        min_length=1,
        max_length=253,
    )
    secret_name: K8sName = Field(
        description="Secret in the Environment's namespace (a ClusterEnvironment's: the operator's build "
        "namespace) with keys `username` and `password` (type Opaque or kubernetes.io/basic-auth: HTTP basic "
        "authentication), or `token` (sent as a bearer token), or `condaToken` (an anaconda.org-style token, put in "
        "the URL as /t/<token>/). Read when a build starts; never put a password in the spec."
    )

    @field_validator("host")
    @classmethod
    def _host_only(cls, value: str) -> str:
        if problem := validation.channel_host_problem(value):
            raise ValueError(problem)
        return value


class CondaSection(KenvModel):
    """conda dependencies, solved by micromamba (Azure ML: from_conda_specification / CondaDependencies)."""

    environment_yaml: str | None = Field(
        None,
        description="Body of a conda environment.yml (name, channels, dependencies with an optional pip list). "
        "Mutually exclusive with the structured channels/packages/pipPackages fields.",
        max_length=262144,
    )
    channels: list[SingleLine] = Field(
        default_factory=list,
        description="Conda channels, in priority order: names (e.g. `conda-forge`) or http(s) URLs.",
    )
    packages: list[SingleLine] = Field(
        default_factory=list,
        description="Conda match specs: `[channel::]name[ ][version[ build]]` (e.g. `numpy=1.26`, "
        "`numpy >=1.26,<2`).",
    )
    pip_packages: list[SingleLine] = Field(
        default_factory=list,
        description="PEP 508 requirements installed by pip inside the conda environment.",
    )
    channel_credentials: list[ChannelCredential] = Field(
        default_factory=list,
        description="Credentials for private channels, one entry per host, taken from Secrets when a build "
        "starts and mounted into the build pod only: never in the image, the build context or its content hash, "
        "so adding or rotating them builds nothing by itself (a build that failed is retried when its Secret "
        "changes). Works with environmentYaml or the structured fields. Needs build.builder kaniko and the "
        "operator's rattler conda installer (the default).",
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["host"]},
    )

    @field_validator("environment_yaml")
    @classmethod
    def _environment_file(cls, value: str | None) -> str | None:
        """A mapping whose channels are channel names or URLs and whose dependencies are conda match specs or
        one `pip:` list of requirement lines."""
        if value is not None:
            validation.parse_environment_yaml(value, "spec.conda.environmentYaml")
        return value

    @field_validator("channels")
    @classmethod
    def _channel_names(cls, value: list[str]) -> list[str]:
        return validation.check_each(value, validation.check_channel, "spec.conda.channels")

    @field_validator("packages")
    @classmethod
    def _match_specs(cls, value: list[str]) -> list[str]:
        return validation.check_each(value, validation.check_conda_spec, "spec.conda.packages")

    @field_validator("pip_packages")
    @classmethod
    def _pep508_pip_packages(cls, value: list[str]) -> list[str]:
        return validation.check_each(value, validation.check_requirement, "spec.conda.pipPackages")

    @field_validator("channel_credentials")
    @classmethod
    def _one_entry_per_host(cls, value: list[ChannelCredential]) -> list[ChannelCredential]:
        first: dict[str, int] = {}
        for index, credential in enumerate(value):
            if credential.host in first:
                raise ValueError(
                    f"spec.conda.channelCredentials[{index}].host {validation.show(credential.host)} is already "
                    f"given by spec.conda.channelCredentials[{first[credential.host]}]: keep one entry per host"
                )
            first[credential.host] = index
        return value

    @model_validator(mode="after")
    def _one_form(self) -> CondaSection:
        if self.environment_yaml and (self.channels or self.packages or self.pip_packages):
            raise ValueError(
                "spec.conda: give either environmentYaml or the structured channels/packages/pipPackages, not both"
            )
        return self


class PythonSection(KenvModel):
    version: Annotated[str, StringConstraints(pattern=r"^3(\.[0-9]+){0,2}$")] | None = Field(
        None, description="Python version for the conda environment (e.g. `3.11`). Needs conda or pip packages."
    )
    user_managed_dependencies: bool = Field(
        False,
        description="If true, nothing is installed: the base image or Dockerfile is used as is and the pods run "
        "interpreterPath (Azure ML user_managed_dependencies). Forbids pip and conda.",
    )
    # Plain path characters only: the path is the command of the pip RUN line (no `;`, `$`, `|`, quotes...).
    interpreter_path: Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9._+/-]*$")] | None = Field(
        None, description="Absolute path of the python to run; exposed to pods as KENV_PYTHON."
    )


def registry_host(image: str) -> str | None:
    """The registry host an image reference names, or None (Docker Hub, or baseImageRegistry.address when one
    is set). `team/img:1.2` and `python:3.11` name none; a leading `/` is ignored."""
    match = re.match(HOSTED_IMAGE_PATTERN, image)
    return match.group(1) if match else None


class RegistryCredentials(KenvModel):
    # 253 (a DNS name) + ":65535"; the bound also keeps the CEL rules' cost estimate small.
    address: Annotated[
        str, StringConstraints(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9.-]*(:[0-9]+)?$", max_length=259)
    ] = Field(
        description="Registry host[:port] of the private base image (Azure ML docker.base_image_registry.address). "
        "A baseImage without a registry host (`team/img:1.2`, `/team/img:1.2`) is pulled from it."
    )
    secret_name: K8sName = Field(
        description="Secret in the Environment's namespace with the credentials: either type "
        "kubernetes.io/dockerconfigjson, or keys `username` and `password`. Never put a password in the spec."
    )


class DockerSection(KenvModel):
    # The API server's copy of `_registry_consistent` (static messages: CEL cannot quote the values).
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.baseImage) || !self.baseImage.startsWith('/') || has(self.baseImageRegistry)",
                    "message": "baseImage starting with '/' is relative to baseImageRegistry.address: set "
                    "baseImageRegistry or write the full image reference (registry/repository:tag)",
                },
                {
                    "rule": "!has(self.baseImage) || !has(self.baseImageRegistry) || "
                    "self.baseImage.startsWith(self.baseImageRegistry.address + '/') || "
                    "self.baseImage.startsWith('/' + self.baseImageRegistry.address + '/') || "
                    f"(!self.baseImage.matches('{HOSTED_IMAGE_PATTERN}') && "
                    f"self.baseImage.matches('{RELATIVE_IMAGE_PATTERN}'))",
                    "message": "baseImage must be pulled from baseImageRegistry.address: write it relative to the "
                    "address in lower case (team/img:1.2) or qualified with it (<address>/team/img:1.2); an image "
                    "of another registry needs that registry's address",
                },
            ]
        }
    )

    base_image: Annotated[str, StringConstraints(pattern=BASE_IMAGE_PATTERN, max_length=512)] | None = Field(
        None,
        description="Base image to build on (Azure ML docker.base_image). Exclusive with dockerfile. With "
        "baseImageRegistry, an image without a registry host (`team/img:1.2` or `/team/img:1.2`) is pulled from "
        "baseImageRegistry.address, as in Azure ML; one with a host must use that address.",
    )
    dockerfile: str | None = Field(
        None,
        description="Inline Dockerfile used as the base (Azure ML docker.base_dockerfile); pip/conda layers are "
        "added after it. Exclusive with baseImage and dockerfileFrom.",
        max_length=262144,
    )
    dockerfile_from: ConfigMapKeyRef | None = Field(
        None, description="Take the base Dockerfile from a ConfigMap key instead of inline."
    )
    base_image_registry: RegistryCredentials | None = Field(
        None, description="Credentials for pulling a private base image."
    )
    shm_size: Quantity | None = Field(
        None,
        description="Size of /dev/shm for training pods (Azure ML docker.shm_size), e.g. `2Gi`; injected as a "
        "memory-backed emptyDir.",
    )

    @property
    def resolved_base_image(self) -> str | None:
        """The reference the build pulls: baseImage after baseImageRegistry.address when it names no registry
        host (Azure ML's rule for `team/img:1.2` and `/team/img:1.2`), else baseImage as written."""
        image, registry = self.base_image, self.base_image_registry
        if image is None or registry is None:
            return image
        relative = image.removeprefix("/")
        return relative if registry_host(relative) else f"{registry.address}/{relative}"

    @model_validator(mode="after")
    def _registry_consistent(self) -> DockerSection:
        """The credentials of baseImageRegistry only help if the image is pulled from its address: refuse an
        image of another registry instead of pulling it anonymously (or from Docker Hub) with the wrong ones.
        Hosts compare exactly: credentials are looked up by the address string."""
        image, registry = self.base_image, self.base_image_registry
        if image is None:
            return self
        shown = validation.show(image)
        if registry is None:
            if image.startswith("/"):
                raise ValueError(
                    f"spec.docker.baseImage {shown} starts with '/', so it is relative to "
                    "spec.docker.baseImageRegistry.address, which is not set: add baseImageRegistry {address, "
                    "secretName} or write the full reference (registry/repository:tag)"
                )
            return self
        host = registry_host(image)
        if host is not None and host != registry.address:
            path = validation.show(image.removeprefix("/")[len(host) + 1 :])
            raise ValueError(
                f"spec.docker.baseImage {shown} names registry {host} but spec.docker.baseImageRegistry.address is "
                f"{registry.address}: write the image relative to the address ({path}) or qualified with it "
                f"({registry.address}/...), or set the address to {host}"
            )
        if host is None and not re.fullmatch(RELATIVE_IMAGE_PATTERN, image):
            raise ValueError(
                f"spec.docker.baseImage {shown} is joined to spec.docker.baseImageRegistry.address "
                f"({registry.address}/...), and the repository path after a registry host is lower case only: "
                "write it in lower case"
            )
        return self


class SecretEnvVar(KenvModel):
    name: EnvName = Field(description="Variable name in the training container.")
    secret_key_ref: SecretKeyRef = Field(description="The Secret key whose value the variable takes.")


class SecretEnvFrom(KenvModel):
    secret_name: K8sName = Field(description="Secret in the pod's namespace; every key becomes a variable.")
    prefix: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = Field(
        None, description="Prefix added to every variable name."
    )
    optional: bool = Field(False, description="If true, a missing Secret is not an error.")


class BootstrapMode(StrEnum):
    ALL = "All"
    RANK_ZERO = "RankZero"


class Bootstrap(KenvModel):
    """A script run before the training command, injected at admission (never baked into the image)."""

    script: str = Field(
        description="Script run before the container's command. A first line starting with #! picks its "
        "interpreter (e.g. #!/bin/bash, #!/usr/bin/env python3): it runs as that file would, from $TMPDIR "
        "(default /tmp, which must then be writable). Without #! it runs with `bash -e` where the image has bash, "
        "else `sh -e`: the first failing command stops it. A failure fails the container with the script's exit "
        "code, and its termination message (kubectl describe pod) holds that code and the script's last output "
        "lines; the command does not run.",
        min_length=1,
    )
    mode: BootstrapMode = Field(
        BootstrapMode.ALL,
        description="All: every pod runs the script (per-pod setup such as pip installs into the container). "
        "RankZero: exactly one pod of the whole job, the one whose rank is 0, runs it and the others wait for its "
        "completion marker: for preparing data on a volume shared by all pods. Not Azure ML's per-node local rank "
        "0: files RankZero writes outside the shared volume exist in rank 0's pod only.",
    )
    rank_variable: EnvName | None = Field(
        None, description="Variable holding the pod's rank; when set in the pod it wins. Default: KENV_RANK_ZERO, "
        "which kenv sets from the pod's labels for KubeRay (the head is rank 0), PyTorchJob (job-role master) and "
        "JobSet (completion index 0 of job global index 0) pods, then RANK, then JOB_COMPLETION_INDEX, else 0."
    )
    marker_dir: Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9._+/-]*$")] = Field(
        "/kenv-shared",
        description="RankZero mode: directory on a volume shared by all ranks (e.g. a ReadWriteMany PVC the "
        "pod mounts) where rank 0 writes its completion marker.",
    )
    timeout_seconds: int = Field(1800, ge=1, description="How long non-zero ranks wait for the marker.")


class Builder(StrEnum):
    KANIKO = "kaniko"
    BUILDAH = "buildah"
    BUILDKIT = "buildkit"


class ResourceRequirements(KenvModel):
    requests: dict[str, Quantity] = Field(default_factory=dict, description="Minimum resources of the build pod.")
    limits: dict[str, Quantity] = Field(default_factory=dict, description="Maximum resources of the build pod.")


class BaseImageTracking(KenvModel):
    enabled: bool = Field(False, description="Re-resolve the base image digest on a timer; rebuild if it moved.")
    interval_seconds: int = Field(3600, ge=60, description="How often the base image digest is checked.")


class BuildSettings(KenvModel):
    builder: Builder = Field(
        Builder.KANIKO,
        description="Image builder run by the build Job: kaniko (default; root in the pod, seccomp RuntimeDefault, "
        "no privilege escalation, the runtime's default capabilities minus NET_RAW, NET_BIND_SERVICE, SETPCAP), "
        "buildah (in a user namespace of its own: seccomp Unconfined and only SETUID, SETGID, SETFCAP) or buildkit "
        "(rootless BuildKit as user 1000: seccomp and AppArmor Unconfined). Each is tested in real pods.",
    )
    cache: bool = Field(True, description="Reuse layers from the cache repository between builds, and (Kaniko "
                        "with the operator's package cache) downloaded packages. false: a build from scratch.")
    timeout_seconds: int = Field(3600, ge=60, le=86400, description="activeDeadlineSeconds of the build Job.")
    resources: ResourceRequirements | None = Field(
        None, description="Resources of the build container. For each resource named here (cpu, memory, …) these "
        "requests and limits replace the operator's defaults (KENV_BUILD_RESOURCES); other resources keep them.")
    ca_bundle: ConfigMapKeyRef | None = Field(
        None,
        description="PEM CA bundle trusted by pip, conda and the builder when they reach package indexes and "
        "registries (e.g. behind a TLS-intercepting proxy).",
    )
    track_base_image: BaseImageTracking | None = Field(None, description="Rebuild when the base image moves.")
    incremental: bool = Field(
        False,
        description="An edit that only adds pip requirement lines or changes a line's version (pip installer), "
        "or changes the conda dependencies (rattler installer; same channels and pip list), with nothing else in "
        "the image changed, is installed into the current version's image in a pod and pushed as more layers on "
        "top of it, instead of a full build: Ready in seconds. The new image keeps what the current one resolved "
        "and adds what the edit needs (as `pip install` or a conda install in a running environment does), so it "
        "may differ from a full build of the same content, which might pick newer versions of unpinned "
        "dependencies; its tag names both the content and the image it was built on. A kenv.dev/rebuild "
        "annotation builds from scratch.",
    )


class EnvironmentSpec(KenvModel):
    """What a training environment is made of. Image content: python, pip, conda, docker (minus shmSize).
    Injected at admission only: environmentVariables, secretEnv, secretEnvFrom, bootstrap, docker.shmSize."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.docker) || (has(self.docker.baseImage) ? 1 : 0) + "
                    "(has(self.docker.dockerfile) ? 1 : 0) + (has(self.docker.dockerfileFrom) ? 1 : 0) <= 1",
                    "message": "docker.baseImage, docker.dockerfile and docker.dockerfileFrom are mutually "
                    "exclusive: keep one",
                },
                {
                    "rule": "!(has(self.python) && has(self.python.userManagedDependencies) && "
                    "self.python.userManagedDependencies) || (!has(self.pip) && !has(self.conda))",
                    "message": "python.userManagedDependencies forbids pip and conda: remove them or set it false",
                },
                {
                    "rule": "!has(self.conda) || !has(self.conda.channelCredentials) || "
                    "size(self.conda.channelCredentials) == 0 || !has(self.build) || !has(self.build.builder) || "
                    "self.build.builder == 'kaniko'",
                    "message": "conda.channelCredentials need build.builder kaniko: buildah and buildkit do not "
                    "expose a mounted Secret to RUN steps; set builder kaniko or remove channelCredentials",
                },
            ]
        }
    )

    description: str | None = Field(None, description="Free text shown to users of the environment.")
    python: PythonSection = Field(default_factory=PythonSection, description="Python settings.")
    pip: PipSection | None = Field(None, description="pip requirements installed into the image.")
    conda: CondaSection | None = Field(None, description="conda environment solved into the image.")
    docker: DockerSection = Field(default_factory=DockerSection, description="Base image or Dockerfile.")
    environment_variables: dict[str, str] = Field(
        default_factory=dict, description="Variables set in training containers (never baked into the image)."
    )
    secret_env: list[SecretEnvVar] = Field(
        default_factory=list, description="Variables taken from Secret keys in the pod's namespace."
    )
    secret_env_from: list[SecretEnvFrom] = Field(
        default_factory=list, description="Whole Secrets in the pod's namespace exposed as variables."
    )
    bootstrap: Bootstrap | None = Field(None, description="Script run before the training command.")
    build: BuildSettings = Field(default_factory=BuildSettings, description="How the image is built.")

    @model_validator(mode="after")
    def _consistent(self) -> EnvironmentSpec:
        bases = [n for n in ("base_image", "dockerfile", "dockerfile_from") if getattr(self.docker, n)]
        if len(bases) > 1:
            raise ValueError(
                "spec.docker: baseImage, dockerfile and dockerfileFrom are mutually exclusive; keep one"
            )
        if self.python.user_managed_dependencies and (self.pip or self.conda):
            raise ValueError(
                "spec.python.userManagedDependencies forbids pip and conda: remove them or set it false"
            )
        if self.conda and self.conda.channel_credentials and self.build.builder is not Builder.KANIKO:
            raise ValueError(
                f"spec.conda.channelCredentials need spec.build.builder kaniko, not {self.build.builder.value}: "
                f"{self.build.builder.value} does not expose a mounted Secret to RUN steps, where conda installs; "
                "set spec.build.builder to kaniko or remove spec.conda.channelCredentials"
            )
        bad = [k for k in self.environment_variables if not re.fullmatch(ENV_NAME_PATTERN, k)]
        if bad:
            raise ValueError(f"spec.environmentVariables: {bad[0]!r} is not a valid variable name")
        return self


def spec_from_body(spec: dict[str, Any]) -> EnvironmentSpec:
    """Validate a CR spec; raises pydantic.ValidationError (see `errors.describe_validation_error`)."""
    return EnvironmentSpec.model_validate(spec)
