"""`kenv logs`: the build log of an Environment — live from the build pod while it exists, then as kept.

Build Jobs and their pods go away (ttlSecondsAfterFinished); the end of each log stays: a successful build's
with the EnvironmentVersion it made (spec.buildLog), a failed build's in the Environment's status
(status.failedBuildLog) until a version is Ready again.
"""

from __future__ import annotations

import asyncio
import re
import sys
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from kenv import jobstate, kube, versioncli
from kenv.statusmodels import Phase

FOLLOW_START_SECONDS = 600  # how long `kenv logs -f` waits for a build container to start (its image pulled)
KANIKO_REUSED = re.compile(r"Using caching version of cmd: (.*?)\"?$")
KANIKO_BUILT = re.compile(r"No cached layer found for cmd (.*?)\"?$")


def kaniko_steps(log: str) -> list[tuple[str, bool]]:
    """(instruction, reused?) for each cacheable step of a Kaniko build log: the proof that a layer came from the
    cache repository ("Using caching version of cmd") or was built ("No cached layer found for cmd")."""
    steps: list[tuple[str, bool]] = []
    for line in log.splitlines():
        if match := KANIKO_REUSED.search(line):
            steps.append((match.group(1), True))
        elif match := KANIKO_BUILT.search(line):
            steps.append((match.group(1), False))
    return steps


def kept_version_log(objects: list[dict[str, Any]], number: int) -> tuple[str | None, str]:
    """(log, note) for version `number` of an environment whose EnvironmentVersion objects are `objects`.
    A version made without a build (same image, new variables; or an image already in the registry) shows the
    log of the version whose build made that image, when one is kept."""
    specs = sorted((o.get("spec") or {} for o in objects), key=lambda s: int(s.get("version", 0)))
    wanted = next((s for s in specs if s.get("version") == number), None)
    if wanted is None:
        known = ", ".join(str(s.get("version")) for s in specs) or "none"
        return None, f"there is no version {number} (known: {known})"
    if wanted.get("buildLog"):
        return str(wanted["buildLog"]), f"build log of version {number} ({wanted.get('reason')})"
    builder = next((s for s in specs if s.get("buildLog") and s.get("image") == wanted.get("image")), None)
    if builder is not None:
        return str(builder["buildLog"]), (f"version {number} ({wanted.get('reason')}) runs the image version "
                                          f"{builder.get('version')} built; its build log")
    if wanted.get("reason") == "Migrated":
        return None, f"version {number} was recorded by a release that kept no build logs"
    return None, (f"version {number} ({wanted.get('reason')}) needed no build: its image (content hash "
                  f"{str(wanted.get('hash', ''))[:12]}) was already in the registry, built earlier or elsewhere")


async def show_logs(name: str, namespace: str | None, cluster: bool, follow: bool,
                    version: int | None = None) -> int:
    try:
        if version is not None:
            return await _show_version_log(name, namespace, cluster, version)
        body = await kube.read_environment(name, namespace, cluster)
        status = body.get("status") or {}
        job = status.get("buildJob")
        pods = await kube.job_pods(job["namespace"], job["name"]) if job else []
        if not job or not pods:
            return await _show_kept_log(name, namespace, cluster, status, job)
        return await _stream(job["namespace"], pods[-1], follow)
    except ApiException as error:
        print(f"kenv: {error.status} {error.reason}: check the name and namespace", file=sys.stderr)
        return 1
    finally:
        await kube.close()


async def _show_version_log(name: str, namespace: str | None, cluster: bool, version: int) -> int:
    _, objects = await versioncli.load_objects(name, namespace, cluster)
    text, note = kept_version_log(objects, version)
    print(f"kenv: {note}", file=sys.stderr)
    if text is None:
        return 1
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


async def _show_kept_log(name: str, namespace: str | None, cluster: bool, status: dict[str, Any],
                         job: dict[str, Any] | None) -> int:
    """The build pod is gone: the failed build's kept log, else the current version's."""
    where = f"build Job {job['namespace']}/{job['name']} has no pods left" if job else f"{name} has no build Job"
    if status.get("phase") == Phase.FAILED and status.get("failedBuildLog"):
        print(f"kenv: {where}; the failed build's log as kept in status.failedBuildLog:", file=sys.stderr)
        sys.stdout.write(str(status["failedBuildLog"]))
        return 0
    if status.get("version"):
        print(f"kenv: {where}; showing version {status['version']}'s kept log", file=sys.stderr)
        return await _show_version_log(name, namespace, cluster, int(status["version"]))
    print(f"kenv: {where} (phase {status.get('phase')}) and no build log was kept", file=sys.stderr)
    return 1


def container_state(pod: dict[str, Any], container: str | None) -> str:
    """waiting, running or terminated: the state of the pod's `container` (its only one when None); waiting
    until the kubelet reports it."""
    status = pod.get("status") or {}
    for found in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        if container is None or found.get("name") == container:
            return next(iter(found.get("state") or {"waiting": {}}))
    return "waiting"


async def _started(core: Any, namespace: str, name: str, container: str | None) -> bool:
    """Wait while `container` has not started (an init container ahead of it runs, its image is pulled); False
    when the pod finished without it (the install step failed, so the push never ran)."""
    deadline = asyncio.get_running_loop().time() + FOLLOW_START_SECONDS
    while True:
        pod = kube.plain(await core.read_namespaced_pod(name, namespace))
        if container_state(pod, container) != "waiting":
            return True
        if (pod["status"].get("phase") in ("Succeeded", "Failed") or
                asyncio.get_running_loop().time() > deadline):
            return False
        await asyncio.sleep(1)


async def _stream(namespace: str, pod: dict[str, Any], follow: bool) -> int:
    name = pod["metadata"]["name"]
    core = await kube.core()
    spec = pod.get("spec") or {}
    # An incremental build's pod has an install container ahead of its push container: each log in turn.
    containers = [c["name"] for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]]
    try:
        for container in containers or [None]:
            if follow and not await _started(core, namespace, name, container):
                print(f"kenv: container {container} of {namespace}/{name} never started", file=sys.stderr)
                continue
            if follow:
                response: Any = await core.read_namespaced_pod_log(name, namespace, follow=True, container=container,
                                                                   _preload_content=False)
                async for line in response.content:
                    sys.stdout.write(line.decode(errors="replace"))
            else:
                sys.stdout.write(await core.read_namespaced_pod_log(name, namespace, container=container))
    except ApiException as error:
        state = jobstate.terminated_state(pod) or {}
        print(f"kenv: the cluster could not serve the log of {namespace}/{name} (HTTP {error.status}); its "
              "termination message:", file=sys.stderr)
        print(state.get("message", "(none)"))
    return 0
