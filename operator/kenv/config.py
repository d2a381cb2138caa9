"""Operator configuration from KENV_* environment variables, validated at start so a bad value fails loudly."""

from __future__ import annotations

import re
from enum import StrEnum
from functools import lru_cache

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kenv.catalog import CatalogEntry, parse_catalog
from kenv.errors import field_path
from kenv.models import IMAGE_REF_PATTERN, K8S_NAME_PATTERN, ResourceRequirements

# Kaniko's upstream (GoogleContainerTools) was archived in June 2025; chainguard-dev/kaniko is the maintained
# fork (the one hack/build-kaniko.sh builds here). Its images are published by the kaniko-build/builder project.
MAINTAINED_KANIKO_IMAGE = "ghcr.io/kaniko-build/dist/chainguard-dev-kaniko/executor:v1.25.6"
UPSTREAM_KANIKO_IMAGE = "gcr.io/kaniko-project/executor:v1.23.2"
QUANTITY = re.compile(r"[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?")


class PendingImagePolicy(StrEnum):
    GATE = "gate"  # admit with a scheduling gate; the operator lifts it when the image is Ready
    REJECT = "reject"
    LAST_READY = "last-ready"  # admit with the last Ready version (its whole definition) and a warning


class CondaInstaller(StrEnum):
    """What solves and installs conda environments in builds (README, "Conda environments")."""

    RATTLER = "rattler"  # py-rattler (PyPI) in a builder stage of conda_installer_image; the prefix is copied over
    MICROMAMBA = "micromamba"  # /bin/micromamba copied from micromamba_image into the base image


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KENV_", extra="ignore")

    destination_repo: str = Field(
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)+$",
        description="Repository (no tag) every built image is pushed to, e.g. registry.local:5000/kenv/envs.",
    )
    push_secret: str | None = Field(
        None, pattern=K8S_NAME_PATTERN,
        description="dockerconfigjson Secret in the build namespace with push credentials for destination_repo.",
    )
    pull_secret: str | None = Field(
        None, pattern=K8S_NAME_PATTERN,
        description="Name of an imagePullSecret added to injected pods (must exist in the pod's namespace).",
    )
    build_namespace: str = Field(
        "kenv-system", pattern=K8S_NAME_PATTERN, description="Namespace where build Jobs run."
    )
    namespaces: str = Field("", description="Comma-separated namespaces to watch; empty = all namespaces.")
    max_parallel_builds: int = Field(4, ge=1, le=1000, description="Build Jobs allowed to run at once.")
    kaniko_image: str = Field(
        MAINTAINED_KANIKO_IMAGE, pattern=IMAGE_REF_PATTERN,
        description=f"Kaniko executor image. Default: the maintained fork (chainguard-dev/kaniko, the community "
        f"build of kaniko-build/builder); the archived upstream is {UPSTREAM_KANIKO_IMAGE}.",
    )
    build_resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(requests={"cpu": "100m", "memory": "256Mi"},
                                                     limits={"cpu": "4", "memory": "8Gi"}),
        description="Resources of every build container, as JSON ({requests, limits}). A spec's "
        "build.resources replaces them per resource: for each resource it names (cpu, memory, …), its requests "
        "and limits are used and the defaults' are not.",
    )
    buildah_image: str = Field("quay.io/buildah/stable:v1.38", pattern=IMAGE_REF_PATTERN)
    buildkit_image: str = Field("moby/buildkit:v0.34.2-rootless", pattern=IMAGE_REF_PATTERN)
    conda_installer: CondaInstaller = Field(CondaInstaller.RATTLER, description="rattler or micromamba.")
    conda_installer_image: str = Field(
        "python:3.11-slim-bookworm", pattern=IMAGE_REF_PATTERN,
        description="Image of the rattler build stage: any python >= 3.10 image. py-rattler and PyYAML are "
        "installed into it from PyPI during the build unless it has them (hack/images/conda-installer.Dockerfile "
        "builds one that has them, for clusters without PyPI).",
    )
    conda_glibc: str = Field(
        "2.28", pattern=r"^[0-9]+\.[0-9]+$",
        description="glibc version conda packages are solved for: your base images' glibc or older.",
    )
    conda_cuda: str | None = Field(
        None, pattern=r"^[0-9]+(\.[0-9]+){0,2}$",
        description="CUDA driver version conda packages are solved for (build pods see no GPU); unset: none.",
    )
    package_cache_dir: str = Field(
        "", pattern=r"^(/[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*)*$",
        description="Absolute host directory (no . or .. segments) mounted into Kaniko build pods (hostPath, "
        "created if missing) where pip, uv and rattler keep downloaded packages between builds; empty: no package "
        "cache. Every build on a node shares it: whoever can create an Environment can read and write it, as the "
        "cache repository.",
    )
    operator_image: str | None = Field(
        None, pattern=IMAGE_REF_PATTERN,
        description="The operator's own image (the chart sets it): incremental builds (spec.build.incremental) "
        "run it to push the new layers. Unset: such edits get a full build.",
    )
    operator_image_pull_secrets: str = Field(
        "", description="Comma-separated Secrets in the build namespace that pull the operator's image (the chart "
        "sets its imagePullSecrets): given to incremental build pods, which run that image.",
    )
    micromamba_image: str = Field("mambaorg/micromamba:2.0.5", pattern=IMAGE_REF_PATTERN)
    default_base_image: str = Field("python:3.11-slim-bookworm", pattern=IMAGE_REF_PATTERN)
    insecure_registries: str = Field(
        "", description="Comma-separated registries reached over plain HTTP (local development only)."
    )
    pending_image_policy: PendingImagePolicy = Field(PendingImagePolicy.GATE)
    history_limit: int = Field(
        20, ge=1, le=500, description="EnvironmentVersions kept per environment, besides those live pods use.")
    build_ttl_seconds: int = Field(3600, ge=0, description="ttlSecondsAfterFinished of build Jobs.")
    poll_seconds: float = Field(5.0, gt=0, description="How often unfinished environments are re-checked.")
    base_image_check_seconds: float = Field(
        60.0, gt=0, description="Timer granularity of base image tracking (each spec sets its own interval)."
    )
    reference_check_seconds: float = Field(
        30.0, gt=0, description="How often the ConfigMaps and Secrets Environments name are re-read for changes.",
    )
    catalog: str | None = Field(
        None, description="JSON list of curated ClusterEnvironments ({name, spec}; names start with kenv-) the "
        "operator keeps applied; `[]` deletes every curated one; unset leaves them alone.",
    )
    catalog_sync_seconds: float = Field(60.0, gt=0, description="How often the curated catalog is re-applied.")
    webhook_host: str = Field("127.0.0.1", description="Address the admission webhook listens on.")
    webhook_port: int = Field(9443, ge=0, le=65535)
    webhook_url_host: str | None = Field(
        None, description="Host the API server uses to reach the webhook when kenv manages the configuration."
    )
    webhook_managed: bool = Field(True, description="Let the operator write its MutatingWebhookConfiguration.")
    webhook_cert_dir: str | None = Field(None, description="Folder with tls.crt/tls.key/ca.crt (else generated).")
    metrics_port: int = Field(8000, ge=0, le=65535, description="Prometheus /metrics port (0 = off).")
    log_format: str = Field("text", pattern="^(text|json)$")
    leader_election: bool = Field(
        True, description="Reconcile only while holding the Lease lease_name in the build namespace (leader.py); "
        "false: every reconciling process acts (run one only).",
    )
    lease_name: str = Field("kenv-reconciler", pattern=K8S_NAME_PATTERN, description="The reconcilers' Lease.")
    lease_duration_seconds: float = Field(
        15.0, ge=3, le=300, description="How long a Lease not renewed keeps its holder: a dead leader is replaced "
        "within about this plus 2/15 of it.",
    )

    @field_validator("build_resources")
    @classmethod
    def _quantities(cls, value: ResourceRequirements) -> ResourceRequirements:
        for section in ("requests", "limits"):
            for name, quantity in getattr(value, section).items():
                if not QUANTITY.fullmatch(str(quantity)):
                    raise ValueError(f"{section}.{name}: {quantity!r} is not a Kubernetes quantity (e.g. 500m, "
                                     "2, 512Mi, 8Gi)")
        return value

    @field_validator("namespaces", "insecure_registries", "operator_image_pull_secrets")
    @classmethod
    def _strip_list(cls, value: str) -> str:
        return ",".join(item.strip() for item in value.split(",") if item.strip())

    @field_validator("operator_image_pull_secrets")
    @classmethod
    def _secret_names(cls, value: str) -> str:
        for name in filter(None, value.split(",")):
            if not re.fullmatch(K8S_NAME_PATTERN, name):
                raise ValueError(f"{name!r} is not a Secret name (lowercase letters, digits, '-' and '.')")
        return value

    @field_validator("catalog")
    @classmethod
    def _catalog_entries(cls, value: str | None) -> str | None:
        if value is not None:
            parse_catalog(value)  # a bad entry stops the operator at start, naming the entry and field
        return value

    @property
    def catalog_entries(self) -> list[CatalogEntry] | None:
        return None if self.catalog is None else parse_catalog(self.catalog)

    @property
    def namespace_list(self) -> list[str]:
        return [n for n in self.namespaces.split(",") if n]

    @property
    def insecure_registry_list(self) -> list[str]:
        return [r for r in self.insecure_registries.split(",") if r]

    @property
    def operator_image_pull_secret_list(self) -> list[str]:
        return [s for s in self.operator_image_pull_secrets.split(",") if s]


class ConfigError(RuntimeError):
    pass


@lru_cache(maxsize=1)
def get_settings() -> OperatorSettings:
    try:
        return OperatorSettings()  # type: ignore[call-arg]
    except ValidationError as error:
        problems = [
            f"KENV_{field_path(e['loc'], '').lstrip('.').upper()}: {e['msg']}" for e in error.errors()
        ]
        raise ConfigError("invalid operator configuration: " + "; ".join(problems)) from error
