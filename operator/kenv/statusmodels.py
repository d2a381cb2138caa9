"""The status of an Environment or ClusterEnvironment: phases, conditions per Kubernetes API conventions, the
current version and what the operator records between reconciles. Part of the CRD schema (see `crd.py`); written
only by the operator through the status subresource."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from kenv.models import KenvModel


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    BUILDING = "Building"
    READY = "Ready"
    FAILED = "Failed"


class Condition(KenvModel):
    type: str = Field(description="Built or Ready.")
    status: str = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason, e.g. BuildSucceeded, Queued, RegistryUnavailable.")
    message: str = Field("", description="Human-readable detail.")
    observed_generation: int | None = Field(None, description="Generation the condition was computed from.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")


class VersionRecord(KenvModel):
    version: int = Field(description="Version number, starting at 1.")
    hash: str = Field(description="Content hash of the build context.")
    image: str = Field(description="repo@sha256:digest of this version.")
    created: str = Field(description="When this version became Ready (RFC 3339).")


class ObjectRef(KenvModel):
    namespace: str = Field(description="Namespace of the object.")
    name: str = Field(description="Name of the object.")


class EnvironmentStatus(KenvModel):
    phase: Phase | None = Field(None, description="Pending, Queued, Building, Ready or Failed.")
    image: str | None = Field(None, description="Digest-pinned image of the current version (repo@sha256:...).")
    digest: str | None = Field(None, description="sha256 digest of the current version's manifest.")
    hash: str | None = Field(None, description="Content hash of the current version's build context.")
    desired_hash: str | None = Field(None, description="Content hash of the spec being reconciled.")
    version: int | None = Field(
        None, description="Current version number (an EnvironmentVersion object); pods pin others by annotation.")
    runtime_hash: str | None = Field(
        None, description="Hash of what pods of the current version receive besides the image (variables, "
        "secret references, bootstrap, shm, python path).")
    history: list[VersionRecord] = Field(
        default_factory=list, description="Deprecated: versions as an earlier release recorded them. Moved into "
        "EnvironmentVersion objects (same numbers and images) and emptied by the operator.")
    build_job: ObjectRef | None = Field(None, description="The build Job of the latest build.")
    rebuild_token: str | None = Field(None, description="Last kenv.dev/rebuild annotation value acted upon.")
    failed_generation: int | None = Field(
        None, description="Generation whose build failed (no retry until it changes)."
    )
    incremental_failed: str | None = Field(
        None, description="Content hash whose incremental build (spec.build.incremental) failed: that content is "
        "built in full instead.")
    transient_retries: int | None = Field(
        None, description="Builds retried because they failed talking to a registry (reset when Ready)."
    )
    failed_build_log: str | None = Field(
        None, description="The end (at most 32 KiB) of the failed build's log, kept after the build Job and its "
        "pod are gone; cleared when a version is Ready. `kenv logs NAME` prints it.")
    references_fingerprint: str | None = Field(
        None, description="Fingerprint (resourceVersions) of the ConfigMaps and Secret the spec names, as last "
        "reconciled; the operator re-reads them every KENV_REFERENCE_CHECK_SECONDS and reconciles on a change.")
    build_references: str | None = Field(
        None, description="The references fingerprint the running (or last) build was started with.")
    failed_references: str | None = Field(
        None, description="The references fingerprint the failed build saw: a change (e.g. a fixed registry "
        "Secret) retries it.")
    base_image_digest: str | None = Field(None, description="Base image digest seen at the last check.")
    base_image_checked: str | None = Field(None, description="When the base image digest was last checked.")
    conditions: list[Condition] = Field(default_factory=list, description="Built and Ready conditions.")
    observed_generation: int | None = Field(None, description="Generation the status was computed from.")
