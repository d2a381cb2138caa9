"""Build logs kept after the Job's TTL: the cut to a size, and which version's log `kenv logs --version` shows."""

from __future__ import annotations

import asyncio

from kenv import logs
from kenv.jobstate import CUT_MARK, kept_log
from kenv.logs import kept_version_log

IMAGE_A, IMAGE_B = "r/e@sha256:" + "a" * 64, "r/e@sha256:" + "b" * 64


def test_short_logs_are_kept_whole_and_long_ones_lose_their_beginning_at_a_line():
    assert kept_log("one\ntwo\n") == "one\ntwo\n"
    assert kept_log("") is None and kept_log(None) is None
    text = "".join(f"line {i} é\n" for i in range(10_000))
    kept = kept_log(text, limit=4096)
    assert kept is not None and len(kept.encode()) <= 4096
    assert kept.startswith(CUT_MARK) and kept.endswith("line 9999 é\n")
    assert kept[len(CUT_MARK):].startswith("line ")  # starts at a whole line


def version(number: int, image: str, reason: str, log: str | None = None, content: str = "h1") -> dict:
    spec = {"version": number, "image": image, "reason": reason, "hash": content}
    return {"spec": spec | ({"buildLog": log} if log else {})}


def test_a_version_shows_its_own_build_log():
    log, note = kept_version_log([version(1, IMAGE_A, "BuildSucceeded", "built A\n")], 1)
    assert log == "built A\n" and note == "build log of version 1 (BuildSucceeded)"


def test_a_version_without_a_build_shows_the_log_of_the_version_that_built_its_image():
    objects = [version(1, IMAGE_A, "BuildSucceeded", "built A\n"), version(2, IMAGE_B, "BuildSucceeded", "built B\n"),
               version(3, IMAGE_A, "DefinitionChanged")]
    log, note = kept_version_log(objects, 3)
    assert log == "built A\n" and "version 1 built" in note


def test_versions_with_no_kept_log_say_why():
    objects = [version(1, IMAGE_A, "Migrated"), version(2, IMAGE_B, "ImageFound", content="c" * 64)]
    assert kept_version_log(objects, 1) == (None, "version 1 was recorded by a release that kept no build logs")
    log, note = kept_version_log(objects, 2)
    assert log is None and "already in the registry" in note and "c" * 12 in note
    assert kept_version_log(objects, 7) == (None, "there is no version 7 (known: 1, 2)")


def pod_with(install: str, push: str, phase: str = "Pending") -> dict:
    def status(name: str, state: str) -> dict:
        return {"name": name, "state": {state: {}}}
    return {"metadata": {"name": "p"}, "status": {"phase": phase, "initContainerStatuses": [status("install", install)],
                                                  "containerStatuses": [status("build", push)]}}


def test_a_containers_state_is_read_by_name_and_unreported_means_waiting():
    pod = pod_with("terminated", "running")
    assert (logs.container_state(pod, "install"), logs.container_state(pod, "build")) == ("terminated", "running")
    assert logs.container_state({"status": {}}, "build") == "waiting"
    assert logs.container_state({"status": {"containerStatuses": [{"state": {"running": {}}}]}}, None) == "running"


class PodReads:
    """read_namespaced_pod answering the given pods in turn, the last one from then on."""

    def __init__(self, *pods: dict) -> None:
        self.pods, self.reads = list(pods), 0

    async def read_namespaced_pod(self, name: str, namespace: str) -> dict:
        self.reads += 1
        return self.pods[min(self.reads, len(self.pods)) - 1]


async def test_following_waits_for_a_container_to_start_and_gives_up_on_one_that_never_will(monkeypatch):
    monkeypatch.setattr(logs.kube, "plain", lambda obj: obj)
    real_sleep = asyncio.sleep
    monkeypatch.setattr(logs.asyncio, "sleep", lambda seconds: real_sleep(0))
    started = PodReads(pod_with("running", "waiting"), pod_with("terminated", "waiting"),
                       pod_with("terminated", "running"))
    assert await logs._started(started, "ns", "p", "build") and started.reads == 3
    failed = PodReads(pod_with("running", "waiting"), pod_with("terminated", "waiting", phase="Failed"))
    assert not await logs._started(failed, "ns", "p", "build") and failed.reads == 2
