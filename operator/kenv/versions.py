"""Pure version arithmetic: what makes a new version, its number, names and registry tag, what changed, what
retention keeps. The side effects (API objects, registry tags) are in versionstore.py.

A version is everything a pod receives: the image digest plus the *runtime definition* (variables, secret
references, bootstrap, shm, python path). A new version is made when either differs from the current one, or
when a rebuild (a user's kenv.dev/rebuild token or a moved base image) produced a new image, even an identical
one: the user asked for a new version. Numbers only grow: the next is one more than the highest ever seen.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from kenv.models import EnvironmentSpec
from kenv.refs import EnvironmentRef
from kenv.render import CONDA_PREFIX, uses_conda

CONDA_PYTHON = f"{CONDA_PREFIX}/bin/python"
INJECTED_ENVIRONMENT = "kenv.dev/injected-environment"
INJECTED_VERSION = "kenv.dev/injected-version"
MAX_CHANGES = 20
TAG_LIMIT = 128  # OCI distribution: [A-Za-z0-9_][A-Za-z0-9._-]{0,127}
NAME_LIMIT = 253


def python_path(spec: EnvironmentSpec) -> str:
    """KENV_PYTHON: the interpreter training code should use in this environment's image."""
    return spec.python.interpreter_path or (CONDA_PYTHON if uses_conda(spec) else "python3")


def runtime_definition(spec: EnvironmentSpec) -> dict[str, Any]:
    """What pods receive besides the image; a change of any of it makes a new version without a build."""
    dumped = spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    return {
        "environmentVariables": dumped.get("environmentVariables") or {},
        "secretEnv": dumped.get("secretEnv") or [],
        "secretEnvFrom": dumped.get("secretEnvFrom") or [],
        "bootstrap": dumped.get("bootstrap"),
        "shmSize": spec.docker.shm_size,
        "python": python_path(spec),
    }


def runtime_hash(spec: EnvironmentSpec) -> str:
    canonical = json.dumps(runtime_definition(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Snapshot:
    """A version as the webhook, the reconciler and the CLI read it from its EnvironmentVersion object."""

    number: int
    image: str
    runtime_hash: str | None = None
    definition: dict[str, Any] | None = None  # the Environment spec (camelCase), None for migrated versions
    content_hash: str = ""
    reason: str = ""
    changes: list[str] = field(default_factory=list)
    tag: str | None = None
    created: str | None = None
    name: str = ""
    uid: str = ""  # of the environment this version belongs to

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Snapshot:
        spec = obj.get("spec") or {}
        metadata = obj.get("metadata") or {}
        return cls(number=int(spec["version"]), image=str(spec["image"]), runtime_hash=spec.get("runtimeHash"),
                   definition=spec.get("definition"), content_hash=str(spec.get("hash", "")),
                   reason=str(spec.get("reason", "")), changes=list(spec.get("changes") or []),
                   tag=spec.get("tag"), created=metadata.get("creationTimestamp"), name=metadata.get("name", ""),
                   uid=str((spec.get("environment") or {}).get("uid", "")))


def needs_new_version(status: Mapping[str, Any], image: str, runtime: str, rebuilt: bool) -> bool:
    """Whether a Ready image with this runtime definition is a new version rather than the current one."""
    if not status.get("version") or rebuilt:
        return True
    return status.get("image") != image or status.get("runtimeHash") != runtime


def next_number(known: Iterable[int | None]) -> int:
    return max((n for n in known if n), default=0) + 1


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def object_name(ref: EnvironmentRef, number: int) -> str:
    """EnvironmentVersion name: `<env>-v<N>` beside an Environment; a ClusterEnvironment's live in the build
    namespace as `cenv.<name>-v<N>` (an Environment named `cenv.<name>` there would clash: the store then adds a
    suffix, see versionstore.create_unique)."""
    base = ref.name if ref.kind == "Environment" else f"cenv.{ref.name}"
    suffix = f"-v{number}"
    if len(base) + len(suffix) > NAME_LIMIT:
        base = f"{base[:NAME_LIMIT - len(suffix) - 11]}-{_short_hash(base)}"
    return base + suffix


def version_tag(ref: EnvironmentRef, number: int) -> str:
    """The registry tag that keeps a version's image alive: `<namespace>.<name>-v<N>`, or `_cluster.<name>-v<N>`
    for a ClusterEnvironment (no namespace has a `_`, so an Environment in a namespace `cluster` cannot clash)."""
    prefix = f"{ref.namespace}.{ref.name}" if ref.namespace else f"_cluster.{ref.name}"
    suffix = f"-v{number}"
    if len(prefix) + len(suffix) > TAG_LIMIT:
        prefix = f"env-{_short_hash(prefix)}"
    return prefix + suffix


def _flatten(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{path}.{key}" if path else str(key)))
        return flat
    return {path: value}


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def describe_changes(previous: Snapshot | None, definition: dict[str, Any], image: str, reason: str) -> list[str]:
    """One line per changed spec field (dotted path), plus the image when it moved."""
    if previous is None:
        return ["first version"]
    if previous.definition is None:
        return [f"definition recorded from here on; previous version {previous.number} was migrated"]
    before, after = _flatten(previous.definition), _flatten(definition)
    lines = []
    for key in sorted(before.keys() | after.keys()):
        if key not in before:
            lines.append(f"added {key}: {_short(after[key])}")
        elif key not in after:
            lines.append(f"removed {key}")
        elif before[key] != after[key]:
            lines.append(f"changed {key}: {_short(before[key])} -> {_short(after[key])}")
    if previous.image != image:
        lines.append(f"new image ({reason})")
    elif not lines:
        lines.append(f"same definition ({reason})")
    return lines[:MAX_CHANGES] + ([f"... and {len(lines) - MAX_CHANGES} more"] if len(lines) > MAX_CHANGES else [])


def in_use(pods: Iterable[Mapping[str, Any]], ref: EnvironmentRef) -> set[int]:
    """Version numbers that live pods of this environment run (the webhook annotates every injected pod)."""
    numbers = set()
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        number = annotations.get(INJECTED_VERSION, "")
        if annotations.get(INJECTED_ENVIRONMENT) == ref.display and number.isdigit():
            numbers.add(int(number))
    return numbers


def prunable(numbers: Iterable[int], current: int | None, limit: int, used: set[int]) -> list[int]:
    """Versions to delete: all but the newest `limit`, the current one and those live pods use."""
    ordered = sorted(set(numbers))
    keep = set(ordered[-limit:]) | used | ({current} if current else set())
    return [n for n in ordered if n not in keep]


def render_version(snapshot: Snapshot) -> str:
    definition = yaml.safe_dump({"definition": snapshot.definition}, sort_keys=True, width=120)
    return f"image: {snapshot.image}\n{definition}"


def diff(a: Snapshot, b: Snapshot) -> str:
    """A unified diff of two versions' images and definitions (empty when they are the same)."""
    lines = difflib.unified_diff(render_version(a).splitlines(keepends=True),
                                 render_version(b).splitlines(keepends=True),
                                 fromfile=f"version {a.number}", tofile=f"version {b.number}")
    return "".join(lines)
