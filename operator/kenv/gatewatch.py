"""Pods gated for an image, watched: the reconciler learns of every pod any admission replica gates.

Admission replicas run in other processes, so the gated pods they admit reach the reconciler through the API
server: a watch of the pods carrying the label the webhook sets on each pod it gates (injection.AWAITING_LABEL,
removed again when the pod is released). Each such pod marks its Environment as having gated pods
(gating.remember_gated): the reconcile that makes it Ready releases them, or, when the pod arrived after that,
the poll timer does (runtime.unsettled). A new leader lists them all at once, so pods gated while the old
leader ran are released by the new one.
"""

from __future__ import annotations

from typing import Any

from kenv import gating, kube
from kenv.injection import AWAITING_LABEL
from kenv.models import CLUSTER_ENVIRONMENT_LABEL, ENVIRONMENT_LABEL

SELECTOR = f"{AWAITING_LABEL}=true"


def note(pod: dict[str, Any]) -> None:
    """Remember the Environment (or ClusterEnvironment) a gated pod waits for."""
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    if ENVIRONMENT_LABEL in labels:
        gating.remember_gated("Environment", metadata.get("namespace"), labels[ENVIRONMENT_LABEL])
    elif CLUSTER_ENVIRONMENT_LABEL in labels:
        gating.remember_gated("ClusterEnvironment", None, labels[CLUSTER_ENVIRONMENT_LABEL])


async def follow(namespace: str | None) -> None:
    """Until cancelled: note every gated pod of `namespace` (None: all namespaces)."""
    async def listed(pods: list[dict[str, Any]]) -> None:
        for pod in pods:
            note(pod)

    async def changed(pod: dict[str, Any]) -> None:
        note(pod)
    api = await kube.core()
    if namespace is None:
        await kube.list_and_watch(api.list_pod_for_all_namespaces, (), SELECTOR, listed, changed, "gated pods")
    else:
        await kube.list_and_watch(api.list_namespaced_pod, (namespace,), SELECTOR, listed, changed,
                                  f"gated pods in {namespace}")
