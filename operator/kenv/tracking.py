"""Base image tracking: re-resolve the base image's digest on a timer and, when it moved, ask for a rebuild
through the same `kenv.dev/rebuild` annotation a user would set. The image checked is the one the build pulls
(spec.docker.baseImage, joined to baseImageRegistry.address when it names no registry). The rebuilt image becomes
a new version (an EnvironmentVersion); the old one stays pinnable, its image kept by its own registry tag."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf
from pydantic import ValidationError

from kenv import builds
from kenv.models import EnvironmentSpec
from kenv.reconcile import REBUILD_ANNOTATION, MissingReference, Reconciler, base_rebuild_token
from kenv.refs import EnvironmentRef
from kenv.registry import RegistryError, credentials_for
from kenv.statusmodels import Phase


def tracked_spec(body: dict[str, Any]) -> EnvironmentSpec | None:
    """The spec, if it asks for tracking of a base image (a Dockerfile's FROM lines are not tracked)."""
    try:
        spec = EnvironmentSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return None
    tracking = spec.build.track_base_image
    return spec if tracking and tracking.enabled and spec.docker.base_image else None


def check_due(status: dict[str, Any], interval_seconds: int, now: datetime.datetime) -> bool:
    if status.get("phase") != Phase.READY:
        return False
    checked = status.get("baseImageChecked")
    if not status.get("baseImageDigest") or not checked:
        return True  # first look right after the first build
    last = datetime.datetime.fromisoformat(str(checked).replace("Z", "+00:00"))
    return (now - last).total_seconds() >= interval_seconds


async def check_base_image(ref: EnvironmentRef, body: kopf.Body, patch: kopf.Patch, reconciler: Reconciler,
                           logger: logging.Logger) -> None:
    spec = tracked_spec(dict(body))
    status = dict(body.get("status") or {})
    now = datetime.datetime.now(datetime.UTC)
    image = spec.docker.resolved_base_image if spec is not None else None
    if spec is None or spec.build.track_base_image is None or not image:
        return
    if not check_due(status, spec.build.track_base_image.interval_seconds, now):
        return
    try:
        config = await reconciler.base_registry_config(ref, spec)
        digest = await reconciler.registry.digest(image, credentials_for(builds.registry_of(image), config))
    except (RegistryError, MissingReference) as error:
        logger.warning("cannot check base image %s: %s", image, error)
        return
    patch.status["baseImageChecked"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    if digest is None:
        return
    patch.status["baseImageDigest"] = digest
    previous = status.get("baseImageDigest")
    if previous and previous != digest:
        patch.meta.annotations[REBUILD_ANNOTATION] = base_rebuild_token(digest)
        kopf.event(body, type="Normal", reason="BaseImageMoved",
                   message=f"{image} moved from {previous} to {digest}; rebuilding")
