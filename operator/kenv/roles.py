"""What one operator process does: admit pods, reconcile Environments, or both, and the process around kopf.

- `admission` (the chart's admission Deployment, N replicas): indexes Environments, ClusterEnvironments and
  EnvironmentVersions and serves the webhook. It never writes an Environment, so any number can run.
- `reconciler` (the chart's controller Deployment): builds, records status, lifts scheduling gates. Only the
  holder of a Lease acts (leader.py); the others wait as standbys and serve a health endpoint meanwhile, so a
  rolling update can count them Ready.
- `all`: both in one process (`kenv operator` on a laptop, `make run`'s single replica setups).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import StrEnum
from typing import Any, TypeVar

import aiohttp.web

log = logging.getLogger(__name__)
T = TypeVar("T")
DRAIN_SIGNAL = signal.SIGUSR1  # `kenv drain` -> webhookserver.DRAIN.begin (here: the hook must start fast)


class Role(StrEnum):
    ALL = "all"
    ADMISSION = "admission"
    RECONCILER = "reconciler"

    @property
    def admits(self) -> bool:
        return self in (Role.ALL, Role.ADMISSION)

    @property
    def reconciles(self) -> bool:
        return self in (Role.ALL, Role.RECONCILER)


@contextlib.asynccontextmanager
async def standby_health(endpoint: str | None, holder: Callable[[], str]) -> AsyncIterator[None]:
    """Answer the liveness endpoint while waiting for the Lease (kopf serves it once it runs): 200, naming the
    holder. Closed before kopf binds the same address."""
    if not endpoint:
        yield
        return
    parts = urllib.parse.urlsplit(endpoint)

    async def health(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"standby": True, "leader": holder()})
    app = aiohttp.web.Application()
    app.add_routes([aiohttp.web.get(parts.path or "/", health)])
    runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, parts.hostname or "localhost", parts.port or 80, reuse_address=True)
    await site.start()
    try:
        yield
    finally:
        await runner.cleanup()


def install_stop_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop`, which kopf is given as its stop flag. Needed from the first moment: as a
    container's pid 1 the process would otherwise ignore SIGTERM (a standby would wait out its grace period, and
    could even take the Lease while being deleted). kopf replaces them with its own once it runs, which stop it
    just the same; a signal in between still reaches it through the flag."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


async def until_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """`work`'s result, or None (work cancelled) when `stop` is set first."""
    working = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not working.done():
            working.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await working
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise asyncio.CancelledError  # we were cancelled meanwhile: not ours to swallow
    return working.result() if not working.cancelled() else None


async def run(role: Role, operator: Any, liveness: str | None) -> None:
    """Run kopf's `operator(stop_flag=…)` coroutine factory for `role`; a reconciler only while it leads."""
    from kenv import leader, metrics, stallwatch, webhookserver
    from kenv.config import get_settings

    settings = get_settings()
    stallwatch.start()  # for the life of the process
    stop = asyncio.Event()
    install_stop_handlers(stop)
    if role.admits:  # `kenv drain` (the chart's preStop hook): close kept-alive connections before stopping
        asyncio.get_running_loop().add_signal_handler(DRAIN_SIGNAL, webhookserver.DRAIN.begin)
    metrics.serve(settings.metrics_port)  # a standby's metrics too (kenv_leader says which process leads)
    if not (role.reconciles and settings.leader_election):
        metrics.LEADER.set(1 if role.reconciles else 0)
        await operator(stop_flag=stop)
        return
    election = leader.Election(settings.build_namespace, settings.lease_name,
                               timing=leader.Timing.from_duration(settings.lease_duration_seconds))
    async with standby_health(liveness, lambda: election.holder):
        leading = await until_stopped(_acquired(election), stop)
    if not leading:
        log.info("stopped while standby")
        await election.release()  # a write that landed just as the signal came
        return
    metrics.LEADER.set(1)
    kopf_task = asyncio.create_task(operator(stop_flag=stop))
    keep_task = asyncio.create_task(election.keep())
    done, _ = await asyncio.wait({kopf_task, keep_task}, return_when=asyncio.FIRST_COMPLETED)
    if keep_task in done:
        # Lost: whatever the handlers are doing may now be done by the new leader too. Exit at once, as
        # client-go's elector does; the container restarts as a candidate.
        log.error("leadership lost (%s): exiting", keep_task.result())
        os._exit(1)
    keep_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await keep_task  # its write in flight must not race the release (a 409 would leave the Lease held)
    await election.release()
    metrics.LEADER.set(0)
    kopf_task.result()  # kopf's own failure, if any, is the process's


async def _acquired(election: Any) -> bool:
    await election.acquire()
    return True
