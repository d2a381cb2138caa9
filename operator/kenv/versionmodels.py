"""The EnvironmentVersion API: one immutable snapshot of everything a pod receives from an Environment.

A version is made by the operator whenever that definition changes (image digest, variables, secret references,
bootstrap, shm, python path) and is never edited afterwards: the CRD refuses updates of `spec` (CEL
`self == oldSelf`); the operator only creates and deletes them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kenv.models import GROUP, VERSION, EnvironmentSpec, KenvModel

KIND = "EnvironmentVersion"
PLURAL = "environmentversions"
VERSIONS = (GROUP, VERSION, PLURAL)
DIGEST_IMAGE_PATTERN = r"^[^@\s]+@sha256:[0-9a-f]{64}$"


class EnvironmentOwner(KenvModel):
    kind: Literal["Environment", "ClusterEnvironment"] = Field(description="Kind of the versioned environment.")
    name: str = Field(description="Name of the Environment or ClusterEnvironment.", max_length=253)
    namespace: str | None = Field(
        None, description="Namespace of an Environment; absent for a ClusterEnvironment.", max_length=63
    )
    uid: str = Field(description="UID of the environment object this version belongs to.", max_length=64)


PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]+$"  # what `kenv packages` prints to a terminal: no control characters
MAX_PACKAGES = 20000


class LockedPackage(KenvModel):
    name: str = Field(min_length=1, max_length=256, pattern=PRINTABLE,
                      description="Package name as its installer records it.")
    version: str = Field(min_length=1, max_length=256, pattern=PRINTABLE, description="Installed version.")
    manager: Literal["pip", "conda"] = Field(
        description="pip: a Python distribution the image's interpreter imports (whatever installed it); conda: "
        "a package of the image's conda environment.")
    installer: str | None = Field(None, max_length=64, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$",
                                  description="What installed a Python distribution, as it recorded itself (pip, "
                                  "uv; empty for the base image's system packages).")
    build: str | None = Field(None, max_length=256, pattern=PRINTABLE, description="A conda package's build string.")
    channel: str | None = Field(None, max_length=1024, pattern=PRINTABLE,
                                description="A conda package's channel (credentials and tokens removed).")
    url: str | None = Field(None, max_length=2048, pattern=PRINTABLE, description="Where a Python distribution "
                            "installed from a URL or path came from (PEP 610 direct_url.json; credentials, query "
                            "and fragment removed).")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="sha256 of the package archive, "
                               "where its installer recorded it (conda packages; pip for URL installs).")


class PackageLock(KenvModel):
    python: str | None = Field(None, max_length=64, pattern=PRINTABLE, description="Version of the interpreter "
                               "that listed the Python distributions.")
    packages: list[LockedPackage] = Field(default_factory=list, max_length=MAX_PACKAGES,
                                          description="Every package installed, sorted by manager and name.")
    layer: str = Field(max_length=160, description="Digest of the image layer the lock was read from.")
    error: str | None = Field(None, max_length=1024, description="Why the lock is incomplete: entries the build "
                              "could not list or that did not fit, or the lock could not be read at all.")


class EnvironmentVersionSpec(KenvModel):
    environment: EnvironmentOwner = Field(description="The Environment or ClusterEnvironment versioned.")
    version: int = Field(ge=1, description="Version number: per environment, only grows, never reused.")
    image: str = Field(pattern=DIGEST_IMAGE_PATTERN, max_length=1024,
                       description="Digest-pinned image pods of this version run (repo@sha256:...).")
    digest: str = Field(max_length=80, description="sha256 digest of the image manifest.")
    hash: str = Field(max_length=80, description="Content hash of the build context the image was built from.")
    runtime_hash: str | None = Field(
        None, max_length=80, description="Hash of what pods receive besides the image: variables, secret "
        "references, bootstrap, shm and python path.")
    tag: str | None = Field(
        None, max_length=1024, description="Registry tag (repo:tag) that keeps this version's image from garbage "
        "collection; removed when the version is pruned.")
    reason: str = Field(max_length=64, description="Why this version was made: BuildSucceeded, ImageFound, "
                        "IncrementalBuild, IncrementalImageFound, DefinitionChanged, Rebuilt, BaseImageMoved or "
                        "Migrated.")
    changes: list[str] = Field(default_factory=list, max_length=50,
                               description="What changed from the previous version, one line each.")
    source_generation: int | None = Field(
        None, description="metadata.generation of the environment this version was made from.")
    build_log: str | None = Field(
        None, max_length=65536, description="The end of the build log (at most 32 KiB) when this version's image "
        "was built for it; `kenv logs NAME --version N` prints it. Absent when the image was already in the "
        "registry (see the version that built it).")
    lock: PackageLock | None = Field(
        None, description="What the image holds, as its build listed it in the image's last layer (`kenv packages "
        "NAME --version N`). Absent for images kenv installs nothing into, and for migrated versions.")
    sbom: str | None = Field(
        None, max_length=1024, description="The image's CycloneDX SBOM, an OCI artifact attached to the image "
        "(repo@sha256:...; `kenv sbom NAME`).")
    definition: EnvironmentSpec | None = Field(
        None, description="The environment's spec this version was made from; pods of this version receive its "
        "variables, secrets, bootstrap and shm. Absent for versions migrated from status.history, whose "
        "definitions were not recorded.")
