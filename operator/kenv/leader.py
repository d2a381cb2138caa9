"""Leader election on a coordination.k8s.io Lease: exactly one reconciler acts at a time (kopf has no election).

client-go's algorithm, in kenv's words:
- A candidate takes the Lease when it is free (no holder: the last leader released it on its way out) or when
  its record has not moved for a whole lease duration *as this process saw it*: expiry is judged on the local
  monotonic clock from the moment the record last changed, never by comparing the holder's clock with ours.
- Every write carries the resourceVersion read just before, so of two candidates writing at once one gets 409.
- The leader renews every `retry` seconds. If no renewal has succeeded for `renew_deadline` (shorter than the
  lease duration, so a candidate cannot yet have taken over), or the Lease names someone else, leadership is
  lost and the process exits: it cannot know what its handlers were doing, and a restart makes it a candidate.
  Unlike client-go, a process that stalled past the deadline (its event loop blocked) but not past the lease
  duration renews once more first.
A paused leader (SIGSTOP, a long GC, a partition) may act for a moment after it wakes, until its next renewal
fails: the deterministic build Job names make what it does then idempotent (tests/reliability/test_replicas.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kenv import kube

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    duration: float = 15.0  # client-go's defaults: a dead leader is replaced within ~duration + retry
    renew_deadline: float = 10.0
    retry: float = 2.0

    @classmethod
    def from_duration(cls, duration: float) -> Timing:
        """client-go's proportions (15 / 10 / 2) for another lease duration."""
        return cls(duration=duration, renew_deadline=duration * 2 / 3, retry=max(0.5, duration * 2 / 15))


def identity() -> str:
    """The pod name (HOSTNAME) and the pid. A container's restarted process (pid 1 again) has the identity of the
    dead one and takes its Lease back at once: safe, as the process it replaces is gone."""
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}_{os.getpid()}"


def micro_time(at: datetime) -> str:
    """A Lease's MicroTime."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def may_take(spec: dict[str, Any], me: str, unchanged_for: float, duration: float) -> bool:
    """Whether `me` may write itself into a Lease whose spec is `spec`, unchanged for `unchanged_for` seconds. A
    holder that recorded a longer lease duration than ours (another release's setting) is given that long."""
    holder = spec.get("holderIdentity") or ""
    recorded = float(spec.get("leaseDurationSeconds") or 0) if holder else 0.0
    return holder in ("", me) or unchanged_for >= max(duration, recorded)


def claimed(spec: dict[str, Any], me: str, now: datetime, duration: float) -> dict[str, Any]:
    """The spec `me` writes to take or renew the Lease."""
    taking = (spec.get("holderIdentity") or "") != me
    return {**spec, "holderIdentity": me, "leaseDurationSeconds": max(1, round(duration)),
            "renewTime": micro_time(now),
            "acquireTime": micro_time(now) if taking else spec.get("acquireTime") or micro_time(now),
            "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (1 if taking and spec else 0)}


def released(spec: dict[str, Any]) -> dict[str, Any]:
    """What the leader leaves on a clean exit: no holder, so a candidate takes over at its next try."""
    return {**spec, "holderIdentity": "", "leaseDurationSeconds": 1}


class LeaseConflict(Exception):
    """A write lost a race (HTTP 409): the Lease changed between our read and our write."""


class Election:
    """One candidate for the Lease `namespace/name`."""

    def __init__(self, namespace: str, name: str, me: str | None = None, timing: Timing = Timing(),
                 clock: Callable[[], float] = time.monotonic, api: Any = None) -> None:
        """api: a CoordinationV1Api-like object (tests pass a fake); None: the operator's client."""
        self.namespace, self.name, self.me, self.timing, self.clock = namespace, name, me or identity(), timing, clock
        self._given_api = api
        self._seen: tuple[Any, ...] | None = None  # the record as last read, and when it last changed
        self._seen_at = 0.0
        self.renewed_at = 0.0  # when the last successful attempt *started*: its read may be that old

    @property
    def holder(self) -> str:
        """The holder as last read ("" before the first read or when free)."""
        return str(self._seen[0] or "") if self._seen else ""

    async def _api(self) -> Any:
        return self._given_api or client.CoordinationV1Api(await kube.api_client())

    async def _read(self) -> dict[str, Any] | None:
        try:
            found = await (await self._api()).read_namespaced_lease(self.name, self.namespace)
            return dict(found) if isinstance(found, dict) else dict(kube.plain(found))  # a fake API's is a dict
        except ApiException as error:
            if kube.not_found(error):
                return None
            raise

    def _unchanged_for(self, spec: dict[str, Any]) -> float:
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseTransitions"))
        if record != self._seen:
            self._seen, self._seen_at = record, self.clock()
        return self.clock() - self._seen_at

    async def try_once(self) -> bool:
        """Take or renew the Lease if allowed: True when this process holds it now, False when another holder
        does. Raises LeaseConflict when a concurrent write won, and the API's errors."""
        started = self.clock()
        lease = await self._read()
        api = await self._api()
        now = datetime.now(UTC)
        try:
            if lease is None:
                await api.create_namespaced_lease(self.namespace, {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": claimed({}, self.me, now, self.timing.duration)})
            else:
                spec = lease.get("spec") or {}
                if not may_take(spec, self.me, self._unchanged_for(spec), self.timing.duration):
                    return False
                lease["spec"] = claimed(spec, self.me, now, self.timing.duration)
                await api.replace_namespaced_lease(self.name, self.namespace, lease)  # resourceVersion inside
        except ApiException as error:
            if kube.conflict(error):
                raise LeaseConflict(f"Lease {self.namespace}/{self.name} changed while being written") from error
            raise
        self.renewed_at = started
        return True

    async def acquire(self) -> None:
        """Wait until this process leads."""
        announced = False
        while True:
            try:
                async with asyncio.timeout(self.timing.renew_deadline):
                    taken = await self.try_once()
                if taken:
                    log.info("leading: holder of Lease %s/%s as %s", self.namespace, self.name, self.me)
                    return
            except LeaseConflict:
                pass  # another candidate wrote first: read again at the next try
            except Exception as error:  # noqa: BLE001 - a candidate keeps trying through API hiccups
                log.warning("could not read or take Lease %s/%s: %s", self.namespace, self.name,
                            error or type(error).__name__)
            if not announced:
                log.info("standby: Lease %s/%s is held by %s", self.namespace, self.name,
                         self.holder or "another candidate")
                announced = True
            await asyncio.sleep(self.timing.retry)

    def _unexpired(self) -> float:
        """Seconds until a candidate may take the Lease from us (the duration since our last renewal began)."""
        return self.timing.duration - (self.clock() - self.renewed_at)

    def _left(self) -> float:
        """Seconds until the renew deadline: past it, a candidate may have taken over."""
        return self.timing.renew_deadline - (self.clock() - self.renewed_at)

    async def keep(self) -> str:
        """Renew until leadership is lost; returns why. Every attempt is bounded by the time left before the
        deadline, so a hung request (a half-open connection) cannot keep a lost leader acting.

        A deadline noticed late (by a retry period or more: sleeps and attempts end by it, so only a stalled
        process notices late) gets one more attempt before the Lease is given up, if the lease duration since
        the last renewal has not run out: no candidate can have taken the Lease before that, and the process
        could not act during its stall. Exiting instead restarts the container, whose new process is as slow
        to start."""
        while True:
            await asyncio.sleep(max(0.0, min(self.timing.retry, self._left())))
            if self._left() <= 0:
                lost = f"no renewal succeeded for {self.timing.renew_deadline:.0f} s"
                if -self._left() < self.timing.retry or self._unexpired() <= 0:
                    return lost
                log.warning("this process stalled: Lease %s/%s's renew deadline passed %.1f s before it could "
                            "look; renewing once", self.namespace, self.name, -self._left())
                if why := await self._lost_after_stall():
                    return f"{lost}, the process having stalled past it: {why}"
                continue
            try:
                # asyncio.timeout, not wait_for: no task of its own that kopf's shutdown could cancel as hung
                async with asyncio.timeout(self._left()):
                    held = await self.try_once()
                if not held:
                    return f"the Lease is held by {self.holder or 'another candidate'}"
            except TimeoutError:
                log.warning("renewing Lease %s/%s timed out", self.namespace, self.name)
            except Exception as error:  # noqa: BLE001 - a failed renewal (409 included) is retried until the deadline
                log.warning("could not renew Lease %s/%s: %s", self.namespace, self.name,
                            error or type(error).__name__)

    async def _lost_after_stall(self) -> str:
        """One attempt, ending by the Lease's expiry and a retry period at most: "" when it renewed, else why not."""
        try:
            async with asyncio.timeout(min(self.timing.retry, self._unexpired())):
                held = await self.try_once()
        except Exception as error:  # noqa: BLE001 - the caller gives the Lease up
            return f"the renewal failed ({error or type(error).__name__})"
        return "" if held else f"the Lease is held by {self.holder or 'another candidate'}"

    async def release(self) -> None:
        """Leave the Lease free if this process still holds it (a clean shutdown hands over at once)."""
        try:
            async with asyncio.timeout(self.timing.renew_deadline):
                await self._release()
        except Exception as error:  # noqa: BLE001 - the Lease then expires on its own
            log.warning("could not release Lease %s/%s: %s", self.namespace, self.name,
                        error or type(error).__name__)

    async def _release(self) -> None:
        lease = await self._read()
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.me:
            return
        lease["spec"] = released(lease["spec"])
        await (await self._api()).replace_namespaced_lease(self.name, self.namespace, lease)
        log.info("released Lease %s/%s", self.namespace, self.name)
