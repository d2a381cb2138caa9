"""Admission: the pure pod mutation of injection.py, served from in-memory indexes on two paths with one core.

The Environment comes from kopf's in-memory indexes (filled from the watch stream), so admitting a pod costs no
API call, and its spec is validated once per watch event when it is indexed, not once per pod.
- The lean path, `review()`: webhookserver.AdmissionServer answers the API server's AdmissionReview here and
  returns injection.py's JSON Patch as built. It takes no executor thread, no copy of the pod and no diff.
- kopf's path, `inject()`: the @kopf.on.mutate handlers in main.py, for a server without the lean path (kopf's
  own servers and tunnels). kopf applies the patch to a copy of the pod and diffs it back: the same pod, in more
  steps (tests/unit/test_admission.py compares the two).
Both go through `admit()`. A refusal's message (it names the object and the fix) is what `kubectl` shows.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jsonpatch  # kopf's own dependency
import kopf
from pydantic import ValidationError

from kenv import gating, metrics
from kenv.config import get_settings
from kenv.errors import describe_validation_error
from kenv.injection import EnvironmentView, InjectionRefused, InjectionSettings, Mutation, build_pod_mutation
from kenv.models import CLUSTER_ENVIRONMENT_LABEL, ENVIRONMENT_LABEL, EnvironmentSpec
from kenv.reconcile import rebuild_token
from kenv.versions import Snapshot

Kind = Literal["Environment", "ClusterEnvironment"]
# The label a pod asks for each kind with.
LABELS: dict[Kind, str] = {"Environment": ENVIRONMENT_LABEL, "ClusterEnvironment": CLUSTER_ENVIRONMENT_LABEL}
# The webhook id (kopf serves each @kopf.on.mutate handler at /<id>; the chart's paths) -> the kind it admits.
WEBHOOKS: dict[str, Kind] = {"inject-environment": "Environment", "inject-cluster-environment": "ClusterEnvironment"}
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Indexes:
    """kopf's live indexes (main.py's @kopf.index handlers), as the startup handler receives them."""
    environments: Mapping[Any, Any]
    cluster_environments: Mapping[Any, Any]
    versions: Mapping[Any, Any]

    def of(self, kind: Kind) -> Mapping[Any, Any]:
        return self.environments if kind == "Environment" else self.cluster_environments


def indexed(body: kopf.Body) -> dict[str, Any]:
    """What the index keeps per Environment: the validated spec (or why it is invalid) and plain copies of the
    rest, so later watch events don't mutate them. Runs once per watch event."""
    try:
        spec, invalid = EnvironmentSpec.model_validate(dict(body.spec)), None
    except ValidationError as error:
        spec, invalid = None, describe_validation_error(error)
    return {"spec": spec, "invalid": invalid, "status": dict(body.status),
            "generation": body.metadata.get("generation"), "rebuild": rebuild_token(body.metadata),
            "uid": body.metadata.uid}


def indexed_version(body: kopf.Body) -> dict[Any, Snapshot]:
    """EnvironmentVersion snapshots keyed like the environments they belong to: (kind, namespace, name)."""
    owner = (body.get("spec") or {}).get("environment") or {}
    return {(owner.get("kind"), owner.get("namespace"), owner.get("name")): Snapshot.from_object(body)}


def lookup(kind: Kind, namespace: str, name: str, index: Mapping[Any, Any],
           versions: Mapping[Any, Any]) -> EnvironmentView:
    if kind == "Environment":
        key: Any = (namespace, name)
        hint = f"Environment {namespace}/{name} does not exist; check `kubectl get env {name} -n {namespace}`"
    else:
        key = name
        hint = f"ClusterEnvironment {name} does not exist; check `kubectl get cenv {name}`"
    entries = list(index.get(key, []))
    if not entries:
        raise InjectionRefused(hint + " or fix the pod's label")
    entry = entries[0]
    if entry["spec"] is None:
        raise InjectionRefused(f"{kind} {name} has an invalid spec: {entry['invalid']}")
    env_namespace = namespace if kind == "Environment" else None
    # Only this object's versions: an Environment deleted and made again under the same name may still have
    # versions the garbage collector has not removed yet.
    snapshots = {s.number: s for s in versions.get((kind, env_namespace, name), []) if s.uid == entry["uid"]}
    return EnvironmentView(kind=kind, name=name, namespace=env_namespace, spec=entry["spec"],
                           status=entry["status"], generation=entry["generation"],
                           rebuild_token=entry["rebuild"], versions=snapshots)


def admit(kind: Kind, pod: dict[str, Any], index: Mapping[Any, Any], versions: Mapping[Any, Any],
          dry_run: bool = False) -> Mutation:
    """The mutation of a labelled pod, counted in the metrics; InjectionRefused with the reason otherwise.
    A dry run (`kubectl create --dry-run=server`) gets the same answer without side effects: the webhooks declare
    sideEffects None, so no gated pod is remembered for it."""
    with metrics.ADMISSION_SECONDS.time():
        config = get_settings()
        settings = InjectionSettings(pull_secret=config.pull_secret,
                                     pending_image_policy=config.pending_image_policy.value)
        metadata = pod.get("metadata") or {}
        try:
            view = lookup(kind, metadata.get("namespace") or "", (metadata.get("labels") or {})[LABELS[kind]],
                          index, versions)
            mutation = build_pod_mutation(pod, view, settings)
        except InjectionRefused:
            metrics.ADMISSIONS.labels("refused").inc()
            raise
        metrics.ADMISSIONS.labels("gated" if mutation.gated else "injected").inc()
        if mutation.gated and not dry_run:
            gating.remember_gated(kind, view.namespace, view.name)
        return mutation


def inject(kind: Kind, body: kopf.Body, patch: kopf.Patch, warnings: list[str], index: kopf.Index,
           versions: kopf.Index, dry_run: bool) -> None:
    """kopf's path: the patch goes through kopf.Patch.fns, a refusal through kopf.AdmissionError."""
    try:
        mutation = admit(kind, dict(body), index, versions, dry_run)
    except InjectionRefused as refusal:
        raise kopf.AdmissionError(f"kenv: {refusal.message}", code=400) from refusal
    warnings.extend(mutation.warnings)
    if mutation.patch:
        ops = mutation.patch
        patch.fns.append(lambda pod: jsonpatch.apply_patch(pod, ops, in_place=True))


def takes(request: dict[str, Any]) -> bool:
    """Whether the lean path answers this AdmissionReview: a pod's own (no subresource), from an API server (with
    userInfo). Anything else goes to kopf, which answers it as it always has (404, 400)."""
    payload = request.get("request")
    if not isinstance(payload, dict) or not isinstance(payload.get("userInfo"), dict):
        return False
    resource = payload.get("resource") or {}
    return resource.get("group") == "" and resource.get("resource") == "pods" and not payload.get("subResource")


def review(webhook: str, request: dict[str, Any], indexes: Indexes) -> dict[str, Any]:
    """The lean path: the AdmissionReview response to `request` (one that `takes()`) for the webhook `webhook` (a
    key of WEBHOOKS), shaped as kopf's build_response shapes it. A request that is not a CREATE of a pod with the
    webhook's label is allowed unchanged, as kopf's handler filters would. An unexpected error refuses the pod, as
    kopf does (code 500), so a failurePolicy Ignore can never admit a pod kenv failed to look at."""
    payload = request.get("request") or {}
    answer: dict[str, Any] = {"uid": payload.get("uid", ""), "allowed": True}
    response = {"apiVersion": request.get("apiVersion", "admission.k8s.io/v1"),
                "kind": request.get("kind", "AdmissionReview"), "response": answer}
    kind = WEBHOOKS[webhook]
    pod = payload.get("object") or {}
    metadata = pod.get("metadata") or {}
    if payload.get("operation") != "CREATE" or LABELS[kind] not in (metadata.get("labels") or {}):
        return response
    where = f"{payload.get('namespace')}/{metadata.get('name') or metadata.get('generateName')}"
    try:
        mutation = admit(kind, pod, indexes.of(kind), indexes.versions, bool(payload.get("dryRun")))
    except InjectionRefused as refusal:
        logger.warning("refused pod %s: %s", where, refusal.message)
        answer.update(allowed=False, status={"message": f"kenv: {refusal.message}", "code": 400})
        return response
    except Exception as error:  # noqa: BLE001 - any bug must refuse the pod, never let it through unmutated
        logger.exception("admission of pod %s failed", where)
        metrics.ADMISSIONS.labels("error").inc()
        answer.update(allowed=False, status={"message": f"kenv: internal error: {str(error) or repr(error)}",
                                             "code": 500})
        return response
    if mutation.warnings:
        answer["warnings"] = list(mutation.warnings)
    if mutation.patch:
        answer.update(patch=base64.b64encode(json.dumps(mutation.patch).encode()).decode("ascii"),
                      patchType="JSONPatch")
    return response
