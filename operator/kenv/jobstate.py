"""Pure reading of build Job and Pod state (plain dicts as the API returns them)."""

from __future__ import annotations

import re
from typing import Any

DIGEST_PATTERN = re.compile(r"sha256:[a-f0-9]{64}")
TAIL_CHARS = 1400  # conditions carry at most 2048 characters (status.set_condition)
# The build log kept after the Job's TTL: with each version (EnvironmentVersion spec.buildLog) and, for a failed
# build, in the Environment's status. The end of a log says what happened; 32 KiB keeps objects small.
BUILD_LOG_LINES = 2000
BUILD_LOG_LIMIT = 32 * 1024
CUT_MARK = "[kenv: earlier lines of this build log were not kept]\n"
# What builders print when a registry (push destination or base image source) could not be reached: worth a
# retry once the registry answers, unlike a failing RUN step.
REGISTRY_TRANSIENT = re.compile(
    r"connection refused|pinging container registry|i/o timeout|no such host|TLS handshake timeout|"
    r"connection reset|50[234] (Bad Gateway|Service Unavailable|Gateway Timeout)",
    re.IGNORECASE,
)


def kept_log(text: str | None, limit: int = BUILD_LOG_LIMIT) -> str | None:
    """The end of a build log in at most `limit` UTF-8 bytes, starting at a line, marked when cut."""
    if not text:
        return None
    data = text.encode()
    if len(data) <= limit:
        return text
    tail = data[-(limit - len(CUT_MARK)):]
    newline = tail.find(b"\n")
    if 0 <= newline < len(tail) - 1:
        tail = tail[newline + 1:]
    return CUT_MARK + tail.decode(errors="ignore")


def looks_transient(message: str) -> bool:
    return REGISTRY_TRANSIENT.search(message) is not None


def job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next(
        (c for c in (job.get("status") or {}).get("conditions") or []
         if c.get("type") == type_ and c.get("status") == "True"),
        None,
    )


def job_succeeded(job: dict[str, Any]) -> bool:
    return job_condition(job, "Complete") is not None


def job_failed(job: dict[str, Any]) -> bool:
    return job_condition(job, "Failed") is not None


def job_finished(job: dict[str, Any]) -> bool:
    return job_succeeded(job) or job_failed(job)


def terminated_state(pod: dict[str, Any]) -> dict[str, Any] | None:
    """How the build container ended; how an init container failed, if one did (an incremental build's install
    step: the build container never ran)."""
    for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated and terminated.get("exitCode") != 0:
            return dict(terminated)
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated:
            return dict(terminated)
    return None


def digest_from_pods(pods: list[dict[str, Any]]) -> str | None:
    """The digest the builder wrote to /dev/termination-log (Kaniko --digest-file, buildah --digestfile)."""
    for pod in pods:
        state = terminated_state(pod)
        if state and state.get("exitCode") == 0:
            match = DIGEST_PATTERN.search(state.get("message") or "")
            if match:
                return match.group(0)
    return None


def failure_message(job: dict[str, Any], pods: list[dict[str, Any]], log_tail: str | None) -> str:
    """One message saying why a build failed: the Job's reason, the pod's exit code and the last log lines."""
    parts = []
    failed = job_condition(job, "Failed")
    if failed:
        parts.append(f"build Job {job['metadata']['name']} failed ({failed.get('reason', 'Failed')}: "
                     f"{failed.get('message', '').strip()})")
    for pod in pods:
        state = terminated_state(pod)
        if state:
            parts.append(f"pod {pod['metadata']['name']} exited with code {state.get('exitCode')}"
                         f" ({state.get('reason', 'Error')})")
            tail = "\n".join((log_tail or state.get("message") or "").strip().splitlines()[-20:])
            if tail:
                # The end of a build log says what broke; keep it within the condition's message budget.
                parts.append("last log lines:\n" + (tail if len(tail) <= TAIL_CHARS else "…" + tail[-TAIL_CHARS:]))
            break
    else:
        if pods:
            parts.append(f"pod {pods[0]['metadata']['name']} did not finish")
        else:
            parts.append("no build pod was left to inspect")
    if log_tail is None and pods:
        parts.append("(the cluster could not serve the pod's log; see `kenv logs`)")
    return "; ".join(parts)
