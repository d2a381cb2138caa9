"""Pure status arithmetic: conditions per Kubernetes API conventions, phases and the current version."""

from __future__ import annotations

import datetime
from typing import Any

from kenv.statusmodels import Phase

BUILT = "Built"
READY = "Ready"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]], type_: str, status: str, reason: str, message: str, generation: int | None
) -> list[dict[str, Any]]:
    """Return the full list with `type_` replaced; lastTransitionTime moves only when status changes."""
    previous = next((c for c in conditions if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != status
    condition = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:2048],
        "observedGeneration": generation,
        "lastTransitionTime": now() if changed else previous.get("lastTransitionTime", now()),  # type: ignore[union-attr]
    }
    others = [c for c in conditions if c.get("type") != type_]
    return sorted([*others, condition], key=lambda c: c["type"])


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def progress(status: dict[str, Any], phase: Phase, reason: str, message: str, generation: int | None,
             desired_hash: str | None = None, *, previous_serves: bool = False) -> dict[str, Any]:
    """Status patch for a not-yet-Ready state. Ready stays True only when pods keep getting the previous
    version meanwhile (policy last-ready); otherwise new pods wait for this version (or are refused)."""
    has_image = bool(status.get("image"))
    conditions = status.get("conditions") or []
    built_status = "False" if phase is Phase.FAILED else "Unknown"
    conditions = set_condition(conditions, BUILT, built_status, reason, message, generation)
    serving = has_image and previous_serves and phase is not Phase.FAILED
    ready_reason = "PreviousVersionServing" if serving else reason
    conditions = set_condition(conditions, READY, "True" if serving else "False", ready_reason, message, generation)
    patch: dict[str, Any] = {"phase": phase.value, "conditions": conditions, "observedGeneration": generation}
    if desired_hash:
        patch["desiredHash"] = desired_hash
    return patch


def ready(status: dict[str, Any], *, image: str, digest: str, content_hash: str, version: int | None,
          runtime_hash: str, generation: int | None, reason: str, message: str) -> dict[str, Any]:
    """Status patch for a Ready version (the EnvironmentVersion object already exists)."""
    conditions = status.get("conditions") or []
    conditions = set_condition(conditions, BUILT, "True", reason, message, generation)
    conditions = set_condition(conditions, READY, "True", reason, message, generation)
    return {
        "phase": Phase.READY.value,
        "image": image,
        "digest": digest,
        "hash": content_hash,
        "desiredHash": content_hash,
        "version": version,
        "runtimeHash": runtime_hash,
        "conditions": conditions,
        "observedGeneration": generation,
        "failedGeneration": None,
        "failedBuildLog": None,
        "transientRetries": None,
    }


def failed(status: dict[str, Any], reason: str, message: str, generation: int | None,
           desired_hash: str | None) -> dict[str, Any]:
    patch = progress(status, Phase.FAILED, reason, message, generation, desired_hash)
    patch["failedGeneration"] = generation
    patch["failedBuildLog"] = None  # a build failure sets its own; any other must not show an old build's
    return patch


def changed_fields(status: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """The part of a merge patch of `status` that changes it: the top-level fields whose value differs (None
    removes a field, so it changes only one that is set). None of them: the patch would merge into the same
    status, so a resumed Environment that is Ready, as every one is after an operator restart, costs no request."""
    return {key: value for key, value in patch.items() if status.get(key) != value}


def rebuild_pending(status: dict[str, Any], rebuild_token: str | None) -> bool:
    """Whether the kenv.dev/rebuild annotation asks for a build the status has not acted upon yet."""
    return bool(rebuild_token) and rebuild_token != status.get("rebuildToken")


def is_current(status: dict[str, Any], generation: int | None, rebuild_token: str | None) -> bool:
    """Whether the current version is what the spec asks for now: Ready for this generation, with no rebuild
    asked for since. Pods without a pin get the current version only then; otherwise they wait for the next."""
    if status.get("phase") != Phase.READY or not status.get("image") or not status.get("version"):
        return False
    if status.get("observedGeneration") != generation:
        return False
    return not rebuild_pending(status, rebuild_token)
