"""Glue between kopf's mutating webhook and the pure pod mutation in injection.py.

The Environment comes from kopf's in-memory index (filled from the watch stream), so admitting a pod costs no
API call. Refusals become kopf.AdmissionError, whose message `kubectl` shows to the user.
"""

from __future__ import annotations

from typing import Any

import jsonpatch  # kopf's own dependency
import kopf
from pydantic import ValidationError

from kenv import gating, metrics
from kenv.config import get_settings
from kenv.errors import describe_validation_error
from kenv.injection import EnvironmentView, InjectionRefused, InjectionSettings, build_pod_mutation
from kenv.models import CLUSTER_ENVIRONMENT_LABEL, ENVIRONMENT_LABEL, EnvironmentSpec
from kenv.reconcile import rebuild_token
from kenv.versions import Snapshot


def indexed(body: kopf.Body) -> dict[str, Any]:
    """What the index keeps per Environment: plain copies, so later watch events don't mutate them."""
    return {"spec": dict(body.spec), "status": dict(body.status), "generation": body.metadata.get("generation"),
            "rebuild": rebuild_token(body.metadata), "uid": body.metadata.uid}


def indexed_version(body: kopf.Body) -> dict[Any, Snapshot]:
    """EnvironmentVersion snapshots keyed like the environments they belong to: (kind, namespace, name)."""
    owner = (body.get("spec") or {}).get("environment") or {}
    return {(owner.get("kind"), owner.get("namespace"), owner.get("name")): Snapshot.from_object(body)}


def lookup(kind: str, pod: kopf.Body, index: kopf.Index, versions: kopf.Index) -> EnvironmentView:
    namespace = pod.metadata.namespace
    if kind == "Environment":
        name = pod.metadata.labels[ENVIRONMENT_LABEL]
        key: Any = (namespace, name)
        hint = f"Environment {namespace}/{name} does not exist; check `kubectl get env {name} -n {namespace}`"
    else:
        name = pod.metadata.labels[CLUSTER_ENVIRONMENT_LABEL]
        key = name
        hint = f"ClusterEnvironment {name} does not exist; check `kubectl get cenv {name}`"
    entries = list(index.get(key, []))
    if not entries:
        raise InjectionRefused(hint + " or fix the pod's label")
    entry = entries[0]
    try:
        spec = EnvironmentSpec.model_validate(entry["spec"])
    except ValidationError as error:
        raise InjectionRefused(f"{kind} {name} has an invalid spec: {describe_validation_error(error)}") from error
    env_namespace = namespace if kind == "Environment" else None
    # Only this object's versions: an Environment deleted and made again under the same name may still have
    # versions the garbage collector has not removed yet.
    snapshots = {s.number: s for s in versions.get((kind, env_namespace, name), []) if s.uid == entry["uid"]}
    return EnvironmentView(kind=kind, name=name, namespace=env_namespace,  # type: ignore[arg-type]
                           spec=spec, status=entry["status"], generation=entry["generation"],
                           rebuild_token=entry["rebuild"], versions=snapshots)


def inject(kind: str, body: kopf.Body, patch: kopf.Patch, warnings: list[str], index: kopf.Index,
           versions: kopf.Index) -> None:
    config = get_settings()
    settings = InjectionSettings(pull_secret=config.pull_secret,
                                 pending_image_policy=config.pending_image_policy.value)
    try:
        view = lookup(kind, body, index, versions)
        mutation = build_pod_mutation(dict(body), view, settings)
    except InjectionRefused as refusal:
        metrics.ADMISSIONS.labels("refused").inc()
        raise kopf.AdmissionError(f"kenv: {refusal.message}", code=400) from refusal
    metrics.ADMISSIONS.labels("gated" if mutation.gated else "injected").inc()
    if mutation.gated:
        gating.remember_gated(kind, view.namespace, view.name)
    warnings.extend(mutation.warnings)
    if mutation.patch:
        ops = mutation.patch
        patch.fns.append(lambda pod: jsonpatch.apply_patch(pod, ops, in_place=True))
