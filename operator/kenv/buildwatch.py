"""Build Jobs, watched: when one finishes, the Environments waiting on it are reconciled now, not at their next poll.

The poll timer (KENV_POLL_SECONDS) stays the safety net; this only takes its wait out of every build (half the
interval on average, the whole of it at worst). kopf has no way to run an object's handlers on demand, so the
nudge is what kopf reacts to: an annotation on the Environment, set to the finished Job's name, which is a change
its update handler reconciles. Not under `kenv.dev/`: kopf leaves every annotation of the prefix it keeps its own
state under out of the object's essence, so a change there would reach no handler. The watch covers the build
namespace only, which the operator's Role already lets it list and watch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from kenv import kube
from kenv.builds import LABEL_ROLE
from kenv.jobstate import job_finished
from kenv.models import GROUP
from kenv.refs import EnvironmentRef

log = logging.getLogger(__name__)
ANNOTATION = f"build.{GROUP}/finished"
SELECTOR = f"{LABEL_ROLE}=build"
NUDGES_AT_ONCE = 8
REMEMBERED = 4096  # finished Jobs already told (a Job's later events must not nudge again)


def waiting_on(job: str, environments: Mapping[Any, Any], cluster_environments: Mapping[Any, Any]
               ) -> list[EnvironmentRef]:
    """The Environments and ClusterEnvironments whose status names this build Job (from the admission indexes,
    which hold each object's last status)."""
    refs: list[EnvironmentRef] = []
    for kind, index in (("Environment", environments), ("ClusterEnvironment", cluster_environments)):
        for key, entries in index.items():
            if any(((entry.get("status") or {}).get("buildJob") or {}).get("name") == job for entry in entries):
                namespace, name = key if kind == "Environment" else (None, key)
                refs.append(EnvironmentRef(kind=kind, namespace=namespace, name=name))
    return refs


async def nudge(ref: EnvironmentRef, value: str) -> None:
    """Set the annotation; a failure only costs the wait for the next poll."""
    try:
        await kube.merge_patch(ref, {"metadata": {"annotations": {ANNOTATION: value}}})
    except ApiException as error:
        if not kube.not_found(error):  # deleted meanwhile: nothing to tell
            log.warning("could not tell %s its build finished (%s): its next poll will", ref.display, error.reason)
    except Exception as error:  # noqa: BLE001 - a connection error must not end the watch
        log.warning("could not tell %s its build finished (%s): its next poll will", ref.display, error)


async def nudge_all(refs: Iterable[EnvironmentRef], job: dict[str, Any]) -> None:
    """The annotation's value is the Job's uid: a later Job of the same name is a new value, hence a change."""
    limit = asyncio.Semaphore(NUDGES_AT_ONCE)
    uid = str(job["metadata"]["uid"])

    async def one(ref: EnvironmentRef) -> None:
        async with limit:
            await nudge(ref, uid)
    await asyncio.gather(*(one(ref) for ref in refs))


class Follower:
    """Tells the waiting Environments of each build Job that finishes, once per Job."""

    def __init__(self, waiting: Callable[[str], list[EnvironmentRef]],
                 on_finished: Callable[[list[EnvironmentRef], dict[str, Any]], Awaitable[None]]) -> None:
        self.waiting, self.on_finished = waiting, on_finished
        self.told: dict[str, None] = {}  # uids, insertion-ordered: the oldest is forgotten first

    def remember(self, job: dict[str, Any]) -> None:
        self.told[str(job["metadata"]["uid"])] = None
        while len(self.told) > REMEMBERED:
            self.told.pop(next(iter(self.told)))

    async def seen(self, job: dict[str, Any]) -> None:
        """A Job as a list or a watch event shows it."""
        if not job_finished(job) or str(job["metadata"]["uid"]) in self.told:
            return
        self.remember(job)
        if refs := self.waiting(job["metadata"]["name"]):
            log.debug("build Job %s finished: reconciling %d environments now", job["metadata"]["name"], len(refs))
            await self.on_finished(refs, job)


async def follow(namespace: str, waiting: Callable[[str], list[EnvironmentRef]],
                 on_finished: Callable[[list[EnvironmentRef], dict[str, Any]], Awaitable[None]] = nudge_all,
                 retry_seconds: float = 5.0) -> None:
    """Watch the build Jobs of `namespace` until cancelled; for each that finishes, `on_finished(waiting(job))`.
    Jobs already finished at the first list are the poll's; a later list (the watch ends every few minutes, or its
    resourceVersion expired) tells those that finished in between."""
    follower = Follower(waiting, on_finished)
    first = True

    async def listed(jobs: list[dict[str, Any]]) -> None:
        nonlocal first
        for job in jobs:
            if first:
                follower.remember(job)
            else:
                await follower.seen(job)
        first = False
    api = await kube.batch()
    await kube.list_and_watch(api.list_namespaced_job, (namespace,), SELECTOR, listed, follower.seen,
                              f"build Jobs in {namespace}", retry_seconds)
