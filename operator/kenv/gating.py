"""After a reconcile: lift the scheduling gate of pods that waited for this Environment's image, or tell them
why they still wait. Runs from handlers and the timer, so a restarted operator catches up."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import kopf
from kubernetes_asyncio.client.exceptions import ApiException

from kenv import kube
from kenv.config import OperatorSettings
from kenv.injection import AWAITING_LABEL, AWAITING_RUNTIME, InjectionRefused, build_ungate_patch, pod_is_awaiting_image
from kenv.refs import EnvironmentRef
from kenv.status import BUILT, condition, is_current
from kenv.statusmodels import Phase

log = logging.getLogger(__name__)


# Which Environments may have gated pods, so the hot path never lists pods for nothing: the webhook (same
# process) remembers every pod it gates; Environments found at start-up (on.resume) are checked once, for pods
# a previous operator process gated.
Key = tuple[str, str | None, str]
_awaiting: set[Key] = set()
_unchecked: set[Key] = set()
# The warnings already given, per pod: a pod that stays gated is looked at again at every relist and poll, and
# one Event per reason and version is enough. Bounded: old entries are dropped first (a pod warned again then
# gets one more Event, never none).
_warned: OrderedDict[tuple[str, str, Any], None] = OrderedDict()
WARNED_KEPT = 10_000


def key_of(ref: EnvironmentRef) -> Key:
    return (ref.kind, ref.namespace, ref.name)


def remember_gated(kind: str, namespace: str | None, name: str) -> None:
    _awaiting.add((kind, namespace, name))


def check_after_restart(ref: EnvironmentRef) -> None:
    _unchecked.add(key_of(ref))


def may_have_gated_pods(ref: EnvironmentRef) -> bool:
    return key_of(ref) in _awaiting or key_of(ref) in _unchecked


async def follow_up(ref: EnvironmentRef, status: dict[str, Any], settings: OperatorSettings,
                    generation: int | None, rebuild_token: str | None) -> None:
    phase = status.get("phase")
    if phase == Phase.READY and not is_current(status, generation, rebuild_token):
        return  # Ready for an older generation: the next reconcile looks again
    if phase not in (Phase.READY, Phase.FAILED):
        return
    if not may_have_gated_pods(ref):
        return
    restarted = key_of(ref) in _unchecked
    _unchecked.discard(key_of(ref))
    if phase == Phase.READY:
        _awaiting.discard(key_of(ref))  # re-added by the webhook if it gates another pod meanwhile
    pods = [p for p in await kube.environment_pods(ref, settings.namespace_list, **gated_pods_selector(restarted))
            if pod_is_awaiting_image(p)]
    for pod in pods:
        await settle(ref, pod, status)


def gated_pods_selector(restarted: bool) -> dict[str, str]:
    """What narrows an Environment's pods to those that may be gated (an Environment may have thousands of
    running pods). The webhook labels each pod it gates; a pod gated by a release before that label
    (2026-11-28) has only the annotation and the gate, so the first look after a restart takes every pending
    pod."""
    return {"fields": "status.phase=Pending"} if restarted else {"labels": f"{AWAITING_LABEL}=true"}


async def settle(ref: EnvironmentRef, pod: dict[str, Any], status: dict[str, Any]) -> None:
    """One gated pod of a settled Environment: released into the current version when that is what it was
    admitted for, else told why it stays gated."""
    meta = pod["metadata"]
    awaited = (meta.get("annotations") or {}).get(AWAITING_RUNTIME)
    # awaited None: gated by a release that did not record what it waited for
    if status.get("phase") == Phase.READY and awaited in (None, status.get("runtimeHash")):
        await ungate(meta, pod, status)
    elif status.get("phase") == Phase.READY:
        _warn(meta, "EnvironmentChanged", status.get("version"),
              f"{ref.kind} {ref.display} changed while this pod waited: its variables, secrets, bootstrap "
              f"or shm are not those of version {status.get('version')}, so it stays gated rather than mix "
              "two versions; delete it and create it again")
    else:
        reason = (condition(status, BUILT) or {"message": "the build failed"}).get("message", "")
        _warn(meta, "EnvironmentBuildFailed", (status.get("failedGeneration"), reason),
              f"{ref.kind} {ref.display} failed to build; the pod stays gated (never given an older image): "
              f"{reason}")


def first_warning(pod_uid: str, reason: str, about: Any) -> bool:
    """Whether this pod has not been warned for `reason` about `about` (a version, a failed generation) yet;
    records it."""
    key = (pod_uid, reason, about)
    if key in _warned:
        return False
    _warned[key] = None
    while len(_warned) > WARNED_KEPT:
        _warned.popitem(last=False)
    return True


def _warn(meta: dict[str, Any], reason: str, about: Any, message: str) -> None:
    uid = str(meta.get("uid") or meta.get("name"))
    if (uid, reason, about) in _warned:
        return
    pod_body: Any = {"apiVersion": "v1", "kind": "Pod", "metadata": meta}
    try:
        kopf.event(pod_body, type="Warning", reason=reason, message=kube.event_message(message))
    except LookupError:  # outside kopf's handlers (the gated-pod watch) kopf has no Event poster: not recorded,
        log.warning("pod %s/%s: %s", meta.get("namespace"), meta.get("name"), message)  # the reconcile posts it
        return
    first_warning(uid, reason, about)


async def ungate(meta: dict[str, Any], pod: dict[str, Any], status: dict[str, Any]) -> None:
    version = status.get("version")
    try:
        ops = build_ungate_patch(pod, status["image"], version=version)
        await kube.json_patch_pod(meta["namespace"], meta["name"], ops)
    except InjectionRefused as refusal:
        log.warning("cannot ungate pod %s/%s: %s", meta["namespace"], meta["name"], refusal.message)
    except ApiException as error:
        if error.status not in (404, 409, 422):  # gone, or changed under us: the next pass sees the new state
            raise
