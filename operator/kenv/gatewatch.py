"""Pods gated for an image, watched: the reconciler learns of every pod any admission replica gates.

Admission replicas run in other processes, so the gated pods they admit reach the reconciler through the API
server: a watch of the pods carrying the label the webhook sets on each pod it gates (injection.AWAITING_LABEL,
removed again when the pod is released). Each such pod marks its Environment as having gated pods
(gating.remember_gated): the reconcile that makes it Ready releases them. A pod gated after that (an admission
replica whose index lagged the leader's) finds its Environment settled, with no reconcile or poll to come, so
it is settled at once, from the leader's index. A new leader lists them all at once, so pods gated while
the old leader ran are released by the new one.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from kenv import gating, kube
from kenv.injection import AWAITING_LABEL
from kenv.models import CLUSTER_ENVIRONMENT_LABEL, ENVIRONMENT_LABEL
from kenv.refs import EnvironmentRef
from kenv.status import is_current

log = logging.getLogger(__name__)
SELECTOR = f"{AWAITING_LABEL}=true"
Lookup = Callable[[EnvironmentRef], dict[str, Any] | None]  # an Environment's index entry, if indexed


def awaited(pod: dict[str, Any]) -> EnvironmentRef | None:
    """The Environment (or ClusterEnvironment) a gated pod waits for."""
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    if ENVIRONMENT_LABEL in labels:
        return EnvironmentRef(kind="Environment", namespace=metadata.get("namespace"), name=labels[ENVIRONMENT_LABEL])
    if CLUSTER_ENVIRONMENT_LABEL in labels:
        return EnvironmentRef(kind="ClusterEnvironment", namespace=None, name=labels[CLUSTER_ENVIRONMENT_LABEL])
    return None


async def note(pod: dict[str, Any], lookup: Lookup) -> None:
    """Remember what a gated pod waits for; when that is already Ready for its current spec, settle this pod now
    (no listing: a relist of many gated pods costs one patch each). A failure is logged and left to the
    reconcile and poll, so one pod can never stall the watch."""
    ref = awaited(pod)
    if ref is None:
        return
    gating.remember_gated(ref.kind, ref.namespace, ref.name)
    entry = lookup(ref)
    status = (entry or {}).get("status") or {}
    if not entry or not is_current(status, entry.get("generation"), entry.get("rebuild")):
        return  # building, failed or outdated: the reconcile that settles it follows its pods up
    try:
        await gating.settle(ref, pod, status)
    except Exception as error:  # noqa: BLE001 - the poll of this Environment (it has gated pods) retries
        metadata = pod.get("metadata") or {}
        log.warning("could not settle gated pod %s/%s: %s", metadata.get("namespace"), metadata.get("name"), error)


async def follow(namespace: str | None, lookup: Lookup) -> None:
    """Until cancelled: note every gated pod of `namespace` (None: all namespaces)."""
    async def listed(pods: list[dict[str, Any]]) -> None:
        for pod in pods:
            await note(pod, lookup)

    api = await kube.core()
    list_call, args, what = (api.list_pod_for_all_namespaces, (), "gated pods") if namespace is None \
        else (api.list_namespaced_pod, (namespace,), f"gated pods in {namespace}")
    await kube.list_and_watch(list_call, args, SELECTOR, listed, functools.partial(note, lookup=lookup), what)
