"""Pure status arithmetic: conditions per Kubernetes API conventions, versions and history."""

from __future__ import annotations

import datetime
from typing import Any

from kenv.models import Phase

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
             desired_hash: str | None = None) -> dict[str, Any]:
    """Status patch for a not-yet-Ready state. The current image (if any) stays usable: Ready stays True
    while a newer version builds, because pods can still be injected with the current digest."""
    has_image = bool(status.get("image"))
    conditions = status.get("conditions") or []
    built_status = "False" if phase is Phase.FAILED else "Unknown"
    conditions = set_condition(conditions, BUILT, built_status, reason, message, generation)
    ready_status = "True" if has_image and phase is not Phase.FAILED else "False"
    ready_reason = "PreviousVersionServing" if ready_status == "True" else reason
    conditions = set_condition(conditions, READY, ready_status, ready_reason, message, generation)
    patch: dict[str, Any] = {"phase": phase.value, "conditions": conditions, "observedGeneration": generation}
    if desired_hash:
        patch["desiredHash"] = desired_hash
    return patch


def ready(status: dict[str, Any], *, image: str, digest: str, content_hash: str, generation: int | None,
          history_limit: int, reason: str, message: str) -> dict[str, Any]:
    """Status patch for a Ready image: bumps the version when the image is new, reuses it when known."""
    history = list(status.get("history") or [])
    known = next((h for h in history if h.get("image") == image), None)
    if known:
        version = known["version"]
    else:
        version = max([h.get("version", 0) for h in history] + [status.get("version") or 0]) + 1
        history.append({"version": version, "hash": content_hash, "image": image, "created": now()})
        history = history[-history_limit:]
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
        "history": history,
        "conditions": conditions,
        "observedGeneration": generation,
        "failedGeneration": None,
        "transientRetries": None,
    }


def failed(status: dict[str, Any], reason: str, message: str, generation: int | None,
           desired_hash: str | None) -> dict[str, Any]:
    patch = progress(status, Phase.FAILED, reason, message, generation, desired_hash)
    patch["failedGeneration"] = generation
    return patch


def image_for_version(status: dict[str, Any], version: int) -> str | None:
    if status.get("version") == version:
        return status.get("image")
    return next((h["image"] for h in status.get("history") or [] if h.get("version") == version), None)
